"""Shard-job throughput: `jobs.shards` (Spark local[*]: list row groups, read Parquet, encode, write
parts, assemble shards) vs a bare multithreaded `sp.encode` over the same texts already in memory, in
tokens/s. The bare call returns numpy arrays, SentencePiece's fastest batch output (lists of Python
ints take about twice as long, and more memory than a large input leaves).

Input: the shared en/ja/zh texts cut into documents as in the tests (1,521 documents, 1.2 M
characters), repeated BENCH_REPEAT times (default 200, ≈ 243 M characters) into curated-style
Parquet, files of ten repeats (a few MB of text, one row group each, like small Spark output files).
The tokenizer (BPE, 8,000 pieces) is trained on one copy first. The Spark session is started before
timing; each job run writes a fresh output directory, so nothing is skipped. Best of BENCH_RUNS
(default 2) for each side, alternated."""

import os
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sentencepiece as spm

from bench.common import SHARED_DATA, report, timed
from bench.corpus import real_documents
from jobs import shards as shard_job
from jobs.spark import spark_session
from tokenizer import train

REPEAT = int(os.environ.get("BENCH_REPEAT", "200"))
RUNS = int(os.environ.get("BENCH_RUNS", "2"))
REPEATS_PER_FILE = 10  # en 2.7 MB, ja 11 MB, zh 16 MB of text a file


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    try:
        docs = real_documents(SHARED_DATA)
        one_copy = [d for lang_docs in docs.values() for d in lang_docs]
        curated = work / "curated"
        for lang, texts in docs.items():  # files of REPEATS_PER_FILE copies, one row group each
            (curated / f"language={lang}").mkdir(parents=True)
            for r in range(0, REPEAT, REPEATS_PER_FILE):
                pq.write_table(pa.table({"raw_content": texts * min(REPEATS_PER_FILE, REPEAT - r)}),
                               curated / f"language={lang}" / f"part-{r}.parquet", compression="zstd")
        texts = one_copy * REPEAT
        # Trained on one copy: the sample keeps or drops all copies of a document together.
        single = work / "single.parquet"
        pq.write_table(pa.table({"raw_content": one_copy}), single)
        train.train(single, work / "tokenizer", vocab_size=8000, character_coverage=0.995)
        model = str(work / "tokenizer" / "tokenizer.model")
        sp = spm.SentencePieceProcessor(model_file=model)
        threads = os.cpu_count() or 1
        tokens = sum(map(len, sp.encode(texts, add_bos=True, add_eos=True, num_threads=threads, out_type="numpy")))

        spark = spark_session("bench-tokenize", log_file=work / "spark.log",
                              conf={"spark.ui.showConsoleProgress": "false"})
        runs, stats = iter(range(100)), []

        def job():
            out = work / f"shards-{next(runs)}"
            stats.append(shard_job.run(spark, str(curated), work / "tokenizer", out, shard_tokens=20_000_000))
            assert sum(s["num_tokens"] for s in stats[-1]["splits"].values()) == tokens
            shutil.rmtree(out)

        def bare():
            sp.encode(texts, add_bos=True, add_eos=True, num_threads=threads, out_type="numpy")

        ours, raw = float("inf"), float("inf")
        try:
            for _ in range(RUNS):  # alternated, so that both sides meet the same neighbours
                ours = min(ours, timed(job, repeat=1))
                raw = min(raw, timed(bare, repeat=1))
        finally:
            spark.stop()
        print(f"{len(texts)} documents, {sum(map(len, texts)):,} characters, {len(stats[-1]['shards'])} shards, "
              f"{threads} cores; job steps (s): {stats[-1]['timings']}")
        report("shard job (Spark)", tokens, "tokens", ours, raw, f"bare sp.encode ({threads} threads, numpy output)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
