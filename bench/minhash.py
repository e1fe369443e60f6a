"""MinHash signatures/s: ours (curation.minhash.MinHasher, vectorised over a batch) vs datasketch's
fastest path (`MinHash.update_batch` per document), with shingling excluded and included, the same
signatures asserted; then the dedup job's documents/s end to end on local Spark.

    .venv/bin/python -m bench.minhash [--docs N] [--spark-docs N] [--no-spark]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from datasketch import MinHash

from bench.common import SHARED_DATA, report
from bench.common import timed as timed_best
from bench.corpus import make_corpus, real_texts
from curation.minhash import MinHashDedupStage, MinHasher, shingle_bytes, shingles


def datasketch_signatures(shingled: list[list[bytes]], num_perm: int = 128) -> np.ndarray:
    out = np.empty((len(shingled), num_perm), dtype=np.uint32)
    for i, items in enumerate(shingled):
        m = MinHash(num_perm=num_perm)
        m.update_batch(items)
        out[i] = m.hashvalues
    return out


def datasketch_from_text(texts: list[str], num_perm: int = 128) -> np.ndarray:
    return datasketch_signatures([[s.encode("utf-8") for s in shingles(t)] for t in texts], num_perm)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--spark-docs", type=int, default=2000)
    parser.add_argument("--no-spark", action="store_true")
    args = parser.parse_args()

    texts = real_texts(SHARED_DATA, min_words=50)
    texts = (texts * (args.docs // len(texts) + 1))[: args.docs]
    shingled = [[s.encode("utf-8") for s in shingles(t)] for t in texts]
    n_shingles = sum(map(len, shingled))
    print(f"{len(texts)} real documents, {n_shingles} distinct 5-word shingles, 128 permutations")

    hasher = MinHasher()
    ours = hasher.signatures_from_shingles(shingled)
    assert np.array_equal(ours, datasketch_signatures(shingled)), "signatures differ from datasketch"
    assert np.array_equal(hasher.signatures(texts), ours)

    print("(best of 5, process CPU time)")
    timed = partial(timed_best, repeat=5, clock=time.process_time)  # the Spark figures below are wall time
    t_ours = timed(hasher.signatures_from_shingles, shingled)
    t_ds = timed(datasketch_signatures, shingled)
    report("signatures, shingling excluded: ours", len(texts), "docs", t_ours, t_ds, "datasketch update_batch")
    t_shingle = timed(lambda: [shingle_bytes(t) for t in texts])
    report("shingling alone (normalize + 5-grams + encode)", len(texts), "docs", t_shingle)
    t_ours_text = timed(hasher.signatures, texts)
    t_ds_text = timed(datasketch_from_text, texts)
    report("signatures, shingling included: ours", len(texts), "docs", t_ours_text, t_ds_text,
           "datasketch update_batch")
    print(f"shingling share of our end-to-end time: {t_shingle / t_ours_text:.0%}")

    if args.no_spark:
        return
    from jobs.dedup import line_dedup, minhash_dedup
    from jobs.spark import spark_session

    corpus = make_corpus(SHARED_DATA, originals=max(1, args.spark_docs // 8), seed=1)
    docs = [{"url": d["url"], "raw_content": d["raw_content"]} for d in corpus]
    with tempfile.TemporaryDirectory() as tmp:
        spark = spark_session("bench-dedup", master="local[2]", log_file=Path(tmp) / "spark.log",
                              conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                                    "spark.sql.shuffle.partitions": "4"})
        df = spark.createDataFrame(docs).repartition(4).persist()
        df.count()
        started = time.perf_counter()
        kept, stats = minhash_dedup(df)
        kept.count()
        t_minhash = time.perf_counter() - started
        report(f"Spark minhash_dedup end to end (local[2], {stats['cc_iterations']} CC iterations, "
               f"{stats['out']} kept)", len(docs), "docs", t_minhash)
        started = time.perf_counter()
        kept, stats = line_dedup(df)
        kept.count()
        report(f"Spark line_dedup end to end (local[2], {stats['lines_removed']} lines removed)", len(docs), "docs",
               time.perf_counter() - started)
        started = time.perf_counter()
        list(MinHashDedupStage()(docs))
        report("single-process MinHashDedupStage (reference)", len(docs), "docs", time.perf_counter() - started)
        spark.stop()


if __name__ == "__main__":
    main()
