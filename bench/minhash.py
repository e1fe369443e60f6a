"""MinHash documents/s per core, from text to signatures, on the same documents in one run: our stage
(`curation.minhash.MinHasher.signatures`) with the `native` scheme and with the `datasketch` scheme,
datasketch's own loop (our shingles, `MinHash.update_batch` per document: bit-identical to the
`datasketch` scheme, asserted) and rensa's own loop (our shingles as strings,
`RMinHash.digest_matrix_from_token_sets`); then rensa's digest fed the native shingle hashes (the
candidate not chosen for the signatures); then both schemes' pairs and precision/recall on a
near-duplicate corpus over many permutation seeds; then the dedup job end to end on local Spark.

    .venv/bin/python -m bench.minhash [--docs N] [--quality-seeds N] [--spark-docs N] [--no-spark]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import rensa
from datasketch import MinHash

from bench.common import SHARED_DATA, report
from bench.common import timed as timed_best
from bench.corpus import cluster_pairs, make_corpus, real_texts, truth_pairs
from curation.lsh import MinHashDedupStage, local_clusters
from curation.minhash import (
    SCHEMES,
    MinHasher,
    MinHashSettings,
    native_shingle_hashes,
    shingle_bytes,
    shingles,
)

NUM_PERM, SEED = 128, 1


def datasketch_loop(texts: list[str]) -> np.ndarray:
    """datasketch as its documentation uses it: a MinHash per document, its shingles in one update_batch."""
    out = np.empty((len(texts), NUM_PERM), dtype=np.uint32)
    for i, text in enumerate(texts):
        m = MinHash(num_perm=NUM_PERM, seed=SEED)
        m.update_batch([s.encode("utf-8") for s in shingles(text)])
        out[i] = m.hashvalues
    return out


def rensa_loop(texts: list[str]) -> list[list[int]]:
    """rensa's batch API on the same shingles (strings; rensa hashes them in Rust)."""
    return rensa.RMinHash.digest_matrix_from_token_sets([list(shingles(t)) for t in texts], NUM_PERM, SEED).to_rows()


def rensa_on_native_hashes(texts: list[str]) -> np.ndarray:
    """The native scheme's shingle hashes, signed by rensa's R-MinHash instead of the permutations."""
    hashes, counts = native_shingle_hashes(texts)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.uint64)
    digests = rensa.RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, NUM_PERM, SEED)
    return np.array(digests.to_rows(), dtype=np.uint32)


def speed(texts: list[str]) -> None:
    """Documents/s per core (process CPU time, best of 5) of each way from text to signatures."""
    hashers = {scheme: MinHasher(NUM_PERM, SEED, scheme=scheme) for scheme in SCHEMES}
    assert np.array_equal(hashers["datasketch"].signatures(texts)[0], datasketch_loop(texts)), \
        "the datasketch scheme differs from datasketch"
    timed = partial(timed_best, repeat=5, clock=time.process_time)
    seconds = {name: timed(fn, texts) for name, fn in (
        ("native", hashers["native"].signatures), ("datasketch scheme", hashers["datasketch"].signatures),
        ("datasketch loop", datasketch_loop), ("rensa loop", rensa_loop),
        ("rensa on native hashes", rensa_on_native_hashes), ("native shingling", native_shingle_hashes),
        ("datasketch-scheme shingling", lambda ts: [shingle_bytes(t) for t in ts]))}
    print("documents/s per core, text to signatures (process CPU time, best of 5):")
    native = seconds["native"]
    report("our stage, native scheme", len(texts), "docs", native, seconds["datasketch scheme"],
           "our stage, datasketch scheme (before issue 32)")
    report("our stage, native scheme", len(texts), "docs", native, seconds["datasketch loop"],
           "datasketch's own loop (update_batch per document)")
    report("our stage, native scheme", len(texts), "docs", native, seconds["rensa loop"],
           "rensa's own loop (digest_matrix_from_token_sets)")
    report("not chosen: native shingle hashes + rensa's digest", len(texts), "docs", seconds["rensa on native hashes"],
           native, "our stage, native scheme")
    for scheme, shingling in (("native", "native shingling"), ("datasketch scheme", "datasketch-scheme shingling")):
        report(f"{shingling} alone (normalize + {5}-grams + hash/encode)", len(texts), "docs", seconds[shingling])
        print(f"  its share of the {scheme}'s time: {seconds[shingling] / seconds[scheme]:.0%}")


def quality(seeds: int, originals: int) -> None:
    """Both schemes' near-duplicate pairs on one corpus of known copies, pooled over `seeds` seeds."""
    corpus = make_corpus(SHARED_DATA, originals=originals, seed=1, dup_targets=(1.0, 0.97, 0.95, 0.92))
    texts, truth = [d["raw_content"] for d in corpus], truth_pairs(corpus, threshold=0.8)
    all_pairs = len(texts) * (len(texts) - 1) // 2
    found = {scheme: [cluster_pairs(local_clusters(texts, MinHashSettings(scheme=scheme, seed=seed)))
                      for seed in range(1, seeds + 1)] for scheme in SCHEMES}
    print(f"{len(texts)} documents ({originals} real originals and their variants), {len(truth)} true pairs "
          f"(exact Jaccard ≥ 0.8, connected), threshold 0.8, {seeds} permutation seeds pooled:")
    for scheme, per_seed in found.items():
        true_found = sum(len(pairs & truth) for pairs in per_seed)
        print(f"  {scheme}: precision {true_found / sum(map(len, per_seed)):.4f}, "
              f"recall {true_found / (len(truth) * seeds):.4f}")
    pairs = list(zip(found["native"], found["datasketch"]))
    print(f"  pairs decided alike, of all {all_pairs}: worst seed "
          f"{min(1 - len(a ^ b) / all_pairs for a, b in pairs):.4%}; shared / either scheme's pairs: mean "
          f"{np.mean([len(a & b) / len(a | b) for a, b in pairs]):.3f} (datasketch with itself, next seed: "
          f"{np.mean([len(a & b) / len(a | b) for a, b in zip(found['datasketch'], found['datasketch'][1:])]):.3f})")


def spark_figures(spark_docs: int) -> None:
    from jobs.dedup import line_dedup
    from jobs.minhash import minhash_dedup
    from jobs.spark import spark_session

    corpus = make_corpus(SHARED_DATA, originals=max(1, spark_docs // 8), seed=1)
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
        report(f"Spark minhash_dedup end to end (local[2], {stats['scheme']} scheme, {stats['cc_iterations']} CC "
               f"iterations, {stats['out']} kept)", len(docs), "docs", time.perf_counter() - started)
        started = time.perf_counter()
        kept, stats = line_dedup(df)
        kept.count()
        report(f"Spark line_dedup end to end (local[2], {stats['lines_removed']} lines removed)", len(docs), "docs",
               time.perf_counter() - started)
        started = time.perf_counter()
        list(MinHashDedupStage()(docs))
        report("single-process MinHashDedupStage (reference)", len(docs), "docs", time.perf_counter() - started)
        spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--quality-seeds", type=int, default=30, help="0: no quality figures")
    parser.add_argument("--quality-originals", type=int, default=150)
    parser.add_argument("--spark-docs", type=int, default=2000)
    parser.add_argument("--no-spark", action="store_true")
    args = parser.parse_args()

    texts = real_texts(SHARED_DATA, min_words=50)
    texts = (texts * (args.docs // len(texts) + 1))[: args.docs]
    print(f"{len(texts)} real documents (WET pages, WikiText-2, Botchan; repeated), "
          f"{sum(len(shingles(t)) for t in texts)} distinct 5-word shingles, {NUM_PERM} permutations")
    speed(texts)
    if args.quality_seeds:
        quality(args.quality_seeds, args.quality_originals)
    if not args.no_spark:
        spark_figures(args.spark_docs)


if __name__ == "__main__":
    main()
