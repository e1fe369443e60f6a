"""Stream records out of WARC and WET files with warcio.

WARC `response` records with status 200 and an HTML content type become raw pages (HTML bytes
still to be extracted); WET `conversion` records become documents with text already extracted.
Everything else is skipped and counted by reason. Headers are read by name, never by position.
A corrupt record is counted and skipped: in a local gzip file the reader resynchronises at the
next gzip member, so the rest of the file is still read; in a stream it stops there. Memory is
bounded per record: payloads and header lines are read up to a cap, never whole.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

from warcio.archiveiterator import ArchiveIterator
from warcio.bufferedreaders import DecompressingBufferedReader
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecordLoader

from curation.commoncrawl import open_http
from curation.settings import setting

log = logging.getLogger(__name__)

GZIP_MEMBER_MAGIC = b"\x1f\x8b\x08"
SKIPPED_TYPES = {"request", "metadata", "warcinfo", "revisit", "resource", "continuation"}
# Errors of the data itself. I/O and network errors are not among them: they fail the whole
# input, so that a resumed run reads it again instead of keeping a silently shortened copy.
RECORD_ERRORS = (ArchiveLoadFailed, zlib.error, EOFError, ValueError)
# CommonCrawl truncates payloads at 1 MiB; a few MiB leaves room for other crawls (read.max_payload_bytes).
MAX_PAYLOAD_BYTES = 4 << 20
# WARC and HTTP header lines are short; 1 MiB is far above any real one (read.max_line_bytes).
MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class ReadSettings:
    """Reading WARC/WET records: every read is bounded."""
    max_payload_bytes: int = setting(MAX_PAYLOAD_BYTES, "payload after HTTP decoding (gzip, chunked); longer: "
                                     "too_large (CommonCrawl cuts at 1 MiB)", minimum=1)
    max_line_bytes: int = setting(MAX_LINE_BYTES, "a WARC/HTTP header line; longer (a member inflating to one "
                                  "line): line_too_long", minimum=1)


def cc_segment(source: str) -> str:
    """CCNet's `cc_segment`: the path from `crawl-data/` on, else the file name."""
    path = urlsplit(source).path if "://" in source else source
    marker = path.find("crawl-data/")
    return path[marker:] if marker >= 0 else os.path.basename(path)


def source_domain(url: str) -> str:
    return urlsplit(url).netloc.lower()


def open_source(source: str, retries: int = 5, backoff: float = 1.0) -> BinaryIO:
    """A binary stream of a local path, an http(s) URL (retried with backoff, resumed where it
    broke off) or any fsspec URL such as s3://, never read whole into memory."""
    if "://" not in source or source.startswith("file://"):
        return open(source.removeprefix("file://"), "rb")
    if source.startswith(("http://", "https://")):
        return open_http(source, retries, backoff)
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


def read_payload(record, max_bytes: int) -> bytes | None:
    """The record's payload after HTTP transfer and content decoding (chunked, gzip, deflate), or
    None when it is longer than `max_bytes`: never more than that is held. A block longer than the
    cap is refused unread (warcio de-chunks a whole chunk at once)."""
    if int(record.rec_headers.get_header("Content-Length") or 0) > max_bytes:
        return None
    payload = record.content_stream().read(max_bytes + 1)
    return payload if len(payload) <= max_bytes else None


def response_page(record, segment: str, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> tuple[dict | None, str | None]:
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
    html = read_payload(record, max_payload_bytes)
    if html is None:
        return None, "too_large"
    url = headers.get_header("WARC-Target-URI") or ""
    return {
        "url": url,
        "date_download": headers.get_header("WARC-Date"),
        "digest": headers.get_header("WARC-Payload-Digest") or headers.get_header("WARC-Block-Digest"),
        "source_domain": source_domain(url),
        "cc_segment": segment,
        "http_charset": header_charset(content_type),
        "html": html,
    }, None


class LineTooLong(ValueError):
    """A header line longer than the reader's `max_line_bytes`."""


class EmptyInput(ValueError):
    """An input that holds no WARC/WET record at all."""


class TruncatedDownload(ConnectionError):
    """A remote input that ended inside a record, after the stream resumed what it could."""


class LineBoundedReader(DecompressingBufferedReader):
    """warcio's gzip reader with two refusals of its own. A line (WARC or HTTP header) longer than
    `max_line_bytes` is an error: warcio would grow it without end (a gzip member can inflate to one
    line of gigabytes). A gzip member that fails to inflate part way is an error: warcio writes the
    zlib error to stderr and goes on as if the member had ended, which hides the damage."""

    def __init__(self, stream: BinaryIO, max_line_bytes: int):
        super().__init__(stream)
        self.max_line_bytes = max_line_bytes
        self.ended_inside_member = False  # set at the end of the input
        self.gzip_file = False  # known once the first block has inflated

    def readline(self, length: int | None = None) -> bytes:
        limit = self.max_line_bytes if length is None else min(length, self.max_line_bytes)
        parts, size = [], 0
        while size < limit:
            self._fillbuff()
            if self.empty():
                break
            part = self.buff.readline(limit - size)
            parts.append(part)
            size += len(part)
            if part.endswith(b"\n"):
                break
        line = b"".join(parts)
        if size >= self.max_line_bytes and not line.endswith(b"\n"):
            raise LineTooLong(f"a line longer than {self.max_line_bytes} bytes (read.max_line_bytes)")
        return line

    def _init_decomp(self, decomp_type: str | None) -> None:
        self.member_fed = False  # whether the current gzip member has been given any byte
        super()._init_decomp(decomp_type)

    def _decompress(self, data: bytes) -> bytes:
        self.member_fed = self.member_fed or bool(data)
        if self.decompressor is not None and data and (self.num_block_read or self.gzip_file):
            return self.decompressor.decompress(data)  # zlib.error: the member is corrupt
        # The file's first block: warcio's test of whether the file is gzip (it drops the decompressor
        # of a plain file). Not every member's first block: warcio would then read a corrupt member's
        # bytes, and the good members after it, as plain text, and lose them.
        data = super()._decompress(data)
        self.gzip_file = self.decompressor is not None
        return data

    def inside_member(self) -> bool:
        """True while a gzip member has been started and not finished."""
        return self.decompressor is not None and self.member_fed and not self.decompressor.eof

    def close_decompressor(self) -> None:
        """warcio calls this at the end of the input: note whether the last gzip member was complete."""
        self.ended_inside_member = self.inside_member()
        super().close_decompressor()


class RecordLoader(ArcWarcRecordLoader):
    """warcio's record parser, refusing a response or request record without a WARC-Target-URI (a
    header cut short by the end of the input, a damaged record) as ArchiveLoadFailed, a bad record,
    where warcio fails on the missing URI with an AttributeError."""

    def load_http_headers(self, rec_type, uri, stream, length):
        if uri is None and rec_type in self.HTTP_RECORDS and length != 0:
            raise ArchiveLoadFailed(f"a {rec_type} record without WARC-Target-URI")
        return super().load_http_headers(rec_type, uri, stream, length)


class ArchiveReader:
    """Reads WARC/WET files into page records. `stats` counts records in, pages out, and the
    records dropped by reason (their type, status, content type, size, or corruption).

    Every read is bounded: a payload is read up to `max_payload_bytes` after HTTP content decoding
    (gzip, deflate, chunked) and a longer one is dropped `too_large`; a header line is read up to
    `max_line_bytes`. A file that ends inside a record or a gzip member counts `truncated_file` (its
    pages before the cut are kept); over HTTP that fails the input instead, since the stream already
    resumed what it could. A file with no record at all raises `EmptyInput`."""

    name = "read"
    # Drop reasons that mean the input itself is bad (listed per segment in the run's manifest).
    bad_input_reasons = ("corrupt_record", "line_too_long", "truncated_file", "cut_off_record", "too_large")

    def __init__(self, max_payload_bytes: int = MAX_PAYLOAD_BYTES, max_line_bytes: int = MAX_LINE_BYTES,
                 retries: int = 5, backoff: float = 1.0) -> None:
        self.stats: Counter = Counter()
        self.max_payload_bytes = max_payload_bytes
        self.max_line_bytes = max_line_bytes
        self.retries, self.backoff = retries, backoff

    def read(self, source: str) -> Iterator[dict]:
        segment = cc_segment(source)
        records_before = self.stats["in"]
        with open_source(source, self.retries, self.backoff) as stream:
            seekable = stream.seekable() and "://" not in source
            offset = 0
            while offset is not None:
                offset = yield from self._read_from(stream, offset, seekable, segment, source)
        if self.stats["in"] == records_before:
            raise EmptyInput(f"{source}: empty input (no WARC/WET record)")

    def _read_from(self, stream: BinaryIO, start: int, seekable: bool, segment: str, source: str):
        """Reads records from `start`; returns where to resume after a corrupt record, or None."""
        if seekable:
            stream.seek(start)
        records = ArchiveIterator(stream, arc2warc=True)
        # Nothing is read before the first record is asked for: the reader and loader can still be replaced.
        reader = records.reader = LineBoundedReader(stream, self.max_line_bytes)
        records.loader = RecordLoader(arc2warc=True)
        position = start
        cut = False
        try:
            for record in records:
                position = records.offset  # absolute: warcio starts from the stream's position
                self.stats["in"] += 1
                page = self._page(record, segment)
                records.read_to_end(record)
                missing = getattr(record.raw_stream, "limit", 0)  # no limit: a header without a length
                if missing > 0:  # the file ends before the record's Content-Length
                    cut = True
                    if page is not None:
                        self.stats["dropped.cut_off_record"] += 1
                        log.warning("%s: record at byte %s is cut off (%s bytes missing)", source, position, missing)
                    continue
                if page is not None:
                    self.stats["out"] += 1
                    yield page
        except RECORD_ERRORS as error:
            if not isinstance(error, zlib.error) and reader.inside_member() and not stream.read(1):
                self._truncated(source, stream)  # the input ends inside a record's header
                return None
            position = records.offset
            reason = "line_too_long" if isinstance(error, LineTooLong) else "corrupt_record"
            self.stats["in"] += 1
            self.stats[f"dropped.{reason}"] += 1
            log.warning("%s: %s at byte %s skipped (%s: %s)", source, reason.replace("_", " "), position,
                        type(error).__name__, str(error)[:200])
            return self._next_member(stream, position + 1) if seekable else None
        if cut or reader.ended_inside_member:
            self._truncated(source, stream)
        return None

    def _truncated(self, source: str, stream: BinaryIO) -> None:
        """The input ends inside a record: counted for a file (the records before are kept); over
        HTTP an error, since the stream has already resumed or retried what it could."""
        if "://" in source and not source.startswith("file://"):
            raise TruncatedDownload(f"{source}: the stream ended inside a record after {stream.tell()} bytes "
                                    f"(download cut short)")
        self.stats["dropped.truncated_file"] += 1
        log.warning("%s: the file ends inside a record (truncated); the records before are kept", source)

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
        page, reason = response_page(record, segment, self.max_payload_bytes)
        if reason:
            self.stats[f"dropped.{reason}"] += 1
        return page

    def _wet_document(self, record, segment: str) -> dict | None:
        headers = record.rec_headers
        payload = read_payload(record, self.max_payload_bytes)
        if payload is None:
            self.stats["dropped.too_large"] += 1
            return None
        url = headers.get_header("WARC-Target-URI") or ""
        title, raw_content, nlines = wet_text(payload.decode("utf-8", errors="replace"))
        return {
            "url": url,
            "date_download": headers.get_header("WARC-Date"),
            "digest": headers.get_header("WARC-Block-Digest") or headers.get_header("WARC-Payload-Digest"),
            "source_domain": source_domain(url),
            "cc_segment": segment,
            "title": title,
            "raw_content": raw_content,
            # cc_net's reader: `length` is the record's Content-Length, `nlines` the lines after the title.
            "original_length": len(payload),
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
