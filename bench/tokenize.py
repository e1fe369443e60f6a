"""Shard-job throughput: `jobs.tokenize` (Spark local[*], read Parquet → encode → shuffle → sort →
write shards) vs a bare multithreaded `sp.encode` over the same texts in memory, in tokens/s.

Input: the shared en/ja/zh texts cut into documents as in the tests (1,521 documents, 1.2 M
characters), repeated REPEAT times into curated-style Parquet. The tokenizer is trained on them
first (BPE, 8,000 pieces). The Spark session is started before timing; each job run writes a fresh
output directory, so nothing is skipped."""

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where this file would shadow the
# standard library's `tokenize` (which pyarrow imports): put the repository there instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import sentencepiece as spm  # noqa: E402

from bench.common import SHARED_DATA, report, timed  # noqa: E402
from jobs import tokenize  # noqa: E402
from jobs.spark import spark_session  # noqa: E402
from tests.test_tokenizer import real_documents  # noqa: E402
from tokenizer import train  # noqa: E402

REPEAT = int(os.environ.get("BENCH_REPEAT", "10"))


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    try:
        docs = real_documents(SHARED_DATA)
        curated = work / "curated"
        for lang, texts in docs.items():
            (curated / f"language={lang}").mkdir(parents=True)
            for r in range(REPEAT):
                pq.write_table(pa.table({"raw_content": texts}), curated / f"language={lang}" / f"part-{r}.parquet",
                               compression="zstd")
        texts = [d for lang_docs in docs.values() for d in lang_docs] * REPEAT
        train.train(curated, work / "tokenizer", vocab_size=8000, max_chars=2_000_000, character_coverage=0.995)
        model = str(work / "tokenizer" / "tokenizer.model")
        sp = spm.SentencePieceProcessor(model_file=model)
        threads = os.cpu_count() or 1
        tokens = sum(map(len, sp.encode(texts, add_bos=True, add_eos=True, num_threads=threads)))

        spark = spark_session("bench-tokenize", log_file=work / "spark.log",
                              conf={"spark.ui.showConsoleProgress": "false"})
        runs = iter(range(100))

        def job():
            stats = tokenize.run(spark, str(curated), work / "tokenizer", work / f"shards-{next(runs)}",
                                 shard_tokens=2_000_000)
            assert sum(s["num_tokens"] for s in stats["splits"].values()) == tokens

        try:
            ours = timed(job, repeat=2)
        finally:
            spark.stop()
        raw = timed(lambda: sp.encode(texts, add_bos=True, add_eos=True, num_threads=threads), repeat=2)
        print(f"{len(texts)} documents, {sum(map(len, texts)):,} characters, {threads} cores")
        report("shard job (Spark)", tokens, "tokens", ours, raw, f"bare sp.encode ({threads} threads)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
