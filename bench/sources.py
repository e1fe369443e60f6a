"""Each source job's documents/s per core against a bare single-process loop of the same library calls
(the source's reader and stages, then its run-wide steps' keys and decisions, nothing written) on the
same inputs, in one run:

    python -m bench.sources [--source NAME…] [--cores N] [--scale K] [--archive]

The job runs as users run it (`python -m jobs.sources.NAME`, local[N]), timed from its start to its
exit: Spark's start-up, the run-wide steps, the Parquet, the report included. Ratio = (job's
documents/s / N) / (loop's documents/s); the goal is ≥ 0.5. On a machine that others share, wall time
per core says as much about their load as about the job: the CPU seconds of the job's processes
(sampled) against the loop's say what the job costs.

Every source by default, each input built from the real files of ../shared/data, made bigger where
they are too small to time, each copy made distinct so that the run-wide steps drop no more than on
the real files:
- stackexchange: 4·K sites, each beer's and coffee's rows K times over with new ids and a copy number
  in each title, as Posts.xml files (or, with --archive, .7z archives);
- books: 8·K copies of the three Project Gutenberg books (both releases of The Devil's Dictionary and
  Botchan), each copy's body (not its header or footer) in letters permuted by a seeded permutation
  of its own: new words, the same lengths, and each copy's two releases still a near-duplicate pair
  (one dropped per copy); .txt files (or, with --archive, .zip archives as Project Gutenberg ships);
- arxiv: 4·K bulk tars (`arXiv_src_2401_NNN.tar`) of 40 papers each, copies of emcee (a gzipped .tex)
  and celerite (a gzipped tar of its folder), each with a sentence of its own after its first section.
- github: 8·K copies of each of the four repository archives (.tar.gz as GitHub serves them), each file
  but the licence files with a line `copy N` of its own at its end (no file an exact duplicate of another
  copy's);
- wikipedia: 4·K dumps (`enwiki-benchNNN-pages-articles.xml`, or .xml.bz2 with --archive), each the 71
  shared wikitext articles as pages of their own (new ids, titles prefixed by their page id), in the
  siteinfo of the shared enwiki sample.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import os
import random
import re
import string
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import Counter
from copy import copy as shallow_copy
from pathlib import Path
from xml.sax.saxutils import escape

import psutil

from bench.common import REPO_ROOT, SHARED_DATA
from curation.archives import decode_text
from curation.pipeline import run_stages
from curation.repositories import is_licence_member
from curation.sources import RunWideStep, books, load

ID_ATTRIBUTES = re.compile(rb' (Id|ParentId|AcceptedAnswerId)="(\d+)"')
TITLE = re.compile(rb' Title="')
ID_STEP = 1_000_000  # ids of copy k: the real ids + k · ID_STEP
POLL_SECONDS = 0.1


def renumbered(rows: list[bytes], k: int) -> list[bytes]:
    """Copy k of the rows: ids moved by k · ID_STEP, titles prefixed by `(k) `."""
    def move(match: re.Match) -> bytes:
        return b' %s="%d"' % (match[1], int(match[2]) + k * ID_STEP)

    return [TITLE.sub(b' Title="(%d) ' % k, ID_ATTRIBUTES.sub(move, row), 1) for row in rows]


def stackexchange_inputs(folder: Path, scale: int, archive: bool) -> list[str]:
    """4·scale sites of `scale` copies each of beer's and coffee's rows, renumbered and retitled."""
    rows = []
    for site in ("beer.stackexchange.com", "coffee.stackexchange.com"):
        text = (SHARED_DATA / "stackexchange" / site / "Posts.xml").read_bytes()
        rows += [line for line in text.splitlines() if line.lstrip().startswith(b"<row ")]
    folder.mkdir(parents=True)
    inputs = []
    for number in range(4 * scale):
        body = []
        for copy in range(scale):
            body += renumbered(rows, number * scale + copy + 1)
        xml = b'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + b"\n".join(body) + b"\n</posts>\n"
        site = folder / f"site{number:02d}.stackexchange.com"
        if archive:
            import py7zr

            # LZMA2 as the dump's archives, at preset 1: they unpack as fast as its own, and pack 10× faster
            with py7zr.SevenZipFile(f"{site}.7z", "w", filters=[{"id": py7zr.FILTER_LZMA2, "preset": 1}]) as packed:
                packed.writestr(xml, "Posts.xml")
            inputs.append(f"{site}.7z")
        else:
            site.mkdir()
            (site / "Posts.xml").write_bytes(xml)
            inputs.append(str(site / "Posts.xml"))
    return inputs


BOOKS = [SHARED_DATA / "books" / "pg972-devils-dictionary.txt", SHARED_DATA / "books" /
         "pg972-devils-dictionary-1997-dvldc10.txt", SHARED_DATA / "text" / "botchan.en.txt"]


def books_inputs(folder: Path, scale: int, archive: bool) -> list[str]:
    """8·scale copies of each book, copy k's body in the letters of permutation k."""
    folder.mkdir(parents=True)
    inputs = []
    for number in range(1, 8 * scale + 1):
        letters = list(string.ascii_lowercase)
        random.Random(number).shuffle(letters)
        table = str.maketrans(string.ascii_letters, "".join(letters) + "".join(letters).upper())
        for path in BOOKS:
            text = decode_text(path.read_bytes())
            start, end = books.body_bounds(text)
            data = (text[:start] + text[start:end].translate(table) + text[end:]).encode()
            name = f"{path.stem}-copy{number:03d}"
            if archive:
                inputs.append(str(folder / f"{name}.zip"))
                with zipfile.ZipFile(inputs[-1], "w", zipfile.ZIP_DEFLATED) as packed:
                    packed.writestr(f"{name}.txt", data)
            else:
                inputs.append(str(folder / f"{name}.txt"))
                Path(inputs[-1]).write_bytes(data)
    return inputs


def tar_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def arxiv_inputs(folder: Path, scale: int, archive: bool, papers_per_tar: int = 40) -> list[str]:
    """4·scale bulk tars of copies of emcee and celerite, each copy with a sentence of its own."""
    celerite = SHARED_DATA / "arxiv" / "celerite"
    files = {str(p.relative_to(celerite)): p.read_bytes() for p in sorted(celerite.rglob("*")) if p.is_file()}
    emcee = (SHARED_DATA / "arxiv" / "emcee" / "ms.tex").read_bytes()

    def distinct(tex: bytes, number: int) -> bytes:
        return tex.replace(b"\\section{Introduction}", b"\\section{Introduction}\nThis is copy %d.\n" % number, 1)

    folder.mkdir(parents=True)
    inputs = []
    for tar in range(4 * scale):
        members = {}
        for k in range(papers_per_tar):
            number = tar * papers_per_tar + k
            paper = (distinct(emcee, number) if k % 2 else
                     tar_bytes({**files, "ms.tex": distinct(files["ms.tex"], number)}))
            members[f"2401/2401.{number:05d}.gz"] = gzip.compress(paper, compresslevel=6)
        (folder / f"arXiv_src_2401_{tar:03d}.tar").write_bytes(tar_bytes(members))
        inputs.append(str(folder / f"arXiv_src_2401_{tar:03d}.tar"))
    return inputs


def github_inputs(folder: Path, scale: int, archive: bool) -> list[str]:
    """8·scale copies of each repository archive, copy N's files (licence files aside) ending in `copy N`."""
    folder.mkdir(parents=True)
    inputs = []
    for path in sorted((SHARED_DATA / "github").glob("*.tar.gz")):
        with tarfile.open(path) as tar:
            members = [(member, tar.extractfile(member).read() if member.isfile() else None) for member in tar]
        for number in range(1, 8 * scale + 1):
            inputs.append(str(folder / f"copy{number:03d}-{path.name}"))
            with tarfile.open(inputs[-1], "w:gz", compresslevel=6) as packed:
                for member, data in members:
                    if data is not None and not is_licence_member(member.name):
                        data, member = data + b"\ncopy %d\n" % number, shallow_copy(member)
                        member.size = len(data)
                    packed.addfile(member, io.BytesIO(data) if data is not None else None)
    return inputs


def wikipedia_inputs(folder: Path, scale: int, archive: bool) -> list[str]:
    """4·scale dumps of the shared wikitext articles, as pages with new ids and titles."""
    sample = bz2.decompress((SHARED_DATA / "wikipedia" / "en" / "enwiki-pages-articles-sample.xml.bz2").read_bytes())
    siteinfo = sample.decode()[:sample.decode().index("  <page>")]
    articles = [(p.stem, p.read_text(encoding="utf-8")) for p in sorted((SHARED_DATA / "wikipedia" / "wikitext")
                                                                         .glob("*.txt"))]
    folder.mkdir(parents=True)
    inputs = []
    for number in range(4 * scale):
        pages = []
        for page, (title, text) in enumerate(articles):
            page_id = number * 1000 + page + 1
            pages.append(f"  <page>\n    <title>({page_id}) {escape(title)}</title>\n    <ns>0</ns>\n    <id>{page_id}"
                         f"</id>\n    <revision>\n      <id>{page_id}</id>\n      <text xml:space=\"preserve\">"
                         f"{escape(text)}</text>\n    </revision>\n  </page>\n")
        xml = (siteinfo + "".join(pages) + "</mediawiki>\n").encode()
        inputs.append(str(folder / f"enwiki-bench{number:03d}-pages-articles.xml{'.bz2' if archive else ''}"))
        Path(inputs[-1]).write_bytes(bz2.compress(xml) if archive else xml)
    return inputs


BUILDERS = {"github": github_inputs, "wikipedia": wikipedia_inputs, "books": books_inputs, "arxiv": arxiv_inputs,
            "stackexchange": stackexchange_inputs}


def exact_duplicates(keys: list, step: RunWideStep) -> set[int]:
    """The positions of the keys an earlier one has (None: never a duplicate)."""
    seen, dropped = set(), set()
    for position, key in enumerate(keys):
        if key is not None and key in seen:
            dropped.add(position)
        seen.add(key)
    return dropped


def near_duplicate_books(keys: list, step: RunWideStep) -> set[int]:
    summaries = [books.from_key(key, f"{position:012d}") for position, key in enumerate(keys)]
    return {int(name) for name in books.near_duplicates(summaries, step.settings)}


LOCAL_KINDS = {"exact_duplicates": exact_duplicates, "near_duplicate_books": near_duplicate_books}


def bare_loop(name: str, inputs: list[str]) -> tuple[int, int, float, float]:
    """(documents the stages gave, documents kept by the run-wide steps, seconds, CPU seconds) of the
    source's reader, stages and run-wide steps (each step's keys, then its decision) over every input."""
    source = load(name)
    settings = source.settings()
    steps = source.run_wide(settings)
    started, cpu, documents = time.perf_counter(), time.process_time(), 0
    keys: dict[str, list] = {step.name: [] for step in steps}
    for location in inputs:
        for doc in run_stages(source.read(location, settings, Counter()), source.stages(settings)):
            documents += 1
            for step in steps:
                keys[step.name].append(step.key(doc))
    alive = list(range(documents))
    for step in steps:
        dropped = LOCAL_KINDS[step.kind]([keys[step.name][i] for i in alive], step)
        alive = [i for position, i in enumerate(alive) if position not in dropped]
    return documents, len(alive), time.perf_counter() - started, time.process_time() - cpu


def job(name: str, inputs: list[str], output: Path, cores: int) -> tuple[int, int, float, float, dict]:
    """(documents the stages gave, documents out, seconds from start to exit, CPU seconds of all its
    processes, stats) of `python -m jobs.sources.NAME`. Its processes (the JVM, Python workers, their
    forked children) are sampled every POLL_SECONDS, their last instant missed: RUSAGE_CHILDREN, even as
    their subreaper (bench.pipeline), gets the JVM's and not the Python workers', which the JVM's daemon
    never waits for."""
    started, cpu = time.perf_counter(), {}
    command = [sys.executable, "-m", f"jobs.sources.{name}", "--input", *inputs, "--output", str(output),
               f"master=local[{cores}]"]
    log = output.with_suffix(".log")  # Spark's console: shown only when the job fails
    with log.open("w") as console, subprocess.Popen(command, cwd=REPO_ROOT, stdout=console,
                                                    stderr=subprocess.STDOUT) as running:
        root = psutil.Process(running.pid)
        while running.poll() is None:
            for process in [root, *root.children(recursive=True)]:
                try:
                    times = process.cpu_times()
                    cpu[process.pid] = times.user + times.system
                except psutil.Error:
                    pass
            time.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - started
    if running.returncode:
        raise SystemExit(f"the {name} job failed ({running.returncode}):\n{log.read_text()[-3000:]}")
    stats = json.loads((output / "stats.json").read_text())
    source = load(name)
    run_wide = {step.name for step in source.run_wide(source.settings())}
    staged = [stage for stage_name, stage in stats["stages"].items() if stage_name not in run_wide][-1]["out"]
    return staged, stats["documents_out"], seconds, sum(cpu.values()), stats


def measure(name: str, work: Path, cores: int, scale: int, archive: bool) -> float:
    """Builds the source's inputs, runs the loop then the job on them, prints both; returns the ratio."""
    inputs = BUILDERS[name](work / name / "in", scale, archive)
    size = sum(Path(location).stat().st_size for location in inputs)
    print(f"{name}: {len(inputs)} inputs, {size / 2**20:.1f} MiB; job on local[{cores}]")
    bare_documents, bare_out, bare_seconds, bare_cpu = bare_loop(name, inputs)
    documents, out, seconds, cpu, stats = job(name, inputs, work / name / "run", cores)
    if (documents, out) != (bare_documents, bare_out):
        raise SystemExit(f"{name}: the job gave {documents} documents, kept {out}; the loop {bare_documents}, "
                         f"{bare_out}")
    bare_rate, job_rate = bare_documents / bare_seconds, documents / seconds
    ratio = job_rate / cores / bare_rate
    print(f"  bare loop (1 process): {bare_documents} documents ({bare_out} kept) in {bare_seconds:.1f} s = "
          f"{bare_rate:,.1f} documents/s ({bare_cpu:.1f} s of CPU)")
    print(f"  job (Spark start-up included): {documents} documents in {seconds:.1f} s = {job_rate:,.1f} documents/s, "
          f"{job_rate / cores:,.1f} per core ({stats['seconds']} s from session to stats; {cpu:.1f} s of CPU in all "
          "its processes)")
    print(f"  ratio per core = {ratio:.2f} (goal ≥ 0.5); documents per CPU second, job against loop = "
          f"{bare_cpu / cpu:.2f}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    return ratio


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", nargs="+", choices=list(BUILDERS), default=list(BUILDERS))
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scale", type=int, default=4, help="volume: the inputs' copies (see above)")
    parser.add_argument("--archive", action="store_true", help="inputs packed as their sources ship them")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-sources-") as work:
        ratios = {name: measure(name, Path(work), args.cores, args.scale, args.archive) for name in args.source}
    print("ratio per core, job against loop (goal ≥ 0.5): "
          + ", ".join(f"{name} {ratio:.2f}" for name, ratio in ratios.items()))


if __name__ == "__main__":
    main()
