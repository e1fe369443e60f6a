"""HTML → text with resiliparse: charset from the HTTP header, else the page's meta tag, else
detection (uchardet); main-content extraction that keeps one block (paragraph, heading, list item)
a line. Documents whose `raw_content` is shorter than CCNet's floor (300 characters) are dropped
here, on the text as read, where cc_net's reader applies its `min_len`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding, map_encoding_to_html5
from resiliparse.parse.html import HTMLTree

from curation.pipeline import Stage
from curation.settings import setting

# Block containers whose start tag makes the HTML parser search the stack of open elements (the
# spec's "close a p element in button scope"); resiliparse's main-content pass walks their
# ancestors too. Nested without end, they cost time quadratic in their depth or worse.
CONTAINER_TAG = re.compile(rb"<(/?)(?:div|article|section|aside|nav|header|footer|main|blockquote|center|"
                           rb"details|dialog|dir|dl|fieldset|figcaption|figure|hgroup|menu|ol|ul|"
                           rb"search|summary|address)[\s/>]")
# Σ over container start tags of their depth: about 5e-8 s of parsing and extraction each, so the
# default bounds a page's extraction near half a second (extract.max_nesting).


# Characters that text does not hold: C0/C1 controls (other than tab, newline, carriage return),
# U+FFFD (what undecodable bytes become) and private-use code points. Real pages have under 0.4 %
# (the 882 of ../shared/data); random bytes decoded as Latin-1 have 12 %, as UTF-8 55 %.
GARBAGE_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd\ue000-\uf8ff]")


@dataclass(frozen=True)
class ExtractSettings:
    """HTML → text."""
    min_length: int = setting(300, "CCNet's floor: characters of `raw_content` as read (before dedup)", minimum=0)
    max_nesting: int = setting(2_000_000, "Σ depth of nested block containers above which a page is dropped "
                               "(html_too_nested: parsing would take seconds to minutes)", minimum=0)
    max_garbage_share: float = setting(0.05, "drop as not_text above this share of control, U+FFFD or "
                                       "private-use characters", minimum=0, maximum=1)


def garbage_share(text: str) -> float:
    """Share of the text's characters that are controls, replacement or private-use characters."""
    return len(GARBAGE_CHAR.findall(text)) / len(text) if text else 0.0


def nesting_work(html: bytes) -> int:
    """Σ of the depth of every block container start tag, counted on the raw bytes (one regex pass,
    before any parsing): the work the parser and main-content extraction will do on the nesting."""
    depth = work = 0
    for match in CONTAINER_TAG.finditer(html.lower()):  # lower() then a case-sensitive scan: 2× faster
        if match[1]:
            depth = max(0, depth - 1)
        else:
            depth += 1
            work += depth
    return work


def decode_html(html: bytes, declared_charset: str | None = None) -> str:
    """Declared charset (mapped the way browsers map labels: gb2312 → gbk), else meta tag or
    detection; undecodable bytes fall back to UTF-8/cp1252 and never raise."""
    encoding = map_encoding_to_html5(declared_charset) if declared_charset else None
    if not encoding:
        encoding = detect_encoding(html, from_html_meta=True)
    return bytes_to_str(html, encoding, errors="replace")


def clean_lines(text: str) -> str:
    """One stripped, non-empty line per block."""
    return "\n".join(line for line in (part.strip() for part in text.split("\n")) if line)


def html_to_text(html: bytes, declared_charset: str | None = None) -> tuple[str, str]:
    """(title, main text) of an HTML page."""
    tree = HTMLTree.parse(decode_html(html, declared_charset))
    text = extract_plain_text(tree, preserve_formatting=True, main_content=True,
                              list_bullets=False, alt_texts=False)
    return (tree.title or "").strip(), clean_lines(text)


class ExtractStage(Stage):
    """Pages from `ArchiveReader` → documents with `title`, `raw_content` and CCNet's length fields.
    WET documents arrive already read as cc_net reads them (`curation.warc.wet_text`: title line
    apart, lines stripped) with cc_net's `original_length` (the record's Content-Length) and
    `original_nlines`. An HTML page gets the same meanings: `original_length` is the UTF-8 size of
    its title line and text (what its WET record would hold), `original_nlines` the lines of its
    text. `length`/`nlines` start as `raw_content`'s characters and lines (line dedup updates them).

    Dropped, by reason: `html_too_nested` (block containers nested so deep that parsing would take
    seconds to minutes: `nesting_work` over `max_nesting`, checked before parsing),
    `unparseable_html`, `not_text` (more than `max_garbage_share` of the characters are controls,
    U+FFFD or private use: binary or random bytes served as text), `too_short`."""

    name = "extract"
    writes = ("title", "raw_content", "length", "nlines", "original_length", "original_nlines")
    # Drop reasons that mean the input itself is bad (listed per segment in the run's manifest).
    bad_input_reasons = ("html_too_nested", "unparseable_html", "not_text")

    def __init__(self, settings: ExtractSettings = ExtractSettings()):
        super().__init__()
        self.min_length = settings.min_length
        self.max_nesting = settings.max_nesting
        self.max_garbage_share = settings.max_garbage_share

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            html = doc.pop("html", None)
            charset = doc.pop("http_charset", None)
            if html is not None:
                if nesting_work(html) > self.max_nesting:
                    self.drop("html_too_nested")
                    continue
                try:
                    doc["title"], doc["raw_content"] = html_to_text(html, charset)
                except Exception:  # resiliparse raises on markup it cannot parse at all
                    self.drop("unparseable_html")
                    continue
            text = doc["raw_content"]
            if garbage_share(text) > self.max_garbage_share:
                self.drop("not_text")
                continue
            if html is not None or "original_nlines" not in doc:
                doc["original_length"] = len((doc.get("title") or "").encode()) + 1 + len(text.encode())
                doc["original_nlines"] = text.count("\n") + 1 if text else 0
            doc["length"], doc["nlines"] = len(text), doc["original_nlines"]
            if len(text) < self.min_length:
                self.drop("too_short")
                continue
            yield doc
