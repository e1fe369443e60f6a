"""HTML → text with resiliparse: charset from the HTTP header, else the page's meta tag, else
detection (uchardet); main-content extraction that keeps one block (paragraph, heading, list item)
a line. Documents whose `raw_content` is shorter than CCNet's floor (300 characters) are dropped
here, on the text as read, where cc_net's reader applies its `min_len`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding, map_encoding_to_html5
from resiliparse.parse.html import HTMLTree

from curation.pipeline import Stage
from curation.settings import setting


@dataclass(frozen=True)
class ExtractSettings:
    """HTML → text."""
    min_length: int = setting(300, "CCNet's floor: characters of `raw_content` as read (before dedup)", minimum=0)


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
    text. `length`/`nlines` start as `raw_content`'s characters and lines (line dedup updates them)."""

    name = "extract"
    writes = ("title", "raw_content", "length", "nlines", "original_length", "original_nlines")

    def __init__(self, settings: ExtractSettings = ExtractSettings()):
        super().__init__()
        self.min_length = settings.min_length

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            html = doc.pop("html", None)
            charset = doc.pop("http_charset", None)
            if html is not None:
                try:
                    doc["title"], doc["raw_content"] = html_to_text(html, charset)
                except Exception:  # resiliparse raises on markup it cannot parse at all
                    self.drop("unparseable_html")
                    continue
            text = doc["raw_content"]
            if html is not None or "original_nlines" not in doc:
                doc["original_length"] = len((doc.get("title") or "").encode()) + 1 + len(text.encode())
                doc["original_nlines"] = text.count("\n") + 1 if text else 0
            doc["length"], doc["nlines"] = len(text), doc["original_nlines"]
            if len(text) < self.min_length:
                self.drop("too_short")
                continue
            yield doc
