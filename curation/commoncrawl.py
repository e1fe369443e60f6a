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


def open_http(url: str, retries: int = 5, backoff: float = 1.0) -> BinaryIO:
    """The raw (still gzip-compressed) body of `url` as a stream, never loaded whole."""
    response = get_with_retries(url, retries=retries, backoff=backoff, stream=True)
    response.raw.decode_content = False
    return response.raw


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
