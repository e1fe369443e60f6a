"""Bad input, held to account (issue 15): damaged, hostile or oversized input is kept where it is
good, counted by reason where it is not, and never costs unbounded memory or time.

Every input is built here: small crafted WARC files, and small files that inflate to gigabytes.
Those are read in a subprocess under an address-space limit (RLIMIT_AS), so that a regression fails
the test instead of eating the machine's memory."""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.extract import ExtractStage
from curation.minhash import MinHashSettings, document_signatures
from curation.perplexity import PerplexitySettings, PerplexityStage, load_model
from curation.pipeline import run_stages
from curation.settings import load_settings
from curation.warc import ArchiveReader, EmptyInput, TruncatedDownload
from jobs import curate
from jobs.train_lm import train_language

REPO_ROOT = Path(__file__).resolve().parent.parent
MEMORY_LIMIT = 512 << 20  # address space of the subprocess that reads a bomb (Python itself: ~50 MB)
BOMB_BYTES = 1536 << 20  # 1.5 GiB once inflated


# ---- building inputs ---------------------------------------------------------------------------

def paragraphs(shared_data: Path, count: int, lines: int = 8) -> list[str]:
    """`count` distinct paragraphs of real English (Botchan), `lines` lines each."""
    text = [line for line in (shared_data / "text" / "botchan.en.txt").read_text().split("\n") if len(line) > 40]
    return [" ".join(text[i * lines:(i + 1) * lines]) for i in range(count)]


def page(title: str, text: str) -> bytes:
    return f"<html><head><title>{title}</title></head><body><p>{text}</p></body></html>".encode()


def response_member(url: str, body: bytes, headers: list[tuple[str, str]] | None = None) -> bytes:
    """One WARC response record, as one gzip member (the way CommonCrawl writes them)."""
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=True)
    http = StatusAndHeaders("200 OK", headers or [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http))
    return out.getvalue()


def good_members(shared_data: Path, count: int, host: str) -> list[bytes]:
    return [response_member(f"http://{host}/page-{i}", page(f"page {i}", text))
            for i, text in enumerate(paragraphs(shared_data, count))]


def corrupted(member: bytes) -> bytes:
    """The member with its deflate data overwritten in the middle (its gzip header kept)."""
    damaged = bytearray(member)
    middle = len(member) // 2
    damaged[middle:middle + 64] = bytes(64)
    return bytes(damaged)


def repeated_deflate(chunk: bytes, times: int, prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    """gzip of prefix + chunk × times + suffix, built in milliseconds: each chunk is compressed after
    a full flush, so every copy after the first compresses to the same bytes and is repeated as is."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = compressor.compress(prefix + chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH) == block
    body = compressor.compress(suffix) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(prefix)
    for _ in range(times):
        crc = zlib.crc32(chunk, crc)
    crc = zlib.crc32(suffix, crc)
    size = len(prefix) + len(chunk) * times + len(suffix)
    # An empty final block, then the gzip trailer for the whole (repeated) content.
    trailer = crc.to_bytes(4, "little") + (size % (1 << 32)).to_bytes(4, "little")
    return head + block * (times - 1) + body + b"\x03\x00" + trailer


def warc_head(url: str, content_length: int) -> bytes:
    return (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {url}\r\nWARC-Date: 2020-01-20T00:00:00Z\r\n"
            f"WARC-Record-ID: <urn:uuid:{random.Random(url).getrandbits(128):032x}>\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {content_length}\r\n\r\n").encode()


def huge_record_member(url: str, body_bytes: int) -> bytes:
    """A gzip member of ~1.5 MB holding one response record whose HTML is `body_bytes` long."""
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n"
    chunk = b"<p>" + b"a" * ((1 << 20) - 3)
    assert body_bytes % len(chunk) == 0
    return repeated_deflate(chunk, body_bytes // len(chunk), warc_head(url, len(http) + body_bytes) + http, b"\r\n\r\n")


def gzip_bomb_member(url: str) -> bytes:
    """A response record of ~1.5 MB whose `Content-Encoding: gzip` body inflates to 1.5 GiB."""
    body = repeated_deflate(b"<p>" + b"a" * ((1 << 20) - 3), BOMB_BYTES >> 20)
    http = (f"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return zlib.compress(warc_head(url, len(http) + len(body)) + http + body + b"\r\n\r\n", wbits=31)


def one_line_member(size: int) -> bytes:
    """A gzip member that inflates to one line of `size` bytes (no newline anywhere)."""
    return repeated_deflate(b"x" * (1 << 20), size >> 20)


def read_in_subprocess(path: Path, limit: int = MEMORY_LIMIT, **reader_args) -> dict:
    """Reads `path` with ArchiveReader in a child whose address space is capped at `limit`; returns
    its pages' urls, its counters, its peak resident memory and its time."""
    script = f"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from curation.warc import ArchiveReader
reader = ArchiveReader(**{reader_args!r})
started = time.perf_counter()
urls = [page["url"] for page in reader.read({str(path)!r})]
peak_kb = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])  # ru_maxrss counts the parent's
print(json.dumps({{"urls": urls, "stats": dict(reader.stats), "seconds": time.perf_counter() - started,
                  "max_rss_mb": peak_kb / 1024}}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the reader ----------------------------------------------------------------------------------

def test_every_good_record_around_corrupt_members_is_kept(shared_data, tmp_path):
    good = good_members(shared_data, 10, "corrupt.example")
    bad = [corrupted(member) for member in good_members(shared_data, 2, "damaged.example")]
    path = tmp_path / "corrupt.warc.gz"
    path.write_bytes(b"".join(good[:3] + bad[:1] + good[3:6] + bad[1:] + good[6:]))
    reader = ArchiveReader()
    urls = [p["url"] for p in reader.read(str(path))]
    assert urls == [f"http://corrupt.example/page-{i}" for i in range(10)]
    assert reader.stats["dropped.corrupt_record"] == 2 and reader.stats["out"] == 10


def test_a_corrupt_member_read_in_one_block_never_takes_the_next_good_one_with_it():
    # The members above with random record IDs: one draw in about thirty (this file) inflated a
    # corrupt member's first block leniently, as warcio does, and lost the good member after it.
    reader = ArchiveReader()
    urls = [p["url"] for p in reader.read(str(REPO_ROOT / "tests" / "data" / "corrupt-members.warc.gz"))]
    assert urls == [f"http://corrupt.example/page-{i}" for i in range(10)]
    assert reader.stats["dropped.corrupt_record"] == 2 and reader.stats["in"] == 12


@pytest.mark.parametrize("kept_share", [0.05, 0.3, 0.6, 0.95])  # in the headers, or the payload
def test_a_file_cut_inside_a_member_keeps_what_came_before_and_counts_it(shared_data, tmp_path, kept_share):
    members = good_members(shared_data, 6, "cut.example")
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(b"".join(members[:5]) + members[5][: int(len(members[5]) * kept_share)])
    reader = ArchiveReader()
    urls = [p["url"] for p in reader.read(str(path))]
    assert urls == [f"http://cut.example/page-{i}" for i in range(5)]
    assert reader.stats["dropped.truncated_file"] == 1 and not reader.stats["dropped.corrupt_record"]


def test_a_record_header_without_its_uri_is_a_bad_record_not_a_crash(shared_data, tmp_path):
    # warcio itself fails on a response record with no WARC-Target-URI (AttributeError); seen when a
    # download that could not complete ended right after a record's WARC-Type line.
    members = good_members(shared_data, 4, "uri.example")
    header_cut = zlib.compressobj(wbits=31)
    cut = header_cut.compress(b"WARC/1.0\r\nWARC-Type: response\r\n") + header_cut.flush(zlib.Z_SYNC_FLUSH)
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(b"".join(members) + cut)
    reader = ArchiveReader()
    assert [p["url"] for p in reader.read(str(path))] == [f"http://uri.example/page-{i}" for i in range(4)]
    assert reader.stats["dropped.truncated_file"] == 1 and not reader.stats["dropped.corrupt_record"]

    record = gzip.decompress(members[1])
    without_uri = re.sub(rb"WARC-Target-URI: [^\r]*\r\n", b"", record)
    assert without_uri != record
    path.write_bytes(members[0] + gzip.compress(without_uri) + b"".join(members[2:]))
    reader = ArchiveReader()
    assert [p["url"] for p in reader.read(str(path))] == [f"http://uri.example/page-{i}" for i in (0, 2, 3)]
    assert reader.stats["dropped.corrupt_record"] == 1 and not reader.stats["dropped.truncated_file"]


def test_an_empty_file_is_an_error(tmp_path):
    for name, data in [("empty.warc.gz", b""), ("empty-gzip.warc.gz", zlib.compress(b"", wbits=31))]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(EmptyInput, match="empty input"):
            list(ArchiveReader().read(str(tmp_path / name)))


def test_a_huge_record_is_skipped_too_large_in_bounded_memory(shared_data, tmp_path):
    """A record of 768 MiB (1.5 GiB takes 15 s to inflate past on a busy CI machine; the memory is
    the same): more than the child's whole address space, so reading it whole would fail."""
    after = good_members(shared_data, 1, "after.example")[0]
    path = tmp_path / "huge.warc.gz"
    path.write_bytes(huge_record_member("http://huge.example/", MEMORY_LIMIT + (256 << 20)) + after)
    assert path.stat().st_size < 4 << 20
    result = read_in_subprocess(path)
    assert result["urls"] == ["http://after.example/page-0"]
    assert result["stats"]["dropped.too_large"] == 1 and "dropped.corrupt_record" not in result["stats"]
    assert result["max_rss_mb"] < 150
    print(f"768 MiB record: {result['max_rss_mb']:.0f} MB resident, {result['seconds']:.1f} s")


def test_a_gzip_encoded_body_is_capped_after_decoding(shared_data, tmp_path):
    after = good_members(shared_data, 1, "after.example")[0]
    path = tmp_path / "bomb.warc.gz"
    path.write_bytes(gzip_bomb_member("http://bomb.example/") + after)
    assert path.stat().st_size < 4 << 20
    result = read_in_subprocess(path)
    assert result["urls"] == ["http://after.example/page-0"]
    assert result["stats"]["dropped.too_large"] == 1
    assert result["max_rss_mb"] < 150
    print(f"gzip body inflating to 1.5 GiB: {result['max_rss_mb']:.0f} MB resident, {result['seconds']:.1f} s")
    # Under the cap, the same encoding is decoded: a small gzip-encoded page is a page.
    small = zlib.compress(page("small", "decoded " * 100), wbits=31)
    member = response_member("http://small.example/", small, [("Content-Type", "text/html"),
                                                               ("Content-Encoding", "gzip")])
    (tmp_path / "small.warc.gz").write_bytes(member)
    pages = list(ArchiveReader(max_payload_bytes=1 << 20).read(str(tmp_path / "small.warc.gz")))
    assert pages[0]["html"] == page("small", "decoded " * 100)


def test_a_member_inflating_to_one_huge_line_is_bounded_and_counted(shared_data, tmp_path):
    members = good_members(shared_data, 2, "line.example")
    path = tmp_path / "line.warc.gz"
    path.write_bytes(members[0] + one_line_member(256 << 20) + members[1])
    result = read_in_subprocess(path)
    assert result["urls"] == ["http://line.example/page-0", "http://line.example/page-1"]
    assert result["stats"]["dropped.line_too_long"] == 1
    assert result["max_rss_mb"] < 150 and result["seconds"] < 5
    print(f"256 MB line: {result['max_rss_mb']:.0f} MB resident, {result['seconds']:.2f} s")


# ---- HTTP: a stream that drops half way --------------------------------------------------------

class DroppingHandler(BaseHTTPRequestHandler):
    """Serves `server.body`, and cuts the first answer (every answer in mode `always`) half way.
    Modes: `range` (honours Range, no Content-Length), `length` (honours Range, sends
    Content-Length), `no_range` (ignores Range, no Content-Length), `always` (ignores Range)."""

    def do_GET(self):
        body, mode = self.server.body, self.server.mode
        self.server.requests.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range") and mode in ("range", "length"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        if mode == "length":
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = len(self.server.requests) == 1 or mode == "always"
        self.wfile.write(body[start:len(body) // 2] if cut else body[start:])

    def log_message(self, *args):
        pass


@contextmanager
def dropping_server(body: bytes, mode: str):
    server = ThreadingHTTPServer(("127.0.0.1", 0), DroppingHandler)
    server.body, server.mode, server.requests = body, mode, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/crawl.warc.gz"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def two_hundred_pages(shared_data) -> bytes:
    texts = paragraphs(shared_data, 200, lines=1)
    return b"".join(response_member(f"http://http.example/page-{i}", page(str(i), text))
                    for i, text in enumerate(texts))


@pytest.mark.parametrize("mode", ["range", "length", "no_range"])
def test_a_dropped_download_is_resumed(two_hundred_pages, mode):
    with dropping_server(two_hundred_pages, mode) as (server, url):
        reader = ArchiveReader(retries=2, backoff=0.01)
        assert len(list(reader.read(url))) == 200
    if mode in ("range", "length"):  # asked again from the last byte received (at most the half sent)
        start = int(server.requests[1].removeprefix("bytes=").rstrip("-"))
        assert 0 < start <= len(two_hundred_pages) // 2


def test_a_download_that_cannot_complete_fails(two_hundred_pages):
    with dropping_server(two_hundred_pages, "always") as (server, url):
        with pytest.raises(TruncatedDownload, match="download cut short"):
            list(ArchiveReader(retries=2, backoff=0.01).read(url))


# ---- extraction ----------------------------------------------------------------------------------

def test_deeply_nested_html_is_dropped_in_bounded_time():
    html = b"<html><body>" + b"<div>x " * 20_000 + b"</body></html>"  # 140 KB
    stage = ExtractStage()
    started = time.perf_counter()
    assert list(stage([{"url": "http://divs.example/", "html": html}])) == []
    assert time.perf_counter() - started < 1.0
    assert stage.stats["dropped.html_too_nested"] == 1


def test_control_characters_and_random_bytes_are_not_text(shared_data):
    rng = random.Random(0)
    controls = bytes(rng.choice(range(1, 32)) for _ in range(5000))
    noise = bytes(rng.getrandbits(8) for _ in range(5000))
    pages = [{"url": "http://controls.example/", "html": b"<html><body><p>" + controls + b"</p></body></html>"},
             {"url": "http://noise.example/", "html": b"<html><body><p>" + noise + b"</p></body></html>",
              "http_charset": "iso-8859-1"},
             {"url": "http://noise.example/utf8", "html": noise},
             {"url": "http://text.example/", "html": page("text", paragraphs(shared_data, 1)[0])}]
    stage = ExtractStage()
    assert [doc["url"] for doc in stage(pages)] == ["http://text.example/"]
    assert stage.stats["dropped.not_text"] == 3


# ---- caps on the text of one document ----------------------------------------------------------

def long_document(shared_data: Path, size: int = 4_000_000) -> str:
    """A 4 MB document of real English (Botchan) with every line made distinct."""
    lines = (shared_data / "text" / "botchan.en.txt").read_text().split("\n")
    out, total, i = [], 0, 0
    while total < size:
        line = f"{i} {lines[i % len(lines)]}"
        out.append(line)
        total += len(line) + 1
        i += 1
    return "\n".join(out)[:size]


def test_minhash_reads_a_bounded_prefix_of_a_huge_document(shared_data):
    text = long_document(shared_data)
    tracemalloc.start()
    signatures, _ = document_signatures([text], MinHashSettings())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MB"
    prefix, _ = document_signatures([text[:MinHashSettings().max_chars]], MinHashSettings())
    assert (signatures == prefix).all()
    capped, _ = document_signatures([text], MinHashSettings(max_chars=1000))
    assert (capped == document_signatures([text[:1000]], MinHashSettings(max_chars=None))[0]).all()


def test_kenlm_scores_a_bounded_prefix_of_a_huge_document(shared_data, tmp_path):
    train_language("en", [str(shared_data / "wikipedia" / "en" / "wikitext2-valid.tokens.txt")], tmp_path,
                   vocab_size=2000, memory="64M")
    text = long_document(shared_data)
    stage = PerplexityStage(PerplexitySettings(str(tmp_path), max_chars=50_000))
    (doc,) = run_stages([{"raw_content": text, "language": "en"}], [stage])
    assert doc["perplexity"] == load_model(tmp_path, "en").perplexity(text[:50_000])
    assert stage.stats["text_capped"] == 1


# ---- the command lines ---------------------------------------------------------------------------

def test_score_cli_refuses_bad_files_in_one_line_each(tmp_path):
    (tmp_path / "binary.bin").write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(4000)))
    for target, message in [(tmp_path, "Is a directory"), (tmp_path / "missing.txt", "No such file"),
                            (tmp_path / "binary.bin", "not text")]:
        done = subprocess.run([sys.executable, "-m", "curation.score", "--models", str(tmp_path), str(target)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and done.stdout == "" and len(lines) == 1
        assert lines[0].startswith(f"error: {target}: ") and message in lines[0]


# ---- the whole job over good and bad input together --------------------------------------------

def test_curate_keeps_every_good_document_and_lists_every_bad_input(spark, shared_data, tmp_path):
    real = sorted(str(p) for p in (shared_data / "warc").glob("*.warc.gz")) + \
        sorted(str(p) for p in (shared_data / "wet").glob("*.wet.gz"))
    bad = tmp_path / "bad"
    bad.mkdir()
    good = good_members(shared_data, 4, "mixed.example")
    (bad / "corrupt.warc.gz").write_bytes(good[0] + corrupted(good[1]) + good[2])
    (bad / "cut.warc.gz").write_bytes(good[3] + good[1][: len(good[1]) // 2])
    (bad / "empty.warc.gz").write_bytes(b"")
    (bad / "huge.warc.gz").write_bytes(huge_record_member("http://huge.example/", 64 << 20))
    (bad / "bomb.warc.gz").write_bytes(gzip_bomb_member("http://bomb.example/"))
    (bad / "line.warc.gz").write_bytes(one_line_member(16 << 20))
    rng = random.Random(1)
    (bad / "junk.warc.gz").write_bytes(
        response_member("http://divs.example/", b"<html><body>" + b"<div>x " * 20_000) +
        response_member("http://noise.example/", bytes(rng.getrandbits(8) for _ in range(8000))) +
        response_member("http://controls.example/", bytes(rng.choice(range(1, 32)) for _ in range(8000))))
    overrides = ["input.backoff_seconds=0.01", "input.retries=1"]
    config = load_settings(curate.CurateSettings, None, [f"input.paths={json.dumps(real)}", *overrides])
    started = time.perf_counter()
    curate.run(spark, config, tmp_path / "run")
    kept_before = set(pq.read_table(tmp_path / "run" / "curated", columns=["url"]).column("url").to_pylist())
    print(f"good files alone: {time.perf_counter() - started:.0f} s")

    # The same run directory: the good segments are resumed, the bad ones added, phase 2 redone.
    with dropping_server(b"".join(good), "always") as (_, url):
        mixed = [*real, *sorted(str(p) for p in bad.iterdir()), url]
        config = load_settings(curate.CurateSettings, None, [f"input.paths={json.dumps(mixed)}", *overrides])
        started = time.perf_counter()
        stats = curate.run(spark, config, tmp_path / "run")
        print(f"with the bad input: {time.perf_counter() - started:.0f} s")
    kept = set(pq.read_table(tmp_path / "run" / "curated", columns=["url"]).column("url").to_pylist())
    assert kept_before and kept_before <= kept
    assert {url for url in kept - kept_before if "mixed.example" not in url} == set()

    segments = json.loads((tmp_path / "run" / "manifest.json").read_text())["segments"]
    manifest = {Path(segment["source"]).name: segment for segment in segments}
    assert manifest["empty.warc.gz"]["state"] == "failed" and "empty input" in manifest["empty.warc.gz"]["error"]
    assert manifest["crawl.warc.gz"]["state"] == "failed" and "cut short" in manifest["crawl.warc.gz"]["error"]
    assert manifest["corrupt.warc.gz"]["bad_input"] == {"corrupt_record": 1}
    assert manifest["cut.warc.gz"]["bad_input"] == {"truncated_file": 1, "cut_off_record": 1}
    assert manifest["huge.warc.gz"]["bad_input"] == {"too_large": 1}
    assert manifest["bomb.warc.gz"]["bad_input"] == {"too_large": 1}
    assert manifest["line.warc.gz"]["bad_input"] == {"line_too_long": 1}
    assert manifest["junk.warc.gz"]["bad_input"] == {"html_too_nested": 1, "not_text": 2}
    assert all(s["state"] == "done" and not s["bad_input"] for name, s in manifest.items() if name in
               {Path(p).name for p in real})
    read, extract = stats["stages"]["read"]["dropped"], stats["stages"]["extract"]["dropped"]
    assert (read["corrupt_record"], read["truncated_file"], read["too_large"], read["line_too_long"]) == (1, 1, 2, 1)
    assert (extract["html_too_nested"], extract["not_text"]) == (1, 2)
    assert len(stats["failed_segments"]) == 2
    report = (tmp_path / "run" / "report.html").read_text()
    assert "truncated_file: 1" in report and "empty input" in report
