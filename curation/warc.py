"""Stream records out of WARC and WET files with warcio.

WARC `response` records with status 200 and an HTML content type become raw pages (HTML bytes
still to be extracted); WET `conversion` records become documents with text already extracted.
Everything else is skipped and counted by reason. Headers are read by name, never by position.
A corrupt record is counted and skipped: in a local gzip file the reader resynchronises at the
next gzip member, so the rest of the file is still read; in a stream it stops there.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections import Counter
from typing import BinaryIO, Iterator
from urllib.parse import urlsplit

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from curation.commoncrawl import open_http

log = logging.getLogger(__name__)

GZIP_MEMBER_MAGIC = b"\x1f\x8b\x08"
SKIPPED_TYPES = {"request", "metadata", "warcinfo", "revisit", "resource", "continuation"}
# Errors of the data itself. I/O and network errors are not among them: they fail the whole
# input, so that a resumed run reads it again instead of keeping a silently shortened copy.
RECORD_ERRORS = (ArchiveLoadFailed, zlib.error, EOFError, ValueError)


def cc_segment(source: str) -> str:
    """CCNet's `cc_segment`: the path from `crawl-data/` on, else the file name."""
    path = urlsplit(source).path if "://" in source else source
    marker = path.find("crawl-data/")
    return path[marker:] if marker >= 0 else os.path.basename(path)


def source_domain(url: str) -> str:
    return urlsplit(url).netloc.lower()


def open_source(source: str) -> BinaryIO:
    """A binary stream of a local path, an http(s) URL (retried with backoff) or any fsspec URL
    such as s3://, never read whole into memory."""
    if "://" not in source or source.startswith("file://"):
        return open(source.removeprefix("file://"), "rb")
    if source.startswith(("http://", "https://")):
        return open_http(source)
    import fsspec  # s3:// (through s3fs) and other object stores

    return fsspec.open(source, "rb").open()


def is_html(content_type: str | None) -> bool:
    return bool(content_type) and ("html" in content_type.lower())


def header_charset(content_type: str | None) -> str | None:
    """The `charset=` parameter of an HTTP Content-Type, if any."""
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip("\"' ").lower()
    return None


def response_page(record, segment: str) -> tuple[dict | None, str | None]:
    """A WARC `response` record → (page, None), or (None, the reason it is not a page)."""
    headers = record.rec_headers
    if headers.get_header("WARC-Truncated"):
        return None, "truncated"
    http = record.http_headers
    if http is None:
        return None, "not_http"
    if http.get_statuscode() != "200":
        return None, "status_not_200"
    content_type = http.get_header("Content-Type")
    if not is_html(content_type):
        return None, "not_html"
    url = headers.get_header("WARC-Target-URI") or ""
    return {
        "url": url,
        "date_download": headers.get_header("WARC-Date"),
        "digest": headers.get_header("WARC-Payload-Digest") or headers.get_header("WARC-Block-Digest"),
        "source_domain": source_domain(url),
        "cc_segment": segment,
        "http_charset": header_charset(content_type),
        "html": record.content_stream().read(),
    }, None


class ArchiveReader:
    """Reads WARC/WET files into page records. `stats` counts records in, pages out, and the
    records dropped by reason (their type, status, content type, or corruption)."""

    name = "read"

    def __init__(self) -> None:
        self.stats: Counter = Counter()

    def read(self, source: str) -> Iterator[dict]:
        segment = cc_segment(source)
        with open_source(source) as stream:
            seekable = stream.seekable() and "://" not in source
            offset = 0
            while offset is not None:
                offset = yield from self._read_from(stream, offset, seekable, segment, source)

    def _read_from(self, stream: BinaryIO, start: int, seekable: bool, segment: str, source: str):
        """Reads records from `start`; returns where to resume after a corrupt record, or None."""
        if seekable:
            stream.seek(start)
        records = ArchiveIterator(stream, arc2warc=True)
        position = start
        try:
            for record in records:
                position = start + records.offset if seekable else records.offset
                self.stats["in"] += 1
                page = self._page(record, segment)
                if page is None:
                    continue
                # A record whose file ends before its Content-Length is cut off: never a page.
                records.read_to_end(record)
                if record.raw_stream.limit > 0:
                    self.stats["dropped.cut_off_record"] += 1
                    log.warning("%s: record at byte %s is cut off (%s bytes missing)", source,
                                position, record.raw_stream.limit)
                    continue
                self.stats["out"] += 1
                yield page
            return None
        except RECORD_ERRORS as error:
            self.stats["in"] += 1
            self.stats["dropped.corrupt_record"] += 1
            log.warning("%s: corrupt record at byte %s skipped (%s: %s)", source, position,
                        type(error).__name__, str(error)[:200])
            return self._next_member(stream, position + 1) if seekable else None

    @staticmethod
    def _next_member(stream: BinaryIO, after: int) -> int | None:
        """Offset of the next gzip member at or after `after`, or None at the end of the file."""
        stream.seek(after)
        carry = b""
        base = after
        while chunk := stream.read(1 << 20):
            window = carry + chunk
            found = window.find(GZIP_MEMBER_MAGIC)
            if found >= 0:
                return base - len(carry) + found
            carry = window[-(len(GZIP_MEMBER_MAGIC) - 1):]
            base += len(chunk)
        return None

    def _page(self, record, segment: str) -> dict | None:
        kind = record.rec_type
        if kind == "conversion":
            return self._wet_document(record, segment)
        if kind != "response":
            self.stats[f"dropped.{kind if kind in SKIPPED_TYPES else 'other_type'}"] += 1
            return None
        page, reason = response_page(record, segment)
        if reason:
            self.stats[f"dropped.{reason}"] += 1
        return page

    def _wet_document(self, record, segment: str) -> dict | None:
        headers = record.rec_headers
        url = headers.get_header("WARC-Target-URI") or ""
        content = record.content_stream().read()
        title, raw_content, nlines = wet_text(content.decode("utf-8", errors="replace"))
        return {
            "url": url,
            "date_download": headers.get_header("WARC-Date"),
            "digest": headers.get_header("WARC-Block-Digest") or headers.get_header("WARC-Payload-Digest"),
            "source_domain": source_domain(url),
            "cc_segment": segment,
            "title": title,
            "raw_content": raw_content,
            # cc_net's reader: `length` is the record's Content-Length, `nlines` the lines after the title.
            "original_length": len(content),
            "original_nlines": nlines,
        }


def wet_text(text: str) -> tuple[str, str, int]:
    """A WET record's text as cc_net's `process_wet_file.parse_doc` reads it: (title, raw_content,
    lines of raw_content). cc_net reads the file as text (universal newlines: `\r\n` and `\r` end
    a line), strips every line, takes the first as the title, and the rest, with the record's two
    separator lines dropped when both are empty, as `raw_content`."""
    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines.append("")  # the record ends with "\r\n\r\n": one more empty line than `split` shows
    body = lines[1:-2] if not lines[-1] and not lines[-2] else lines[1:]
    return lines[0], "\n".join(body), len(body)
