"""Phase 2 at growing N: docs/s per core of each stage and in total, and the Spark tasks per stage.

    .venv/bin/python -m bench.scale                     (N = 10k, 40k, 160k)
    BENCH_SCALE_N=2000,8000 BENCH_SCALE_CORES=2 .venv/bin/python -m bench.scale

Each corpus is made of real text from ../shared/data (CommonCrawl WET pages, WikiText-2 articles,
Botchan), recombined: an original is 3 to 6 paragraphs cut from random places of the real texts; a
known share (BENCH_SCALE_DUPS, default 0.2) of the documents are near-duplicates of an original (one
word of each paragraph replaced: Jaccard ≈ 0.9, no line in common, so line dedup keeps them and
MinHash removes them). The corpus is written as phase 1's Parquet
and `jobs.curate.selection.curate_groups` runs phase 2 on it in local mode (line dedup, the row-wise stages
whose models are present, MinHash), as `make curate` would. The single-process `MinHashDedupStage`
runs on the same documents as the reference for Spark's `minhash_dedup`.
Targets: total docs/s at the largest N ≥ at the one before; Spark MinHash ≥ 0.5× the single-process
rate per core at the largest N.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench.common import SHARED_DATA
from bench.corpus import real_texts
from curation.lsh import MinHashDedupStage
from curation.settings import load_settings
from jobs.curate import CurateSettings, model_stages
from jobs.curate.layout import ROW_GROUP_DOCS, RunDirectory
from jobs.curate.phase1 import segment_table
from jobs.curate.run import Run
from jobs.curate.selection import curate_groups
from jobs.curate.units import dedup_groups
from jobs.spark import spark_session

SIZES = [int(n) for n in os.environ.get("BENCH_SCALE_N", "10000,40000,160000").split(",")]
CORES = int(os.environ.get("BENCH_SCALE_CORES", str(os.cpu_count() or 1)))
DUP_SHARE = float(os.environ.get("BENCH_SCALE_DUPS", "0.2"))
FILE_DOCS = 5000  # documents per phase-1 file, as a segment would hold


def real_words() -> list[str]:
    """The words of every real text, in order."""
    return [w for text in real_texts(SHARED_DATA, min_words=50) for w in text.split()]


def corpus(n: int, words: list[str], seed: int = 0) -> list[dict]:
    """`n` phase-1 documents. An original is 3 to 6 paragraphs of 80–150 consecutive real words from
    random places (no two documents share a line, so line dedup keeps them); a near-duplicate (a share
    DUP_SHARE of the documents) is an original with one word of each paragraph replaced by a real
    word: its lines differ from the original's, its shingles barely (Jaccard ≈ 0.9)."""
    rng = random.Random(seed)
    docs: list[dict] = []
    originals = max(1, round(n * (1 - DUP_SHARE)))
    for i in range(n):
        if i < originals:
            lines = []
            for _ in range(rng.randint(3, 6)):
                size = rng.randint(80, 150)
                start = rng.randrange(len(words) - size)
                lines.append(" ".join(words[start:start + size]))
        else:
            lines = []
            for line in docs[rng.randrange(originals)]["raw_content"].split("\n"):
                line_words = line.split(" ")
                line_words[rng.randrange(len(line_words))] = rng.choice(words)
                lines.append(" ".join(line_words))
        text = "\n".join(lines)
        docs.append({"url": f"https://bench.example/{i}", "date_download": "2024-01-01T00:00:00Z",
                     "digest": None, "length": len(text), "nlines": len(lines),
                     "source_domain": "bench.example", "title": None, "raw_content": text,
                     "original_nlines": len(lines), "original_length": len(text), "cc_segment": "bench"})
    rng.shuffle(docs)
    return docs


def run_phase2(spark, docs: list[dict], work: Path) -> tuple[dict, float]:
    sources = [f"bench-segment-{k // FILE_DOCS:05d}" for k in range(0, len(docs), FILE_DOCS)]
    directory = RunDirectory(str(work))
    (work / "segments").mkdir()
    for source, k in zip(sources, range(0, len(docs), FILE_DOCS)):
        pq.write_table(segment_table(docs[k:k + FILE_DOCS], hashed=True),  # as phase 1 writes them
                       directory.segment_file(source), row_group_size=ROW_GROUP_DOCS, compression="zstd")
    settings = load_settings(CurateSettings)
    run = Run(spark, settings, directory, model_stages(settings), sources)
    started = time.perf_counter()
    stats = curate_groups(run, dedup_groups(sources, sources, settings.line_dedup.group_size))
    return stats, time.perf_counter() - started


def main() -> None:
    words = real_words()
    print(f"{len(words)} real words; near-duplicate share {DUP_SHARE}; local[{CORES}]; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        spark = spark_session("bench-scale", master=f"local[{CORES}]", log_file=Path(tmp) / "spark.log",
                              conf={"spark.ui.showConsoleProgress": "false"})
        spark.createDataFrame([(1,)], "x int").count()  # the JVM and the first job's start-up, once
        totals = {}
        for n in SIZES:
            docs = corpus(n, words)
            work = Path(tmp) / f"n{n}"
            work.mkdir()
            stats, seconds = run_phase2(spark, docs, work)
            totals[n] = n / seconds / CORES
            print(f"\nN = {n}: phase 2 in {seconds:.1f} s wall, {totals[n]:.1f} docs/s per core in total")
            for name, stage in stats["stages"].items():
                tasks = stats["tasks"].get(name) or stats["tasks"].get("annotate", {})
                # Spark stages report wall seconds (× cores); row-wise stages their summed task time.
                core_seconds = stage["seconds"] * (CORES if name in ("line_dedup", "minhash") else 1)
                print(f"  {name:<10} {stage['in']:>7} in {stage['out']:>7} out  {stage['in'] / core_seconds:>8.1f} "
                      f"docs/s per core  tasks {tasks.get('tasks')} (widest stage {tasks.get('widest_stage')})")
            print(f"  partitions: {stats['partitions']}")
            if "minhash" in stats["stages"]:
                mh = stats["stages"]["minhash"]
                started = time.perf_counter()
                kept = sum(1 for _ in MinHashDedupStage()(docs))
                local_rate = n / (time.perf_counter() - started)
                spark_rate = mh["in"] / (mh["seconds"] * CORES)
                print(f"  minhash: Spark {spark_rate:.1f} docs/s per core ({mh['cc_iterations']} CC rounds, "
                      f"{mh['out']} kept) vs single-process MinHashDedupStage {local_rate:.1f} docs/s "
                      f"({kept} kept of {n}); ratio {spark_rate / local_rate:.2f} (target ≥ 0.5)")
        spark.stop()
    if len(SIZES) > 1:
        a, b = SIZES[-2], SIZES[-1]
        print(f"\ntotal docs/s per core: N={a}: {totals[a]:.1f}, N={b}: {totals[b]:.1f}; "
              f"ratio {totals[b] / totals[a]:.2f} (target ≥ 1)")


if __name__ == "__main__":
    main()
