"""LLaMA's GitHub (LLaMA paper, section 2.1): projects under the Apache, BSD and MIT licences; files
dropped by line length and share of alphanumeric characters; licence headers removed by regular
expressions; exact file-level dedup. RedPajama v1 (data_prep/github) gives the thresholds the paper
leaves open: longest line 1,000, mean line 100 characters, alphanumeric share 0.25, its extensions.

An input is a repository archive as GitHub serves it (`.tar.gz` or `.zip`, one top folder
`NAME-REF/`: the `repository`), or an export of files (Parquet or JSON lines: BigQuery's
`github_repos`, The Stack) with `repo`, `path`, `content` and maybe `license`, read as data by
`curation.repositories` (never extracted). A repository's licence is the export's field or else
detected from its licence file (LICENSE, COPYING, …, at its top: an archive's first reading) by
askalono, which scores the text against the SPDX licence list (offline, the list is in the package;
the detector of cargo-deny and ClearlyDefined): no such file → `no_license`, a file no licence
matches → NOASSERTION. The stages keep allowed licences, allowed paths, cut licence headers, drop
low-quality files and key each file by its text's hash, on which the engine's run-wide step
`exact_dedup` keeps one file of each text across the inputs (`dedup`). A file's language by its
extension is `programming_language` (`language` is lid.176's label of a text's natural language).
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import askalono
import pyarrow as pa

from curation.pipeline import Stage
from curation.repositories import LICENSE_FILE_RE, decoded, licence_texts, repository_files
from curation.settings import setting
from curation.sources import RunWideStep, Source, content_hash

# RedPajama v1's extension whitelist (data_prep/github), with each one's language (GitHub Linguist's names).
EXTENSION_LANGUAGES = {
    ".asm": "Assembly", ".bat": "Batchfile", ".cmd": "Batchfile", ".c": "C", ".h": "C", ".cs": "C#",
    ".cpp": "C++", ".hpp": "C++", ".c++": "C++", ".h++": "C++", ".cc": "C++", ".hh": "C++", ".C": "C++",
    ".H": "C++", ".cmake": "CMake", ".css": "CSS", ".dockerfile": "Dockerfile", "Dockerfile": "Dockerfile",
    ".f90": "Fortran", ".f": "Fortran", ".f03": "Fortran", ".f08": "Fortran", ".f77": "Fortran",
    ".f95": "Fortran", ".for": "Fortran", ".fpp": "Fortran", ".go": "Go", ".hs": "Haskell", ".html": "HTML",
    ".java": "Java", ".js": "JavaScript", ".jl": "Julia", ".lua": "Lua", ".md": "Markdown",
    ".markdown": "Markdown", ".php": "PHP", ".php3": "PHP", ".php4": "PHP", ".php5": "PHP", ".phps": "PHP",
    ".phpt": "PHP", ".pl": "Perl", ".pm": "Perl", ".pod": "Perl", ".perl": "Perl", ".ps1": "PowerShell",
    ".psd1": "PowerShell", ".psm1": "PowerShell", ".py": "Python", ".rb": "Ruby", ".rs": "Rust", ".sql": "SQL",
    ".scala": "Scala", ".sh": "Shell", ".bash": "Shell", ".command": "Shell", ".zsh": "Shell",
    ".ts": "TypeScript", ".tsx": "TypeScript", ".tex": "TeX", ".vb": "Visual Basic", "Makefile": "Makefile",
    ".xml": "XML", ".rst": "reStructuredText", ".m": "Objective-C", ".smali": "Smali",
}  # fmt: skip
PROSE_LANGUAGES = {"Markdown", "reStructuredText"}  # their `#` lines are headings, not comments
NOASSERTION = "NOASSERTION"  # SPDX's word for "a licence file, but no licence recognised in it"
# Copies of other projects (GitHub Linguist's vendor.yml, its common entries) and minified bundles.
VENDORED_RE = re.compile(r"(^|/)(vendors?|third[-_]?party|3rd[-_]?party|node_modules|bower_components)/"
                         r"|\.min\.(js|css)$", re.IGNORECASE)


@dataclass(frozen=True)
class GitHubSettings:
    """Which repositories and files are kept, and the quality thresholds (RedPajama v1's)."""
    licenses: list[str] = setting(["MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause"], "SPDX ids of the "
                                  "licences kept (LLaMA: MIT, Apache, BSD)")
    license_min_score: float = setting(0.8, "askalono's score a licence file needs to count as that licence "
                                       "(its command line's confidence threshold)", minimum=0, maximum=1)
    extensions: list[str] = setting(list(EXTENSION_LANGUAGES), "file extensions (or whole names: Makefile) kept, "
                                    "case-sensitive as RedPajama's (.C is C++)")
    drop_vendored: bool = setting(True, "drop files under vendor/, third_party/, node_modules/ … and *.min.js/css "
                                  "(copies of other projects)")
    max_file_bytes: int = setting(1 << 20, "a larger file is counted and skipped unread (BigQuery's contents "
                                  "stop at 1 MiB)", minimum=1)
    max_line_length: int = setting(1000, "drop a file with a longer line", minimum=1)
    max_mean_line_length: float = setting(100.0, "drop a file whose characters per line exceed this", minimum=1)
    min_alphanumeric_share: float = setting(0.25, "drop a file with a smaller share of alphanumeric characters",
                                            minimum=0, maximum=1)
    remove_license_headers: bool = setting(True, "cut a licence or copyright comment at the top of a file")
    dedup: bool = setting(True, "keep one file of each text across the inputs (exact_dedup: the first in the order "
                          "of the inputs given)")


# --- reading --------------------------------------------------------------------------------------


def language_of(path: str) -> str | None:
    name = posixpath.basename(path)
    return EXTENSION_LANGUAGES.get(name) or EXTENSION_LANGUAGES.get(posixpath.splitext(name)[1])


def detect_license(text: str, settings: GitHubSettings) -> str:
    """The SPDX id askalono finds in a licence file's text, or NOASSERTION under the minimum score."""
    found = askalono.identify(text)
    return found.name if found.score >= settings.license_min_score else NOASSERTION


def repository_licenses(location: str, settings: GitHubSettings) -> dict[str, str]:
    """{repository: licence} from the licence files at each repository's top (the first reading of an
    input). With several (LICENSE-MIT, LICENSE-APACHE: a choice), an allowed one wins."""
    found: dict[str, list[str]] = {}
    for repository, text in licence_texts(location, settings.max_file_bytes):
        found.setdefault(repository, []).append(detect_license(text, settings))
    allowed = {name.lower() for name in settings.licenses}
    return {repository: next((name for name in names if name.lower() in allowed), names[0])
            for repository, names in found.items()}


def export_license(value: str | list | None, settings: GitHubSettings) -> str | None:
    """An export's licence field as an SPDX id (BigQuery writes `mit`, The Stack a list)."""
    names = [value] if isinstance(value, str) else list(value or [])
    spelled = {name.lower(): name for name in settings.licenses}
    names = [spelled.get(str(name).lower(), str(name)) for name in names]
    return next((name for name in names if name in settings.licenses), names[0] if names else None)


def read_files(location: str, settings: GitHubSettings, counts: Counter) -> Iterator[dict]:
    """The text files of one input as documents (the source's `read`)."""
    licenses = repository_licenses(location, settings)
    for file in repository_files(location, settings.max_file_bytes, counts):
        text = decoded(file.data)
        if text is None:
            counts["dropped.binary"] += 1
            continue
        yield {"raw_content": text, "repository": file.repository, "path": file.path,
               "programming_language": language_of(file.path),
               "license": export_license(file.license, settings) or licenses.get(file.repository)}


# --- stages ---------------------------------------------------------------------------------------

class LicenseFilter(Stage):
    """Keeps the files of repositories under an allowed licence."""

    name = "license"

    def __init__(self, settings: GitHubSettings):
        super().__init__()
        self.allowed = set(settings.licenses)

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            license = doc["license"]
            if license in self.allowed:
                yield doc
            else:
                self.drop("no_license" if license is None else
                          "license_unknown" if license == NOASSERTION else "license_not_allowed")


class PathFilter(Stage):
    """Keeps files of the allowed extensions, less licence files and vendored copies."""

    name = "paths"

    def __init__(self, settings: GitHubSettings):
        super().__init__()
        self.extensions, self.drop_vendored = set(settings.extensions), settings.drop_vendored

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            path = doc["path"]
            name = posixpath.basename(path)
            if "/" not in path and LICENSE_FILE_RE.fullmatch(path):
                self.drop("license_file")
            elif name not in self.extensions and posixpath.splitext(name)[1] not in self.extensions:
                self.drop("extension_not_allowed")
            elif self.drop_vendored and VENDORED_RE.search(path):
                self.drop("vendored")
            else:
                yield doc


# A comment block at a file's top: C-style, contiguous line comments (//, #, --, ;, % but not
# #include or #!), a docstring, an HTML/XML comment.
LEADING_COMMENT_RE = re.compile(r"""\s*(?:/\*.*?\*/|(?:[ \t]*(?://|\#(?![!\w])|--|;|%)[^\n]*(?:\n|$))+
                                    |(?P<quote>\"\"\"|''').*?(?P=quote)|<!--.*?-->)""", re.DOTALL | re.VERBOSE)
# What stays above it: a shebang, an encoding line, `<?php`, an XML declaration.
PREAMBLE_RE = re.compile(r"(?:\#![^\n]*\n|[ \t]*\#[^\n]*coding[:=][^\n]*\n|<\?(?:php|xml)\b[^\n]*\n)*")
LICENSE_WORDS_RE = re.compile(r"copyright|spdx-license-identifier|licensed under|permission is hereby granted|"
                              r"all rights reserved|general public license|redistribution and use|apache license",
                              re.IGNORECASE)


def without_license_header(text: str) -> str:
    """`text` less the comment blocks at its top that speak of copyright or a licence."""
    preamble = PREAMBLE_RE.match(text).group()
    body = rest = text[len(preamble):]
    while (comment := LEADING_COMMENT_RE.match(rest)) and LICENSE_WORDS_RE.search(comment.group()):
        rest = rest[comment.end():]
    return text if rest is body else preamble + rest.lstrip("\n")


class LicenseHeaderRemover(Stage):
    """Cuts licence headers (not from Markdown or reStructuredText, whose `#` lines are headings)."""

    name = "license_header"
    writes = ("raw_content",)

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            if doc["programming_language"] not in PROSE_LANGUAGES:
                text = without_license_header(doc["raw_content"])
                if text != doc["raw_content"]:
                    doc["raw_content"] = text
                    self.stats["headers_removed"] += 1
            yield doc


def quality_failure(text: str, settings: GitHubSettings) -> str | None:
    """The first of RedPajama's file rules that `text` fails, or None."""
    if not text.strip():
        return "empty"
    lengths = [len(line) for line in text.splitlines()]
    if max(lengths) > settings.max_line_length:
        return "line_too_long"
    if len(text) / len(lengths) > settings.max_mean_line_length:
        return "mean_line_too_long"
    if sum(map(str.isalnum, text)) / len(text) < settings.min_alphanumeric_share:
        return "low_alphanumeric_share"
    return None


class QualityFilter(Stage):
    """Drops files by line length and alphanumeric share (minified, generated and data files)."""

    name = "quality"

    def __init__(self, settings: GitHubSettings):
        super().__init__()
        self.settings = settings

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            if failure := quality_failure(doc["raw_content"], self.settings):
                self.drop(failure)
            else:
                yield doc


class ContentHash(Stage):
    """Keys each file by the hash of its final text (`curation.sources.content_hash`, in hex): the
    engine's exact dedup (`exact_dedup`) keeps one file per key, run-wide."""

    name = "content_hash"
    writes = ("content_hash",)

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            doc["content_hash"] = content_hash(doc).hex()
            yield doc


def stages(settings: GitHubSettings) -> list[Stage]:
    header = [LicenseHeaderRemover()] if settings.remove_license_headers else []
    return [LicenseFilter(settings), PathFilter(settings), *header, QualityFilter(settings), ContentHash()]


def run_wide_steps(settings: GitHubSettings) -> list[RunWideStep]:
    """LLaMA's exact file-level dedup, across every input of the run, on the files' `content_hash`."""
    if not settings.dedup:
        return []
    return [RunWideStep("exact_dedup", "exact_duplicates", key=lambda doc: doc["content_hash"], key_type=pa.string())]


SOURCE = Source(name="github", settings=GitHubSettings, read=read_files, stages=stages,
                fields=("repository", "path", "programming_language", "license", "content_hash"),
                run_wide=run_wide_steps)
