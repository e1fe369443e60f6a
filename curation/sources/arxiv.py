r"""arXiv (LLaMA: 2.5 %): papers' LaTeX, kept as LaTeX and cleaned as LLaMA did after Minerva (Lewkowycz
et al. 2022): comments removed, user macros expanded inline, everything before the first section and
the bibliography removed.

An input is told apart by its bytes: arXiv's bulk source tar (`arXiv_src_YYMM_NNN.tar`: per-paper
`YYMM/ID.gz` members, each a gzipped tar of the paper's folder or one gzipped .tex; other members,
PDF-only papers, are counted), one paper's `.tar.gz`/`.gz`, or a plain paper folder. One document per
paper: its main file (the one with `\documentclass`) with its `\input`/`\include` files inlined from
the paper itself; a name leading outside the paper, a cycle or a missing file (celerite's `vc.tex`,
which would define `\githash`) is counted and left as written. A folder given is one paper when a .tex
file lies at its top, else a folder of inputs (`paper_inputs`). The stages here count what the LaTeX
text functions of `curation.sources.latex` do; a paper given twice is an exact duplicate (`dedup`).
"""

from __future__ import annotations

import itertools
import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from curation import archives, storage
from curation.archives import Member, decode_text
from curation.pipeline import Stage
from curation.settings import setting
from curation.sources import EXACT_DUPLICATES, Source, latex
from curation.sources.latex import Dropped


@dataclass(frozen=True)
class ArxivSettings:
    """arXiv LaTeX sources."""
    max_member_bytes: int = setting(256 * 2**20, "an archive member or a folder's file (a bulk tar's paper, a "
                                    "paper's file) over this size is counted and skipped", minimum=1)
    max_chars: int = setting(20_000_000, "a paper longer than this once its inputs are inlined or its macros "
                             "expanded is dropped (paper_too_large)", minimum=1)
    max_inputs: int = setting(1000, "\\input/\\include inlined per paper before it is dropped (too_many_inputs)",
                              minimum=0)
    max_expansion_rounds: int = setting(32, "rounds of macro expansion (its nesting depth); a paper still "
                                        "expanding after them is dropped (macro_recursion)", minimum=1)
    keep_appendix: bool = setting(True, "keep what follows the bibliography (appendices); false: RedPajama's cut, "
                                  "everything from \\appendix or the bibliography on")
    dedup: bool = setting(True, "exact dedup across inputs: a paper whose cleaned text equals an earlier one's (the "
                          "same paper in two bulk tars, or as a tar and a folder) is dropped")


# ---- reading: papers from a bulk tar, one paper's archive, or a folder --------------------------------

# arXiv's one-file papers are gzipped .tex files named by their id: `1202.3665`, `astro-ph0001001`.
LATEX_SUFFIX = re.compile(r"\.(?:tex|ltx|\d+)|", re.I)
TOP_LATEX_FILE = re.compile(r"\.(?:tex|ltx)$", re.I)  # what makes a folder a paper's, at its top
DOCUMENTCLASS = re.compile(r"^[ \t]*\\document(?:class|style)(?![A-Za-z@])", re.M)  # documentstyle: LaTeX 2.09
INPUT = re.compile(r"\\(?:input|include)(?![A-Za-z@])\s*(?:\{([^{}]*)\}|([^\s{}\\%]+))")


def read_papers(location: str, settings: ArxivSettings, counts: Counter) -> Iterator[dict]:
    """The papers of one input: a bulk tar's when its first file is a gzipped member, else one paper."""
    entries = _entries(location, settings.max_member_bytes, counts)
    first = next(entries, None)
    if first is None:
        return
    entries = itertools.chain([first], entries)
    if not (first.name.endswith(".gz") and first.data.startswith(archives.GZIP)):
        yield from _document(paper_id(location), paper_files(entries, counts), settings, counts)
        return
    for member in entries:
        if not member.name.endswith(".gz"):
            counts["dropped.not_latex_source"] += 1  # a PDF-only paper
            continue
        try:  # a damaged paper fails alone: the bulk tar around it reads on
            files = paper_files(archives.members(member.data, settings.max_member_bytes, counts, member.name), counts)
        except archives.ArchiveError:
            counts["dropped.corrupt_paper"] += 1
            continue
        yield from _document(paper_id(member.name), files, settings, counts)


def _entries(location: str, cap: int, counts: Counter) -> Iterator[Member]:
    if not storage.is_dir(location):
        yield from archives.members(location, cap, counts)
        return
    root = str(location).rstrip("/") + "/"
    for file in storage.list_files(location, recursive=True):
        if _is_link(file):  # a link may point outside the folder: never followed
            counts["dropped.not_a_file"] += 1
        elif storage.size(file) > cap:
            counts["dropped.member_too_large"] += 1
        else:
            yield Member(file[len(root):], storage.read_bytes(file))


def paper_inputs(location: str) -> list[str]:
    """The inputs a location holds: a file is one (a bulk tar, one paper's archive); a folder with a .tex
    file at its top is one paper, never its files; any other folder, the inputs of its entries in name
    order (a folder of bulk tars and paper folders). A link inside a folder is not followed."""
    if not storage.is_dir(location):
        return [location]
    files = storage.list_files(location)
    if any(TOP_LATEX_FILE.search(name) for name in files):
        return [location]
    entries = sorted([*files, *storage.list_directories(location)])
    return [found for entry in entries if not _is_link(entry) for found in paper_inputs(entry)]


def _is_link(location: str) -> bool:
    path = storage.local_path(location)
    return bool(path) and os.path.islink(path)


def paper_id(name: str) -> str:
    """`1703/1703.09710.gz`, `1703.09710.tar.gz`, `papers/celerite/` → `1703.09710`, …, `celerite`."""
    base = posixpath.basename(name.rstrip("/"))
    return next((base[:-len(s)] for s in (".tar.gz", ".tgz", ".tar", ".gz") if base.endswith(s)), base)


def _document(paper: str, files: dict[str, str], settings: ArxivSettings, counts: Counter) -> Iterator[dict]:
    """The paper's document, or none when it is dropped (counted)."""
    try:
        main = main_file(files)
        if main is None:
            raise Dropped("no_main_file")
        inliner = Inliner(files, main, settings)
        text = inliner.inline(main, (main,))
    except Dropped as reason:
        counts[f"dropped.{reason}"] += 1
        return
    counts.update(inliner.problems)
    yield {"raw_content": text, "arxiv_id": paper, "arxiv_main_file": main,
           "arxiv_unresolved_inputs": inliner.problems.total()}


def paper_files(members: Iterable[Member], counts: Counter) -> dict[str, str]:
    """A paper's LaTeX files by their path in the paper; a name leading outside it is counted, unused."""
    files = {}
    for member in members:
        name = posixpath.normpath(member.name)
        if member.name.startswith("/") or name == ".." or name.startswith("../"):
            counts["dropped.unsafe_member_name"] += 1
        elif LATEX_SUFFIX.fullmatch(posixpath.splitext(name)[1]):
            files[name] = decode_text(member.data)
    return files


def main_file(files: dict[str, str]) -> str | None:
    r"""The main file: one with an uncommented `\documentclass`, preferring one with `\begin{document}`,
    then the longest (a paper beats its cover letter), then the first name."""
    candidates = [name for name, text in files.items() if DOCUMENTCLASS.search(text)]
    return min(candidates, key=lambda n: (not latex.BEGIN_DOCUMENT.search(files[n]), -len(files[n]), n), default=None)


class Inliner:
    r"""A paper's main file with its `\input`/`\include` files inlined, from the paper's own files only,
    relative to the main file's folder (as LaTeX, run there, finds them)."""

    def __init__(self, files: dict[str, str], main: str, settings: ArxivSettings):
        self.files, self.folder, self.settings = files, posixpath.dirname(main), settings
        self.problems: Counter = Counter()  # missing_input, input_outside_paper, input_cycle
        self.inlined = self.chars = 0

    def inline(self, name: str, open_files: tuple[str, ...]) -> str:
        text, parts, position = self.files[name], [], 0
        for match in INPUT.finditer(text):
            target = None if latex.in_comment(text, match.start()) else self.resolve((match[1] or match[2]).strip())
            if target in open_files:
                self.problems["input_cycle"] += 1
            elif target is not None:
                self.inlined += 1
                if self.inlined > self.settings.max_inputs:
                    raise Dropped("too_many_inputs")
                parts += [text[position:match.start()], self.inline(target, (*open_files, target))]
                position = match.end()
        self.chars += len(text)  # a file counts each time it is inlined
        if self.chars > self.settings.max_chars:
            raise Dropped("paper_too_large")
        return "".join(parts) + text[position:]

    def resolve(self, written: str) -> str | None:
        path = posixpath.normpath(posixpath.join(self.folder, written))
        if written.startswith("/") or path == ".." or path.startswith("../"):
            self.problems["input_outside_paper"] += 1
            return None
        found = next((name for name in (path, path + ".tex") if name in self.files), None)
        self.problems["missing_input"] += found is None
        return found


class CommentStage(Stage):
    name = "arxiv_comments"

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            text, removed = latex.strip_comments(doc["raw_content"])
            self.stats["comments_removed"] += removed
            yield {**doc, "raw_content": text}


class MacroStage(Stage):
    name = "arxiv_macros"

    def __init__(self, settings: ArxivSettings):
        super().__init__()
        self.settings = settings

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            text, macros = latex.extract_definitions(doc["raw_content"])
            try:
                text, uses = latex.expand_macros(text, macros, self.settings.max_expansion_rounds,
                                                 self.settings.max_chars)
            except Dropped as reason:
                self.drop(str(reason))
                continue
            self.stats["definitions_removed"] += len(macros)
            self.stats["macro_uses_expanded"] += uses
            yield {**doc, "raw_content": text}


class SectionStage(Stage):
    name = "arxiv_sections"

    def __init__(self, settings: ArxivSettings):
        super().__init__()
        self.keep_appendix = settings.keep_appendix

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            found = latex.body_text(doc["raw_content"], self.keep_appendix)
            if found is None:
                self.drop("no_section")
                continue
            self.stats["bibliography_parts_removed"] += found[1]
            yield {**doc, "raw_content": found[0]}


def stages(settings: ArxivSettings) -> list[Stage]:
    return [CommentStage(), MacroStage(settings), SectionStage(settings)]


def run_wide_steps(settings: ArxivSettings) -> list:
    return [EXACT_DUPLICATES] if settings.dedup else []


SOURCE = Source(name="arxiv", settings=ArxivSettings, read=read_papers, stages=stages,
                fields=("arxiv_id", "arxiv_main_file", "arxiv_unresolved_inputs"), inputs=paper_inputs,
                run_wide=run_wide_steps)
