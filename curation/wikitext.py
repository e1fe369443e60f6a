"""Wikitext to plain text (mwparserfromhell), for every Wikipedia reader: `make lm`'s
(`curation.wikipedia`) and the Wikipedia source's text stage (`curation.sources.wikipedia`).

Templates, comments, `<ref>`s, tables, galleries, file/category/interlanguage links, bare URLs and the
reference/link sections at the end are removed; a link keeps its visible text, a heading its own line.
Markup the parser could not see as such (a table not at a line's start, an unbalanced template in a
damaged page) is removed by pattern afterwards.
"""

from __future__ import annotations

import html
import re

import mwparserfromhell
from mwparserfromhell.nodes import Argument, Comment, ExternalLink, Heading, HTMLEntity, Tag, Template, Text, Wikilink

# Namespaces whose links are media or metadata, not running text (en, de, fr, es, zh, and a few more).
NON_TEXT_LINK_NAMESPACES = {
    "file", "image", "media", "category", "datei", "bild", "kategorie", "fichier", "catégorie",
    "archivo", "imagen", "categoría", "immagine", "categoria", "bestand", "categorie", "plik",
    "kategoria", "файл", "категория", "文件", "檔案", "档案", "图像", "分类", "分類", "ファイル",
    "カテゴリ", "画像",
}  # fmt: skip
INTERLANGUAGE_RE = re.compile(r"^:?[a-z]{2,3}(-[a-z]{2,8})?$")

# Trailing sections that hold references and link lists, not prose.
DROPPED_SECTIONS = {
    "references", "notes", "footnotes", "external links", "see also", "further reading",
    "bibliography", "sources", "citations", "notes and references", "references and notes",
    "einzelnachweise", "weblinks", "literatur", "siehe auch", "anmerkungen", "quellen",
    "références", "liens externes", "voir aussi", "notes et références", "referencias",
    "enlaces externos", "véase también", "参考文献", "外部链接", "外部連結", "参见", "參見", "注释",
}  # fmt: skip
DROPPED_TAGS = {"ref", "references", "table", "gallery", "math", "timeline", "imagemap", "score",
                "syntaxhighlight", "source", "pre", "code", "graph", "mapframe", "templatedata"}


_REF_RE = re.compile(r"<ref\b[^>/]*/>|<ref\b[^>]*>.*?</ref\s*>", re.DOTALL | re.IGNORECASE)
_URL_RE = re.compile(r"\b(?:https?|ftp)://\S+")
# What survives of markup the parser could not see as such (a table not at a line's start, an
# unbalanced template or tag in a damaged page): table brackets, stray template braces and tags.
_INNERMOST_TABLE_RE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.DOTALL)
_LEFTOVER_RE = re.compile(r"\{\{|\}\}|\[\[|\]\]|\{\||\|\}|\|-|\|\||<!--|-->|</?[A-Za-z][\w:-]*(?:\s[^<>]*)?/?>")


def _is_non_text_link(link: Wikilink) -> bool:
    title = str(link.title).strip()
    if ":" not in title:
        return False
    prefix = title.split(":", 1)[0].strip().lower().lstrip(":")
    return prefix in NON_TEXT_LINK_NAMESPACES or bool(INTERLANGUAGE_RE.match(prefix))


def _plain(nodes, out: list[str]) -> None:
    """Appends the visible text of `nodes` to `out` (one pass, linear in the size of the page)."""
    for node in nodes:
        if isinstance(node, Text):
            out.append(node.value)
        elif isinstance(node, (Template, Comment, Argument)):
            continue
        elif isinstance(node, Wikilink):
            if not _is_non_text_link(node):
                _plain((node.text or node.title).nodes, out)
        elif isinstance(node, ExternalLink):
            if node.title:  # a bare URL is no prose
                _plain(node.title.nodes, out)
        elif isinstance(node, Heading):
            out.append("\n")
            _plain(node.title.nodes, out)
            out.append("\n")
        elif isinstance(node, Tag):
            tag = str(node.tag).strip().lower()
            if tag in DROPPED_TAGS:
                continue
            if tag == "br":
                out.append("\n")
            elif node.contents is not None and not node.self_closing:
                _plain(node.contents.nodes, out)
        elif isinstance(node, HTMLEntity):
            out.append(node.normalize())
        else:
            stripped = node.__strip__(normalize=True, collapse=True, keep_template_params=False)
            if stripped:
                out.append(str(stripped))


def _without_tables(text: str) -> str:
    """`text` less every balanced `{| … |}`, innermost first: tables the parser did not see as such."""
    while (fewer := _INNERMOST_TABLE_RE.sub("", text)) != text:
        text = fewer
    return text  # an unclosed table's brackets go with the leftovers


def wikitext_to_text(wikitext: str) -> str:
    """Plain article text from wikitext: one paragraph per line, headings kept as their own line,
    templates, refs, tables, media/category links and reference sections removed."""
    if "&lt;ref" in wikitext or "&lt;/" in wikitext:  # XML-escaped wikitext, copied out of a dump
        wikitext = html.unescape(wikitext)
    # <ref>s first, by pattern: an unbalanced construct elsewhere can make the parser keep them as text.
    wikitext = _REF_RE.sub("", wikitext)
    code = mwparserfromhell.parse(wikitext, skip_style_tags=True)
    # Drop reference/link sections at the top level: from their heading to the next heading of the
    # same or a higher level.
    kept, skip_level = [], None
    for node in code.nodes:
        if isinstance(node, Heading):
            if skip_level is not None and node.level <= skip_level:
                skip_level = None
            if skip_level is None and node.title.strip_code().strip().lower() in DROPPED_SECTIONS:
                skip_level = node.level
        if skip_level is None:
            kept.append(node)
    out: list[str] = []
    _plain(kept, out)
    text = _without_tables("".join(out).replace("\'\'\'", "").replace("\'\'", ""))
    lines = []
    for line in text.split("\n"):
        line = re.sub(r"[ \t\u00a0]+", " ", _LEFTOVER_RE.sub("", _URL_RE.sub("", line))).strip()
        # Leftovers of removed markup: empty brackets, list markers, table pipes.
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line).strip()
        line = line.lstrip("*#:;|!").strip()
        if line and re.search(r"\w", line):
            lines.append(line)
    return "\n".join(lines)
