"""CommonCrawl snapshots over HTTP: snapshot names, path listings, segment choice, and streams
that retry with exponential backoff (the real service answers 503 under load)."""

from __future__ import annotations

import gzip
import io
import logging
import random
import re
import time
from typing import BinaryIO

import requests
import urllib3

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://data.commoncrawl.org"
SNAPSHOT_RE = re.compile(r"^(?:CC-MAIN-)?(\d{4})-(\d{2})$")
RETRY_STATUS = {429, 500, 502, 503, 504}


class SnapshotError(ValueError):
    pass


def snapshot_name(snapshot: str) -> str:
    """`2020-05` or `CC-MAIN-2020-05` → `CC-MAIN-2020-05`; anything else is a clear error."""
    match = SNAPSHOT_RE.match(snapshot.strip())
    if not match or not (2008 <= int(match[1]) <= 2100 and 1 <= int(match[2]) <= 53):
        raise SnapshotError(f"{snapshot!r} is not a CommonCrawl snapshot: expected YYYY-WW "
                            f"(e.g. 2020-05) or CC-MAIN-YYYY-WW")
    return f"CC-MAIN-{match[1]}-{match[2]}"


def get_with_retries(url: str, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
                     headers: dict | None = None, stream: bool = False) -> requests.Response:
    """GET that retries 429/5xx answers, timeouts and dropped connections with exponential backoff
    (backoff × 2^attempt, with jitter); other HTTP errors raise at once."""
    for attempt in range(retries + 1):
        try:
            response = requests.get(url, timeout=timeout, headers=headers, stream=stream)
            if response.status_code not in RETRY_STATUS:
                response.raise_for_status()
                return response
            problem = f"HTTP {response.status_code}"
            response.close()
        except (requests.ConnectionError, requests.Timeout) as error:
            problem = f"{type(error).__name__}: {error}"
        if attempt == retries:
            raise ConnectionError(f"{url}: gave up after {retries + 1} tries ({problem})")
        delay = backoff * 2 ** attempt * (1 + random.random() / 2)
        log.warning("%s: %s, retrying in %.1f s", url, problem, delay)
        time.sleep(delay)
    raise AssertionError("unreachable")


class ResumableHTTPStream(io.RawIOBase):
    """The raw (still gzip-compressed) body of a URL as a stream, never loaded whole, that survives
    a dropped connection: it asks again from the last byte received (`Range`), or, from a server
    that ignores `Range`, downloads again and skips what it already gave. A body whose length is
    unknown (no Content-Length) is confirmed complete by one `Range` request at its end. It gives up
    with ConnectionError after `retries` tries in a row that bring no new byte."""

    def __init__(self, url: str, retries: int = 5, backoff: float = 1.0):
        self.url, self.retries, self.backoff = url, retries, backoff
        self.position = 0
        self.total: int | None = None  # the body's length, when the server says it
        self.confirmed_end = False
        self.response = self._open()

    def _open(self) -> requests.Response | None:
        """A response whose body continues at `self.position`, or None when the body ends there."""
        headers = {"Range": f"bytes={self.position}-"} if self.position else None
        try:
            response = get_with_retries(self.url, self.retries, self.backoff, headers=headers, stream=True)
        except requests.HTTPError as error:
            if self.position and error.response is not None and error.response.status_code == 416:
                return None  # nothing at or after `position`: the body ends there
            raise
        response.raw.decode_content = False
        if response.status_code == 206:
            start, _, total = response.headers.get("Content-Range", "").removeprefix("bytes ").partition("/")
            if int(start.partition("-")[0] or -1) != self.position:
                response.close()
                raise ConnectionError(f"{self.url}: asked for bytes from {self.position}, got {start!r}")
            self.total = int(total) if total.isdigit() else self.total
        else:
            length = response.headers.get("Content-Length")
            self.total = int(length) if length and length.isdigit() else None
            skip = self.position  # the server ignores Range: skip what was already given
            while skip:
                data = response.raw.read(min(skip, 1 << 20))
                if not data:
                    response.close()
                    return None  # the new copy is no longer than what was read
                skip -= len(data)
        return response

    def readinto(self, buffer) -> int:
        failures = 0
        while self.response is not None:
            try:
                data = self.response.raw.read(len(buffer))
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
                data, problem = None, f"{type(error).__name__}: {error}"
            else:
                problem = "the connection closed before the end of the body"
            if data:
                buffer[:len(data)] = data
                self.position += len(data)
                self.confirmed_end = False
                return len(data)
            if data is not None and (self.total is not None and self.position >= self.total or self.confirmed_end):
                return 0
            self.response.close()
            if data is not None and self.total is None:
                self.confirmed_end = True  # the body ended without a length: ask whether more follows
            else:
                failures += 1
                if failures > self.retries:
                    raise ConnectionError(f"{self.url}: gave up after {failures} tries at byte {self.position} "
                                          f"({problem})")
                delay = self.backoff * 2 ** (failures - 1)
                log.warning("%s: %s at byte %s, resuming in %.1f s", self.url, problem, self.position, delay)
                time.sleep(delay)
            self.response = self._open()
        return 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
        super().close()


def open_http(url: str, retries: int = 5, backoff: float = 1.0) -> BinaryIO:
    """The raw body of `url` as a buffered stream that resumes after a dropped connection."""
    return io.BufferedReader(ResumableHTTPStream(url, retries, backoff), 1 << 16)


def list_paths(snapshot: str, base_url: str = DEFAULT_BASE_URL, fmt: str = "warc",
               retries: int = 5, backoff: float = 1.0) -> list[str]:
    """The snapshot's `warc.paths.gz` (or wet/wat) as full URLs under `base_url`."""
    if fmt not in {"warc", "wet", "wat"}:
        raise ValueError(f"format {fmt!r}: expected warc, wet or wat")
    name = snapshot_name(snapshot)
    url = f"{base_url.rstrip('/')}/crawl-data/{name}/{fmt}.paths.gz"
    try:
        body = get_with_retries(url, retries=retries, backoff=backoff).content
    except requests.HTTPError as error:
        raise SnapshotError(f"{url}: {error} — is {name} a published snapshot?") from error
    lines = gzip.GzipFile(fileobj=io.BytesIO(body)).read().decode().split()
    return [f"{base_url.rstrip('/')}/{line}" for line in lines]


def select_segments(paths: list[str], segments: str | int = 1, seed: int = 0) -> list[str]:
    """`N` → the first N; `A:B` → paths[A:B]; `sample:N` → N chosen with `seed`; `all`."""
    spec = str(segments).strip()
    if spec == "all":
        return list(paths)
    if spec.startswith("sample:"):
        count = int(spec.removeprefix("sample:"))
        return sorted(random.Random(seed).sample(paths, min(count, len(paths))), key=paths.index)
    if ":" in spec:
        start, _, stop = spec.partition(":")
        return paths[int(start or 0):int(stop) if stop else None]
    if spec.isdigit():
        return paths[: int(spec)]
    raise ValueError(f"SEGMENTS={segments!r}: expected N, A:B, sample:N or all")
