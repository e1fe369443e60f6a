"""Each source job's documents/s per core against a bare single-process loop of the same library calls
(the source's reader and stages, nothing written) on the same inputs, in one run:

    python -m bench.sources [--source stackexchange] [--cores N] [--scale K] [--archive]

The job runs as users run it (`python -m jobs.sources.NAME`, local[N]), timed from its start to its
exit: Spark's start-up, the run-wide steps, the Parquet, the report included. Ratio = (job's
documents/s / N) / (loop's documents/s); the goal is ≥ 0.5. On a machine that others share, wall time
per core says as much about their load as about the job: the CPU seconds of the job's processes
(sampled) against the loop's say what the job costs.

Stack Exchange's input is built from the real Posts.xml of beer and coffee (../shared/data): 4·K
sites, each the two files' rows K times over with new ids and a copy number in each title (so that no
document is an exact duplicate of another), as Posts.xml files (or, with --archive, .7z archives).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

from bench.common import REPO_ROOT, SHARED_DATA
from curation.pipeline import run_stages
from curation.sources import load

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


BUILDERS = {"stackexchange": stackexchange_inputs}


def bare_loop(name: str, inputs: list[str]) -> tuple[int, float, float]:
    """(documents, seconds, CPU seconds) of the source's reader and stages over every input, here."""
    source = load(name)
    settings = source.settings()
    started, cpu, documents = time.perf_counter(), time.process_time(), 0
    for location in inputs:
        for _ in run_stages(source.read(location, settings, Counter()), source.stages(settings)):
            documents += 1
    return documents, time.perf_counter() - started, time.process_time() - cpu


def job(name: str, inputs: list[str], output: Path, cores: int) -> tuple[int, float, float, dict]:
    """(documents the stages gave, seconds from start to exit, CPU seconds of all its processes, stats) of
    `python -m jobs.sources.NAME`. Its processes (the JVM, Python workers, their forked children) are
    sampled every POLL_SECONDS, their last instant missed: RUSAGE_CHILDREN, even as their subreaper
    (bench.pipeline), gets the JVM's and not the Python workers', which the JVM's daemon never waits for."""
    started, cpu = time.perf_counter(), {}
    command = [sys.executable, "-m", f"jobs.sources.{name}", "--input", *inputs, "--output", str(output),
               f"master=local[{cores}]"]
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL) as running:
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
        raise SystemExit(f"the job failed ({running.returncode})")
    stats = json.loads((output / "stats.json").read_text())
    last_stage = [stage for name, stage in stats["stages"].items() if name != "read"][-1]
    return last_stage["in"], seconds, sum(cpu.values()), stats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=sorted(BUILDERS), default="stackexchange")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scale", type=int, default=4, help="volume: 4·K inputs of K copies each")
    parser.add_argument("--archive", action="store_true", help="inputs packed as the dump ships them (.7z)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-sources-") as work:
        inputs = BUILDERS[args.source](Path(work) / "in", args.scale, args.archive)
        size = sum(Path(location).stat().st_size for location in inputs)
        print(f"{args.source}: {len(inputs)} inputs, {size / 2**20:.1f} MiB; job on local[{args.cores}]")
        bare_documents, bare_seconds, bare_cpu = bare_loop(args.source, inputs)
        documents, seconds, cpu, stats = job(args.source, inputs, Path(work) / "run", args.cores)
    assert documents == bare_documents, (documents, bare_documents)
    bare_rate, job_rate = bare_documents / bare_seconds, documents / seconds
    print(f"bare loop (1 process): {bare_documents} documents in {bare_seconds:.1f} s = {bare_rate:,.0f} documents/s "
          f"({bare_cpu:.1f} s of CPU)")
    print(f"job (Spark start-up included): {documents} documents in {seconds:.1f} s = {job_rate:,.0f} documents/s, "
          f"{job_rate / args.cores:,.0f} per core ({stats['seconds']} s from session to stats; {cpu:.1f} s of CPU "
          "in all its processes)")
    print(f"ratio per core = {job_rate / args.cores / bare_rate:.2f} (goal ≥ 0.5); documents per CPU second, job "
          f"against loop = {bare_cpu / cpu:.2f}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
