"""Pages at given URLs from CommonCrawl without crawling: the CDX URL index
(`https://index.commoncrawl.org/CC-MAIN-…-index?url=…&output=json`) gives each capture's WARC file,
offset and length; an HTTP range request on `https://data.commoncrawl.org/<filename>` fetches that
one gzip member, which is decompressed into a page record like `curation.warc.ArchiveReader` gives
(`url`, `html`, `http_charset`, …), ready for `ExtractStage`.

Both base URLs are configurable (tests use a mirror on 127.0.0.1). 429/5xx answers, timeouts and
dropped connections are retried with exponential backoff; concurrency is bounded by a thread pool.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import requests
from warcio.archiveiterator import ArchiveIterator

from curation.commoncrawl import get_with_retries
from curation.warc import cc_segment, is_html, response_page

log = logging.getLogger(__name__)

DEFAULT_INDEX_URL = "https://index.commoncrawl.org"
DEFAULT_DATA_URL = "https://data.commoncrawl.org"


def index_endpoint(snapshot: str, index_base: str = DEFAULT_INDEX_URL) -> str:
    """`CC-MAIN-2020-34` → `https://index.commoncrawl.org/CC-MAIN-2020-34-index`."""
    from curation.commoncrawl import snapshot_name

    return f"{index_base.rstrip('/')}/{snapshot_name(snapshot)}-index"


def query_index(url: str, endpoint: str, retries: int = 5, backoff: float = 1.0,
                timeout: float = 60.0) -> list[dict]:
    """Captures of `url` (exact match) as the index's JSON lines; [] when it has none (404)."""
    try:
        response = get_with_retries(f"{endpoint}?{requests.compat.urlencode({'url': url, 'output': 'json'})}",
                                    retries=retries, backoff=backoff, timeout=timeout)
    except requests.HTTPError as error:
        if error.response is not None and error.response.status_code == 404:
            return []
        raise
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def best_capture(captures: list[dict]) -> dict | None:
    """The latest capture answered 200 with HTML, if any."""
    good = [c for c in captures if str(c.get("status", "200")) == "200"
            and is_html(c.get("mime") or c.get("mime-detected") or "text/html")]
    return max(good, key=lambda c: c.get("timestamp", "")) if good else None


def fetch_range(filename: str, offset: int, length: int, data_base: str = DEFAULT_DATA_URL,
                retries: int = 5, backoff: float = 1.0, timeout: float = 60.0) -> bytes:
    """Bytes [offset, offset+length) of a WARC file by one HTTP range request."""
    url = f"{data_base.rstrip('/')}/{filename.lstrip('/')}"
    headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
    response = get_with_retries(url, retries=retries, backoff=backoff, timeout=timeout, headers=headers)
    body = response.content
    if response.status_code != 206:
        # A server that ignores Range sends the whole file: cut the member out of it.
        log.warning("%s: no range support (HTTP %s)", url, response.status_code)
        body = body[offset:offset + length]
    if len(body) != length:
        raise OSError(f"{url}: asked {length} bytes at {offset}, got {len(body)}")
    return body


def record_to_page(member: bytes, source: str = "") -> dict | None:
    """The page in one gzipped WARC record (a range-fetched member), or None if it is not a
    200 HTML response."""
    for record in ArchiveIterator(io.BytesIO(member), arc2warc=True):
        if record.rec_type == "response":
            return response_page(record, cc_segment(source))[0]
    return None


def fetch_capture(capture: dict, data_base: str = DEFAULT_DATA_URL, retries: int = 5,
                  backoff: float = 1.0) -> dict | None:
    member = fetch_range(capture["filename"], int(capture["offset"]), int(capture["length"]),
                         data_base, retries=retries, backoff=backoff)
    return record_to_page(member, capture["filename"])


def fetch_pages(urls: Iterable[str], endpoint: str, data_base: str = DEFAULT_DATA_URL,
                concurrency: int = 4, retries: int = 5, backoff: float = 1.0,
                stats: dict | None = None) -> Iterator[dict]:
    """Page records of the URLs that the index has a 200 HTML capture of, fetched with range
    requests, at most `concurrency` URLs in flight. Failures are counted in `stats`, not raised."""
    stats = stats if stats is not None else {}

    def one(url: str) -> dict | None:
        try:
            capture = best_capture(query_index(url, endpoint, retries=retries, backoff=backoff))
            if capture is None:
                stats["not_in_index"] = stats.get("not_in_index", 0) + 1
                return None
            page = fetch_capture(capture, data_base, retries=retries, backoff=backoff)
        except (OSError, ConnectionError, requests.RequestException, ValueError) as error:
            log.warning("%s: %s", url, error)
            stats["failed"] = stats.get("failed", 0) + 1
            return None
        if page is None:
            stats["not_html"] = stats.get("not_html", 0) + 1
            return None
        stats["fetched"] = stats.get("fetched", 0) + 1
        return page

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        # map() keeps order; the pool bounds how many requests run at once.
        for page in pool.map(one, urls):
            if page is not None:
                yield page
