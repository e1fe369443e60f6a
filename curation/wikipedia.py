"""Wikipedia text readers for training the perplexity models.

Sources, each yielding `Article(title, text)` with plain article text (paragraphs separated by
newlines):

- a MediaWiki XML dump (`pages-articles[-multistream].xml[.bz2|.gz]`, a location of
  `curation.storage` or an http(s) URL), streamed page by page with expat (`read_pages`: id, title,
  namespace, redirect, the wiki's language), main namespace only, redirects skipped; the XML is data
  only: a DTD, where entities would be declared, is refused (UnsafeXMLError);
- raw wikitext files (one article per file);
- WikiText-2/103 token files (`*.tokens`, `*.tokens.txt`: ` = Title = ` headings, `@-@` escapes);
- SQuAD-format JSON (cmrc2018): one article per distinct `context`;
- plain text files (one article per file).

Wikitext becomes plain text by `curation.wikitext.wikitext_to_text` (templates, `<ref>`s, tables,
galleries, file/category/interlanguage links and the reference/link sections at the end removed).
"""

from __future__ import annotations

import bz2
import gzip
import json
import re
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO
from xml.parsers import expat

from curation import storage
from curation.wikitext import wikitext_to_text

DEFAULT_WIKIMEDIA_BASE_URL = "https://dumps.wikimedia.org"


@dataclass
class Article:
    title: str
    text: str


# --- readers -------------------------------------------------------------------------------------


def open_maybe_compressed(source: str | Path) -> IO[bytes]:
    """A byte stream over a location of `curation.storage` or an http(s) URL; `.bz2` (multistream
    too: its streams are read one after another) and `.gz` decompressed on the fly."""
    name = str(source)
    if name.startswith(("http://", "https://")):
        raw: IO[bytes] = urllib.request.urlopen(name, timeout=60)  # noqa: S310 (configured base URL)
    else:
        raw = storage.open_input(name)
    if name.endswith(".bz2"):
        return bz2.open(raw, "rb")
    if name.endswith(".gz"):
        return gzip.open(raw, "rb")
    return raw


class UnsafeXMLError(ValueError):
    """XML with a DTD: where entities are declared, to be expanded or fetched from elsewhere."""


@dataclass
class Page:
    page_id: int | None  # None: a wikitext file's page
    title: str
    namespace: int
    redirect: bool  # a <redirect/> element, or wikitext starting with #REDIRECT
    wikitext: str
    language: str | None  # the wiki's language: the dump's xml:lang, else its dbname (enwiki: en)


class _PageCollector:
    """expat's callbacks: gathers each finished <page> (memory: one page) for `read_pages`."""

    FIELDS = {("page", "title"), ("page", "ns"), ("page", "id"), ("revision", "text"), ("siteinfo", "dbname")}

    def __init__(self, source: str):
        self.source, self.pages, self.stack, self.fields, self.text = source, [], [], {}, None
        self.redirect, self.language = False, None
        parser = self.parser = expat.ParserCreate()
        parser.buffer_text = True
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = parser.EntityDeclHandler = self.refuse
        parser.StartElementHandler, parser.EndElementHandler = self.start, self.end
        parser.CharacterDataHandler = self.data

    def refuse(self, *_) -> None:
        raise UnsafeXMLError(f"{self.source}: an XML DTD (<!DOCTYPE …>) is refused: a MediaWiki dump has "
                             f"none, and the entities it declares are never expanded")

    def start(self, name: str, attrs: dict) -> None:
        if not self.stack:
            self.language = attrs.get("xml:lang")
        elif name == "redirect" and self.stack[-1] == "page":
            self.redirect = True
        if self.stack and (self.stack[-1], name) in self.FIELDS:
            self.text = []
        self.stack.append(name)

    def data(self, text: str) -> None:
        if self.text is not None:
            self.text.append(text)

    def end(self, name: str) -> None:
        self.stack.pop()
        if self.text is not None:
            self.fields.setdefault(name, "".join(self.text))  # the first <id> under <page> is the page's
            self.text = None
        if name == "siteinfo":
            self.language = self.language or self.fields.get("dbname", "").removesuffix("wiki").replace("_", "-")
            self.fields = {}
        elif name == "page":
            wikitext = self.fields.get("text", "")
            redirect = self.redirect or is_redirect(wikitext)
            self.pages.append(Page(int(self.fields.get("id", 0)), self.fields.get("title", ""),
                                   int(self.fields.get("ns", 0)), redirect, wikitext, self.language or None))
            self.fields, self.redirect = {}, False


def read_pages(source: str | Path) -> Iterator[Page]:
    """Every page of a MediaWiki XML export, streamed (memory stays flat on a full dump). The XML is
    read as data: a DTD is refused (UnsafeXMLError) before any of its declarations is read, so no
    entity is expanded and nothing outside the file is fetched; malformed XML raises expat's error."""
    collector = _PageCollector(str(source))
    with open_maybe_compressed(source) as stream:
        while chunk := stream.read(1 << 20):
            collector.parser.Parse(chunk, False)
            yield from collector.pages
            collector.pages = []
        collector.parser.Parse(b"", True)
    yield from collector.pages


def read_xml_dump(source: str | Path, limit: int | None = None, namespaces: tuple[int, ...] = (0,),
                  plain: bool = True) -> Iterator[Article]:
    """The articles of a MediaWiki XML export: redirects and pages outside `namespaces` skipped.
    `plain=False` yields the raw wikitext."""
    count = 0
    for page in read_pages(source):
        if page.namespace in namespaces and not page.redirect and page.wikitext:
            body = wikitext_to_text(page.wikitext) if plain else page.wikitext
            if body:
                yield Article(page.title, body)
                count += 1
                if limit is not None and count >= limit:
                    return


def is_xml_dump(name: str) -> bool:
    """A dump by its name (`.xml`, `.xml.bz2`, `.xml.gz`); any other file is read as one article's wikitext."""
    return bool(re.search(r"\.xml(\.bz2|\.gz)?$", name))


def is_redirect(wikitext: str) -> bool:
    return wikitext.lstrip().lower().startswith("#redirect")


def read_wikitext_page(location: str | Path) -> Page:
    """A raw-wikitext file (one article) as a page: its title from the file's name (`Raith-Rovers.txt`:
    `Raith Rovers`), namespace 0, no id and no language (a file does not say its wiki)."""
    with open_maybe_compressed(location) as stream:
        wikitext = stream.read().decode("utf-8", errors="replace")
    title = PurePosixPath(str(location)).stem.replace("-", " ").replace("_", " ")
    return Page(None, title, 0, is_redirect(wikitext), wikitext, None)


def read_wikitext_file(path: str | Path, plain: bool = True) -> Iterator[Article]:
    """One raw-wikitext article per file (title from the file name); redirects skipped.
    `plain=False` yields the raw wikitext."""
    page = read_wikitext_page(path)
    if page.redirect:
        return
    text = wikitext_to_text(page.wikitext) if plain else page.wikitext
    if text:
        yield Article(page.title, text)


def read_wikitext(sources: Iterable[str | Path]) -> Iterator[Article]:
    """The raw wikitext of every article of XML dumps and wikitext files (the cited-URL reader)."""
    for source in sources:
        if is_xml_dump(str(source)):
            yield from read_xml_dump(source, plain=False)
        else:
            yield from read_wikitext_file(source, plain=False)


_WT_ESCAPE = re.compile(r" @(\S)@ ")           # " @-@ " → "-", " @,@ " → ","
_WT_SPACE_BEFORE = re.compile(r" ([,.;:!?%)\]]|'s\b|n't\b)")
_WT_SPACE_AFTER = re.compile(r"([(\[]) ")


def read_wikitext_tokens(path: str | Path) -> Iterator[Article]:
    """WikiText-2/103 token files: articles start at a level-1 ` = Title = ` line; the tokenization
    escapes are undone (`@-@` → `-`, `<unk>` removed, spaces before punctuation removed)."""
    title, lines = None, []
    for raw in Path(path).read_text(encoding="utf-8").split("\n"):
        line = raw.strip()
        if not line:
            continue
        tokens = line.split(" ")
        level = 0
        while level < len(tokens) // 2 and tokens[level] == "=" and tokens[-1 - level] == "=":
            level += 1
        if level:
            heading = " ".join(tokens[level:len(tokens) - level])
            if level == 1:
                if title is not None and lines:
                    yield Article(title, "\n".join(lines))
                title, lines = heading, []
                continue
            line = heading  # a section heading: keep its words as a line, like wikitext_to_text
        line = _WT_ESCAPE.sub(r"\1", line).replace("<unk>", "")
        line = _WT_SPACE_AFTER.sub(r"\1", _WT_SPACE_BEFORE.sub(r"\1", re.sub(r" +", " ", line))).strip()
        if line:
            lines.append(line)
    if title is not None and lines:
        yield Article(title, "\n".join(lines))


def read_squad_json(path: str | Path) -> Iterator[Article]:
    """SQuAD-format JSON (cmrc2018): each distinct paragraph `context` as one article."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    seen = set()
    for entry in data.get("data", []):
        for paragraph in entry.get("paragraphs", []):
            context = paragraph.get("context", "").strip()
            if context and context not in seen:
                seen.add(context)
                yield Article(entry.get("title") or paragraph.get("id", ""), context)


def read_plain_text(path: str | Path) -> Iterator[Article]:
    text = Path(path).read_text(encoding="utf-8", errors="replace").strip()
    if text:
        yield Article(Path(path).stem, text)


def looks_like_wikitext(text: str) -> bool:
    return bool(re.search(r"\[\[|\{\{|'''|^==.*==\s*$", text[:20000], re.MULTILINE))


def read_articles(source: str | Path, limit: int | None = None) -> Iterator[Article]:
    """Articles from any supported source, chosen by name (and content for `.txt`); a directory is
    read file by file in sorted order."""
    name = str(source)
    path = Path(name)
    if not name.startswith(("http://", "https://")) and path.is_dir():
        articles: Iterable[Article] = (a for p in sorted(path.rglob("*")) if p.is_file()
                                       for a in read_articles(p))
    elif is_xml_dump(name):
        articles = read_xml_dump(name)
    elif re.search(r"\.tokens(\.txt)?$", name):
        articles = read_wikitext_tokens(path)
    elif name.endswith(".json"):
        articles = read_squad_json(path)
    elif name.endswith((".wiki", ".wikitext", ".mediawiki")):
        articles = read_wikitext_file(path)
    else:
        head = path.read_text(encoding="utf-8", errors="replace")[:20000]
        articles = read_wikitext_file(path) if looks_like_wikitext(head) else read_plain_text(path)
    for count, article in enumerate(articles, 1):
        yield article
        if limit is not None and count >= limit:
            return


def dump_url(lang: str, base_url: str = DEFAULT_WIKIMEDIA_BASE_URL) -> str:
    """The language's latest pages-articles dump under a Wikimedia dumps mirror."""
    return f"{base_url.rstrip('/')}/{lang}wiki/latest/{lang}wiki-latest-pages-articles.xml.bz2"
