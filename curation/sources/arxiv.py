r"""arXiv (LLaMA: 2.5 %): papers' LaTeX, kept as LaTeX and cleaned as LLaMA did after Minerva (Lewkowycz
et al. 2022): comments removed, user macros expanded inline, everything before the first section and
the bibliography removed.

An input is told apart by its bytes: arXiv's bulk source tar (`arXiv_src_YYMM_NNN.tar`: per-paper
`YYMM/ID.gz` members, each a gzipped tar of the paper's folder or one gzipped .tex; other members,
PDF-only papers, are counted), one paper's `.tar.gz`/`.gz`, or a plain paper folder. One document per
paper: its main file (the one with `\documentclass`) with its `\input`/`\include` files inlined from
the paper itself; a name leading outside the paper, a cycle or a missing file (celerite's `vc.tex`,
which would define `\githash`) is counted and left as written.
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
from curation.archives import Member
from curation.pipeline import Stage
from curation.settings import setting
from curation.sources import Source


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


class Dropped(Exception):
    """A paper that cannot be used; its message is the drop reason."""


def decode_text(data: bytes) -> str:
    """UTF-8 (a byte-order mark dropped), else Latin-1, which decodes any bytes: old files are 8-bit."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# ---- reading: papers from a bulk tar, one paper's archive, or a folder --------------------------------

# arXiv's one-file papers are gzipped .tex files named by their id: `1202.3665`, `astro-ph0001001`.
LATEX_SUFFIX = re.compile(r"\.(?:tex|ltx|\d+)|", re.I)
DOCUMENTCLASS = re.compile(r"^[ \t]*\\document(?:class|style)(?![A-Za-z@])", re.M)  # documentstyle: LaTeX 2.09
BEGIN_DOCUMENT = re.compile(r"\\begin\s*\{document\}")
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
        path = storage.local_path(file)
        if path and os.path.islink(path):  # a link may point outside the folder: never followed
            counts["dropped.not_a_file"] += 1
        elif storage.size(file) > cap:
            counts["dropped.member_too_large"] += 1
        else:
            yield Member(file[len(root):], storage.read_bytes(file))


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
    return min(candidates, key=lambda n: (not BEGIN_DOCUMENT.search(files[n]), -len(files[n]), n), default=None)


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
            target = None if in_comment(text, match.start()) else self.resolve((match[1] or match[2]).strip())
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


# ---- comments ----------------------------------------------------------------------------------------

COMMENT = re.compile(r"(?<!\\)((?:\\\\)*)%.*")  # a % after an even number of backslashes, to the line's end
COMMENT_LINE = re.compile(r"^[ \t]*%.*\n?", re.M)
VERBATIM = re.compile(r"\\begin\{(verbatim\*?|Verbatim|lstlisting|minted)\}.*?\\end\{\1\}", re.S)


def in_comment(text: str, position: int) -> bool:
    return COMMENT.search(text, text.rfind("\n", 0, position) + 1, position) is not None


def strip_comments(text: str) -> tuple[str, int]:
    """The text without its `%` comments (a comment line goes whole, a comment after code up to the
    line's end), and how many; verbatim environments stay as written: `%` is text there."""
    parts, removed, position = [], 0, 0
    for verbatim in [*VERBATIM.finditer(text), None]:
        code, lines = COMMENT_LINE.subn("", text[position:verbatim.start() if verbatim else len(text)])
        code, trailing = COMMENT.subn(r"\1", code)
        parts += [code, verbatim.group() if verbatim else ""]
        removed, position = removed + lines + trailing, verbatim.end() if verbatim else position
    return "".join(parts), removed


class CommentStage(Stage):
    name = "arxiv_comments"

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            text, removed = strip_comments(doc["raw_content"])
            self.stats["comments_removed"] += removed
            yield {**doc, "raw_content": text}


# ---- macros: \newcommand, \renewcommand, \providecommand (starred too) and \def, \edef, \gdef, \xdef ----
# with undelimited parameters (#1#2…, \long/\global/\protected before them), expanded where used.

DEFINITION = re.compile(r"\\(?:(?:re)?newcommand|providecommand)\*?|(?:\\(?:long|global|protected|outer)\s*)*"
                        r"\\[egx]?def(?![A-Za-z@])")
DEFINED_NAME = re.compile(r"\s*(?:\{\s*\\([A-Za-z@]+)\s*\}|\\([A-Za-z@]+))")
PARAMETER_COUNT = re.compile(r"\s*\[\s*([1-9])\s*\]\s*")
DEF_PARAMETERS = re.compile(r"((?:#[1-9])*)\s*(?=\{)")
SPACES = re.compile(r"\s*")
USE = re.compile(r"\\(?:([A-Za-z@]+)|.)", re.S)  # a control word, or `\\`, `\{`…: never half of a pair
PARAMETER = re.compile(r"(?<!#)#([1-9])")
CONTROL_WORD_AT_END = re.compile(r"\\[A-Za-z@]+$")
# What the later stages find by name (the first-section cut, the bibliography, the end of the document)
# is never expanded: celerite redefines \section, and its expansion would hide every section.
STRUCTURE = frozenset({"part", "chapter", "section", "subsection", "subsubsection", "paragraph", "subparagraph",
                       "appendix", "bibliography", "begin", "end", "input", "include", "documentclass"})
MAX_ARGUMENT_CHARS = 65_536  # an argument is a phrase: an unclosed brace must not make each later use rescan


@dataclass(frozen=True)
class Macro:
    parameters: int
    default: str | None  # of an optional first parameter (`\newcommand{\x}[2][default]{…}`)
    body: str


def extract_definitions(text: str) -> tuple[str, dict[str, Macro]]:
    """The text without its macro definitions, and the macros (a name's last definition wins; STRUCTURE's
    names are removed, never registered). A definition that does not parse is left as written."""
    macros, parts, position = {}, [], 0
    for match in DEFINITION.finditer(text):
        parsed = _definition(text, match) if match.start() >= position else None
        if parsed:
            name, macro, end = parsed
            parts.append(text[position:match.start()])
            position = end
            if name not in STRUCTURE:
                macros[name] = macro
    return "".join(parts) + text[position:], macros


def _definition(text: str, match: re.Match) -> tuple[str, Macro, int] | None:
    name = DEFINED_NAME.match(text, match.end())
    if name is None:
        return None
    default, position = None, name.end()
    if match.group().endswith("def"):
        parameters = DEF_PARAMETERS.match(text, position)
        if parameters is None:  # delimited parameters (`\def\x#1.{…}`): TeX's own matching, not ours
            return None
        count, position = len(parameters[1]) // 2, parameters.end()
    else:
        count_match = PARAMETER_COUNT.match(text, position)
        count, position = (int(count_match[1]), count_match.end()) if count_match else (0, position)
        if count and text.startswith("[", position):
            default, position = _group(text, position, "]") or (None, position)
    body = _group(text, SPACES.match(text, position).end())
    return (name[1] or name[2], Macro(count, default, body[0]), body[1]) if body else None


def _group(text: str, position: int, closer: str = "}") -> tuple[str, int] | None:
    r"""The content of the group opening at `position` (a `{`, or a `[` with closer `]`) and the position
    after it; None when there is none or it does not close (braces nest; `\{` and `\}` are text)."""
    if text[position:position + 1] != ("[" if closer == "]" else "{"):
        return None
    depth, i, stop = 0, position + 1, min(len(text), position + MAX_ARGUMENT_CHARS)
    while i < stop:
        char = text[i]
        if char == closer and depth == 0:
            return text[position + 1:i], i + 1
        depth += (char == "{") - (char == "}")
        i += 2 if char == "\\" else 1
    return None


def _arguments(text: str, position: int, macro: Macro) -> tuple[list[str], int] | None:
    """A use's arguments as TeX reads them (a group, a control sequence or one character each, spaces
    before each skipped) and the position after them; None when some are missing."""
    arguments = []
    if macro.default is not None:
        optional = _group(text, position, "]")
        arguments.append(optional[0] if optional else macro.default)
        position = optional[1] if optional else position
    while len(arguments) < macro.parameters:
        position = SPACES.match(text, position).end()
        if text[position:position + 1] in ("", "}"):
            return None
        if text[position] == "{":
            group = _group(text, position)
            if group is None:
                return None
            argument, position = group
        else:
            end = USE.match(text, position).end() if text[position] == "\\" else position + 1
            argument, position = text[position:end], end
        arguments.append(argument)
    return arguments, position


def expand_macros(text: str, macros: dict[str, Macro], max_rounds: int, max_chars: int) -> tuple[str, int]:
    """The text with every use of these macros replaced by its body, arguments substituted, round after
    round until none is left (a body may use other macros), and how many uses were replaced."""
    uses = 0
    for _ in range(max_rounds):
        text, expanded = _expand_once(text, macros)
        if not expanded:
            return text, uses
        uses += expanded
        if len(text) > max_chars:
            raise Dropped("paper_too_large")
    raise Dropped("macro_recursion")


def _expand_once(text: str, macros: dict[str, Macro]) -> tuple[str, int]:
    parts, position, expanded = [], 0, 0
    for match in USE.finditer(text):
        macro = macros.get(match[1]) if match.start() >= position else None
        found = _arguments(text, match.end(), macro) if macro else None
        if found:
            arguments, end = found
            body = PARAMETER.sub(lambda p, a=arguments: a[int(p[1]) - 1] if int(p[1]) <= len(a) else p[0], macro.body)
            if CONTROL_WORD_AT_END.search(body) and text[end:end + 1].isalpha():
                body += "{}"  # `\alpha` then `b` must not become `\alphab`
            parts += [text[position:match.start()], body]
            position, expanded = end, expanded + 1
    return "".join(parts) + text[position:], expanded


class MacroStage(Stage):
    name = "arxiv_macros"

    def __init__(self, settings: ArxivSettings):
        super().__init__()
        self.settings = settings

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            text, macros = extract_definitions(doc["raw_content"])
            try:
                text, uses = expand_macros(text, macros, self.settings.max_expansion_rounds, self.settings.max_chars)
            except Dropped as reason:
                self.drop(str(reason))
                continue
            self.stats["definitions_removed"] += len(macros)
            self.stats["macro_uses_expanded"] += uses
            yield {**doc, "raw_content": text}


# ---- the cut: from the first section to the end of the document, without the bibliography -----------

FIRST_SECTION = re.compile(r"\\(?:part|chapter|section)\*?\s*(?:\[[^\]]*\]\s*)?\{")
BIBLIOGRAPHY = re.compile(r"\\begin\{(thebibliography|references)\}.*?(?:\\end\{\1\}|\Z)"
                          r"|\\bibliography(?:style)?\{[^}]*\}|\\printbibliography(?:\[[^\]]*\])?", re.S)
APPENDIX = re.compile(r"\\appendix(?![A-Za-z@])")
END_DOCUMENT = re.compile(r"\\end\s*\{document\}")


def body_text(text: str, keep_appendix: bool) -> tuple[str, int] | None:
    r"""From the first `\part`, `\chapter` or `\section` of the document's body to `\end{document}`, the
    bibliography removed (`thebibliography`, AASTeX's `references`, `\bibliography{…}`, biblatex's
    `\printbibliography`), and how many bibliography parts went; None without a section."""
    begin = BEGIN_DOCUMENT.search(text)
    first = FIRST_SECTION.search(text, begin.end() if begin else 0)
    if first is None:
        return None
    end = END_DOCUMENT.search(text, first.start())
    body = text[first.start():end.start() if end else len(text)]
    if not keep_appendix:
        stops = [match.start() for match in (APPENDIX.search(body), BIBLIOGRAPHY.search(body)) if match]
        body = body[:min(stops, default=len(body))]
    body, removed = BIBLIOGRAPHY.subn("", body)
    return body.strip() + "\n", removed


class SectionStage(Stage):
    name = "arxiv_sections"

    def __init__(self, settings: ArxivSettings):
        super().__init__()
        self.keep_appendix = settings.keep_appendix

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            found = body_text(doc["raw_content"], self.keep_appendix)
            if found is None:
                self.drop("no_section")
                continue
            self.stats["bibliography_parts_removed"] += found[1]
            yield {**doc, "raw_content": found[0]}


def stages(settings: ArxivSettings) -> list[Stage]:
    return [CommentStage(), MacroStage(settings), SectionStage(settings)]


SOURCE = Source(name="arxiv", settings=ArxivSettings, read=read_papers, stages=stages,
                fields=("arxiv_id", "arxiv_main_file", "arxiv_unresolved_inputs"))
