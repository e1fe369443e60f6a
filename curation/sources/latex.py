r"""LaTeX text functions for arXiv's cleaning (LLaMA after Minerva, Lewkowycz et al. 2022), on one paper's
text, no I/O: `%` comments removed (`strip_comments`), user macros expanded where used and their
definitions removed (`extract_definitions`, `expand_macros`), and the text cut from the first section to
the end of the document without the bibliography (`body_text`). The stages that count them are in
`curation.sources.arxiv`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class Dropped(Exception):
    """A paper that cannot be used; its message is the drop reason."""


BEGIN_DOCUMENT = re.compile(r"\\begin\s*\{document\}")


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

