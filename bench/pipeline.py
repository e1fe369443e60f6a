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

    .venv/bin/python -m bench.pipeline --before /tmp/before --repeat 2 line_dedup.enabled=false

`--before DIR` (an export of an older commit: `git archive REV | tar -x -C DIR`) runs that checkout's
`jobs.curate` on the same files too, alternating with ours (the same load for both); KEY=VALUE
arguments go to both runs. Each run's line: wall time, pages/s per core, the CPU of its process tree
(user + sys of the driver, the JVM, the Python workers and their children) and where it went (each
stage's seconds summed over tasks, from stats.json; MinHash's share of the CPU). The peer corpus of
issue 32 is `BENCH_PIPELINE_PAGES=27360 BENCH_PIPELINE_FILES=12` (180 copies of each of the 152 pages).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path

import fasttext
import psutil
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding
from resiliparse.parse.html import HTMLTree
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from bench.common import REPO_ROOT, SHARED_DATA
from curation.langid import default_model_path
from curation.minhash import MinHasher
from jobs.spark import DEVICES

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


def become_subreaper() -> None:
    """This process adopts its descendants whose parent ends first (prctl PR_SET_CHILD_SUBREAPER): a
    curate run's JVM and Python workers outlive its driver by a moment, and stay ours to measure."""
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)


class TreeCPU:
    """The CPU seconds (user + sys) of every descendant of this process, sampled every 0.2 s while the
    block runs and until the last descendant has ended: each process counted once, as last seen (a
    process shorter than a sample is missed; phase 1's children and Spark's workers live for seconds)."""

    def __enter__(self) -> TreeCPU:
        self.seen: dict[tuple[int, float], float] = {}
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()
        return self

    def sample(self) -> None:
        while self.running or psutil.Process().children():
            for process in psutil.Process().children(recursive=True):
                try:
                    with process.oneshot():
                        times = process.cpu_times()
                        self.seen[(process.pid, process.create_time())] = times.user + times.system
                except psutil.NoSuchProcess:
                    continue
            for _ in range(10):  # reap what has ended (adopted processes are ours to wait for)
                try:
                    if os.waitpid(-1, os.WNOHANG) == (0, 0):
                        break
                except ChildProcessError:
                    break
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.seconds = sum(self.seen.values())


def run_curate(code: Path, paths: list[str], output: Path, settings: list[str], devices_off: str = "") -> dict:
    """`python -m jobs.curate` of the checkout at `code` on `paths` (`devices_off`: speed devices left
    off, CCURATE_DEVICES_OFF): its wall and CPU seconds and stats."""
    started = time.perf_counter()
    with TreeCPU() as cpu:
        run = subprocess.run([sys.executable, "-m", "jobs.curate", "--output", str(output), "--master",
                              f"local[{CORES}]", *settings, "--input", *paths], cwd=code, capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=str(code), CCURATE_DEVICES_OFF=devices_off))
        wall = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"jobs.curate of {code} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    stats = json.loads((output / "stats.json").read_text())
    shutil.rmtree(output)
    return {"wall": wall, "cpu": cpu.seconds, "stats": stats}


def describe(name: str, result: dict) -> str:
    """A run's line. A stage's seconds are stats.json's: a row-wise stage's summed over its tasks, MinHash's
    its signatures' (summed over tasks) plus its clustering's (the wall time of its Spark jobs); its
    share is of the run's core-seconds (wall × cores), as issue 32 counted it."""
    stages = {stage: values["seconds"] for stage, values in result["stats"]["stages"].items() if values.get("seconds")}
    minhash = result["stats"]["stages"].get("minhash", {})
    spent = ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in stages.items())
    signatures = minhash.get("signature_seconds", 0)  # `***` in an older checkout's stats.json (its redaction)
    share = "" if not minhash.get("seconds") else (
        f"; MinHash {minhash['seconds']:.1f} s (signatures "
        f"{f'{signatures:.1f}' if isinstance(signatures, float | int) else signatures}): "
        f"{minhash['seconds'] / (result['wall'] * CORES):.0%} of the core-seconds")
    return (f"{name:<7} {result['wall']:6.1f} s wall, {PAGES / result['wall'] / CORES:6.1f} pages/s per core, "
            f"CPU {result['cpu']:6.1f} s (stages' seconds: {spent}){share}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="an export of an older commit, run on the same files")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each checkout, alternating")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare single-process loop")
    parser.add_argument("--devices", action="store_true", help="ours with each speed device of jobs.spark off in "
                        "turn too (CCURATE_DEVICES_OFF), alternating: what each one is worth")
    parser.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="settings of both curate runs")
    args = parser.parse_args()
    become_subreaper()
    pages = real_pages()
    print(f"{len(pages)} real HTML pages → {PAGES} WARC pages in {FILES} files; local[{CORES}]; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; settings {args.settings}")
    runs = {"ours": (REPO_ROOT, ""), **({"before": (args.before.resolve(), "")} if args.before else {}),
            **({f"no-{device}": (REPO_ROOT, device) for device in DEVICES} if args.devices else {})}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_warcs(pages, Path(tmp))
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for name, (code, devices_off) in runs.items():
                result = run_curate(code, paths, Path(tmp) / "run", args.settings, devices_off)
                print(describe(name, result), flush=True)
                if name not in best or result["wall"] < best[name]["wall"]:
                    best[name] = result
        for device in DEVICES if args.devices else ():
            without, ours = best[f"no-{device}"]["wall"], best["ours"]["wall"]
            print(f"{device}: {without:.1f} s without, {ours:.1f} s with: {(without - ours) / without:+.1%} of the "
                  "wall time")
        if args.before:
            print(f"best wall: ours {best['ours']['wall']:.1f} s, before {best['before']['wall']:.1f} s "
                  f"(ours/before {best['ours']['wall'] / best['before']['wall']:.2f})")
        if args.no_bare:
            return
        started = time.perf_counter()
        bare_pages = bare_loop(paths)
        bare_seconds = time.perf_counter() - started
    assert bare_pages == PAGES, (bare_pages, PAGES)
    ours, bare = PAGES / best["ours"]["wall"] / CORES, PAGES / bare_seconds
    print(f"bare loop (warcio + resiliparse + fastText + MinHash signatures, 1 process): {bare:.1f} pages/s "
          f"({bare_seconds:.1f} s); ours {ours:.1f} pages/s per core: ratio {ours / bare:.2f} (target ≥ 0.6)")


if __name__ == "__main__":
    main()
