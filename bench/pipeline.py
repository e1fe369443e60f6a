"""`make curate` end to end on ≥ 20k WARC pages against a bare single-process loop doing the same
work with the same libraries: pages/s per core for both, and their ratio (target ≥ 0.6, Spark's
start-up included).

    .venv/bin/python -m bench.pipeline
    BENCH_PIPELINE_PAGES=4000 BENCH_PIPELINE_CORES=2 .venv/bin/python -m bench.pipeline

Input: the real HTML responses of ../shared/data/warc, replicated with small edits (a word of the
body changed, a short paragraph added: near-duplicates for line dedup and MinHash), each copy at its
own URL, written with warcio as BENCH_PIPELINE_FILES gzipped WARC files (default: 4 per core).
Ours: `python -m jobs.curate --input … --master local[CORES]` as a subprocess (Spark's start-up,
phase 1, phase 2 and the report included). Bare loop: warcio's ArchiveIterator → resiliparse
(encoding, HTMLTree, extract_plain_text with the extract stage's options) → fastText lid.176 on
each text → MinHash signatures (curation.minhash.MinHasher) of each text, in one process.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

import fasttext
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from bench.common import REPO_ROOT, SHARED_DATA
from curation.langid import default_model_path
from curation.minhash import MinHasher

PAGES = int(os.environ.get("BENCH_PIPELINE_PAGES", "20000"))
CORES = int(os.environ.get("BENCH_PIPELINE_CORES", str(os.cpu_count() or 1)))
FILES = int(os.environ.get("BENCH_PIPELINE_FILES", str(4 * CORES)))
SOURCES = ["web-pages-00000.warc.gz", "web-pages-00001.warc.gz", "wget-academic-pages.warc.gz",
           "wget-org-pages.warc.gz", "CC-MAIN-2020-34-excerpt.warc.gz"]


def real_pages() -> list[tuple[str, bytes]]:
    """(url, HTML body) of every HTML response in the real WARC files."""
    pages = []
    for name in SOURCES:
        with open(SHARED_DATA / "warc" / name, "rb") as stream:
            for record in ArchiveIterator(stream):
                if record.rec_type != "response" or not record.http_headers:
                    continue
                if "html" not in (record.http_headers.get_header("Content-Type") or ""):
                    continue
                pages.append((record.rec_headers.get_header("WARC-Target-URI"), record.content_stream().read()))
    return pages


def edited(html: bytes, copy: int, rng: random.Random) -> bytes:
    """A near-duplicate: one word of the page changed and a short paragraph added before </body>."""
    words = html.split(b" ")
    if len(words) > 10:
        i = rng.randrange(len(words) // 2, len(words))
        words[i] = words[i] + b"s"
    html = b" ".join(words)
    note = f"<p>Copy {copy} of this page, kept for the benchmark of the curation pipeline.</p>".encode()
    at = html.rfind(b"</body>")
    return html[:at] + note + html[at:] if at >= 0 else html + note


def write_warcs(pages: list[tuple[str, bytes]], out: Path) -> list[str]:
    rng = random.Random(0)
    paths = [out / f"bench-{k:03d}.warc.gz" for k in range(FILES)]
    streams = [open(p, "wb") for p in paths]
    writers = [WARCWriter(s, gzip=True) for s in streams]
    for n in range(PAGES):
        url, html = pages[n % len(pages)]
        body = edited(html, n, rng) if n >= len(pages) else html
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        record = writers[n % FILES].create_warc_record(f"{url}{'&' if '?' in url else '?'}copy={n}", "response",
                                                       payload=BytesIO(body), http_headers=headers)
        writers[n % FILES].write_record(record)
    for s in streams:
        s.close()
    return [str(p) for p in paths]


def bare_loop(paths: list[str]) -> int:
    """The same work in one process, with the libraries called directly."""
    model = fasttext.load_model(str(default_model_path()))
    hasher = MinHasher()
    pages, texts = 0, []
    for path in paths:
        with open(path, "rb") as stream:
            for record in ArchiveIterator(stream):
                if record.rec_type != "response":
                    continue
                html = record.content_stream().read()
                tree = HTMLTree.parse(bytes_to_str(html, detect_encoding(html, from_html_meta=True), errors="replace"))
                text = extract_plain_text(tree, preserve_formatting=True, main_content=True, list_bullets=False,
                                          alt_texts=False)
                text = "\n".join(line for line in (part.strip() for part in text.split("\n")) if line)
                pages += 1
                if len(text) >= 300:
                    texts.append(text)
                if len(texts) == 1000:
                    model.predict([t.replace("\n", " ") for t in texts], k=1)
                    hasher.signatures(texts)
                    texts.clear()
    if texts:
        model.predict([t.replace("\n", " ") for t in texts], k=1)
        hasher.signatures(texts)
    return pages


def main() -> None:
    pages = real_pages()
    print(f"{len(pages)} real HTML pages → {PAGES} WARC pages in {FILES} files; local[{CORES}]; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_warcs(pages, Path(tmp))
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "jobs.curate", "--output", str(Path(tmp) / "run"),
                              "--master", f"local[{CORES}]", "--input", *paths],
                             cwd=REPO_ROOT, capture_output=True, text=True)
        curate_seconds = time.perf_counter() - started
        if run.returncode != 0:
            raise SystemExit(f"jobs.curate failed ({run.returncode}):\n{run.stderr[-3000:]}")
        print(run.stdout.strip().split("\n\n")[-1])
        started = time.perf_counter()
        bare_pages = bare_loop(paths)
        bare_seconds = time.perf_counter() - started
    assert bare_pages == PAGES, (bare_pages, PAGES)
    ours = PAGES / curate_seconds / CORES
    bare = PAGES / bare_seconds
    print(f"make curate (jobs.curate, local[{CORES}], start-up included): {ours:.1f} pages/s per core "
          f"({PAGES} pages in {curate_seconds:.1f} s)")
    print(f"bare loop (warcio + resiliparse + fastText + MinHash signatures, 1 process): {bare:.1f} pages/s "
          f"({bare_seconds:.1f} s)")
    print(f"ratio per core: {ours / bare:.2f} (target ≥ 0.6)")


if __name__ == "__main__":
    main()
