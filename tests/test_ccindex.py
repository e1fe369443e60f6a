"""Path b of the wikiref positives for real: a mirror on 127.0.0.1 of CommonCrawl's CDX index API and
of WARC files with HTTP range requests, built from ../shared/data/warc. Every path answers 503 the
first time (as the real service does under load)."""

from __future__ import annotations

import json
import shutil
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from warcio.archiveiterator import ArchiveIterator

from curation.ccindex import best_capture, fetch_capture, fetch_pages, fetch_range, index_endpoint, query_index
from curation.extract import ExtractStage
from curation.pipeline import run_stages
from curation.warc import ArchiveReader

SNAPSHOT = "CC-MAIN-2020-34"
SEGMENT = "1596439735792.85"
FILES = ("web-pages-00000.warc.gz", "CC-MAIN-2020-34-excerpt.warc.gz")


def index_rows(path: Path, filename: str) -> list[dict]:
    """CDX JSON rows (url, filename, offset, length, status, mime) of the response records."""
    rows = []
    with open(path, "rb") as stream:
        records = ArchiveIterator(stream)
        for record in records:
            if record.rec_type != "response":
                continue
            url = record.rec_headers.get_header("WARC-Target-URI")
            status = record.http_headers.get_statuscode() if record.http_headers else "-"
            mime = (record.http_headers.get_header("Content-Type") or "").split(";")[0] if record.http_headers else ""
            records.read_to_end(record)
            rows.append({"url": url, "filename": filename, "offset": str(records.get_record_offset()),
                         "length": str(records.get_record_length()), "status": status, "mime": mime,
                         "timestamp": record.rec_headers.get_header("WARC-Date")})
    return rows


class Handler(BaseHTTPRequestHandler):
    root: Path
    index: dict
    seen: Counter
    ranges: list

    def do_GET(self):
        self.seen[self.path] += 1
        if self.seen[self.path] == 1:
            return self.answer(503, b"Slow Down")
        parts = urlsplit(self.path)
        if parts.path == f"/{SNAPSHOT}-index":
            url = parse_qs(parts.query)["url"][0]
            rows = self.index.get(url)
            if not rows:
                return self.answer(404, b'{"message": "No Captures found for: ' + url.encode() + b'"}')
            return self.answer(200, "".join(json.dumps(r) + "\n" for r in rows).encode())
        file = self.root / parts.path.lstrip("/")
        if not file.is_file():
            return self.answer(404, b"not found")
        data = file.read_bytes()
        spec = self.headers.get("Range")
        if not spec:
            return self.answer(200, data)
        start, end = (int(x) for x in spec.removeprefix("bytes=").split("-"))
        self.ranges.append((start, end))
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start:end + 1])

    def answer(self, code: int, body: bytes):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mirror(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("cc-mirror")
    index: dict[str, list] = {}
    for name in FILES:
        filename = f"crawl-data/{SNAPSHOT}/segments/{SEGMENT}/warc/{name}"
        (root / filename).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / "warc" / name, root / filename)
        for row in index_rows(root / filename, filename):
            index.setdefault(row["url"], []).append(row)
    handler = type("H", (Handler,), {"root": root, "index": index, "seen": Counter(), "ranges": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    yield {"base": base, "endpoint": index_endpoint("2020-34", base), "index": index, "handler": handler}
    server.shutdown()
    server.server_close()


def test_index_query_range_fetch_and_decompress_one_record(mirror, shared_data):
    handler = mirror["handler"]
    reference = next(ArchiveReader().read(str(shared_data / "warc" / "web-pages-00000.warc.gz")))
    url = reference["url"]

    captures = query_index(url, mirror["endpoint"], retries=3, backoff=0.01)
    assert len(captures) == 1 and captures[0]["url"] == url
    # The first query was answered 503 and retried.
    assert any(v == 2 and "index?url=" in k for k, v in handler.seen.items())

    capture = best_capture(captures)
    page = fetch_capture(capture, mirror["base"], retries=3, backoff=0.01)
    # One range request for exactly the record's bytes (the first try was a 503).
    start = int(capture["offset"])
    assert (start, start + int(capture["length"]) - 1) in handler.ranges
    assert handler.seen[f"/{capture['filename']}"] >= 2
    assert page["url"] == url and page["html"] == reference["html"]
    assert page["cc_segment"] == capture["filename"]
    doc = next(run_stages([page], [ExtractStage()]))
    assert len(doc["raw_content"]) >= 300


def test_range_fetch_is_one_gzip_member(mirror):
    rows = [r for rows in mirror["index"].values() for r in rows
            if r["filename"].endswith("CC-MAIN-2020-34-excerpt.warc.gz")]
    assert len(rows) == 16
    row = rows[3]
    member = fetch_range(row["filename"], int(row["offset"]), int(row["length"]), mirror["base"],
                         retries=3, backoff=0.01)
    assert member[:3] == b"\x1f\x8b\x08" and len(member) == int(row["length"])


def test_fetch_pages_counts_misses_and_bounds_concurrency(mirror):
    known = sorted(u for u, rows in mirror["index"].items() if rows[0]["status"] == "200")[:6]
    urls = known + ["http://not-in-the-index.example/page"]
    stats: dict = {}
    pages = list(fetch_pages(urls, mirror["endpoint"], mirror["base"], concurrency=3, retries=3,
                             backoff=0.01, stats=stats))
    assert stats.get("not_in_index") == 1
    assert stats.get("fetched", 0) + stats.get("not_html", 0) == 6
    assert {p["url"] for p in pages} <= set(known) and len(pages) == stats["fetched"] >= 1


def test_training_takes_positives_from_the_cc_index(mirror, shared_data, tmp_path):
    """Path b inside `jobs.train_wikiref`: an article citing pages that the (mirrored) index has;
    the pages are range-fetched, extracted and language-identified, and no fallback is needed."""
    from curation.wikiref_training import WikirefTrainingSettings
    from jobs.train_wikiref import train

    cited = sorted(u for u, rows in mirror["index"].items()
                   if rows[0]["status"] == "200" and "web-pages-00000" in rows[0]["filename"])
    article = tmp_path / "Article.txt"
    article.write_text("'''Article''' cites.\n" + "".join(
        f"Fact {i}.<ref>{{{{cite web|url={url}|title=T{i}}}}}</ref>\n" for i, url in enumerate(cited)))
    output = tmp_path / "model"
    manifest = train([str(article)], [str(shared_data / "wet" / "CC-MAIN-2019-30-697-docs.warc.wet.gz")], output,
                     cc_index=mirror["endpoint"], cc_data=mirror["base"], log=lambda m: None,
                     settings=WikirefTrainingSettings(min_positives=20, retries=3, backoff=0.01))
    positives = manifest["positives"]
    assert positives["used"] == ["cc_index"] and not positives["wikipedia_fallback"]
    assert manifest["cc_index_fetch"]["fetched"] == len(cited) == 50
    assert positives["by_source"]["cc_index"] >= 20  # after the 300-character floor and language ID
    assert (output / "wikiref.bin").exists() and manifest["split"]["held_out"]["positive"] > 0
