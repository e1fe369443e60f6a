"""Dedup on Spark: CCNet line dedup and MinHash near-duplicate removal, over the whole input.

    python -m jobs.dedup --input DIR --output DIR [--steps lines,minhash] [--threshold 0.8] …
    spark-submit jobs/dedup.py --input DIR --output DIR …

Reads any Parquet with `url` and `raw_content`, writes the kept documents as Parquet (zstd) in
DIR and the counts in DIR/stats.json. `jobs.curate` calls `line_dedup` and `minhash_dedup` on its
DataFrame directly.

Line dedup: line hashes (curation.dedup_lines) per document → count of documents per (scope, hash)
with a shuffle → the duplicated hashes joined back to the documents that hold them → each document
rewritten in a Python task. No set of hashes ever lives on the driver or in one task.

MinHash: signatures and band keys per partition (curation.minhash, vectorised numpy) → shuffle on
(band, key) → each bucket's members linked to its smallest document id → connected components by
alternating large-star / small-star (Kiveris et al. 2014) on DataFrames until every component is a
star around its smallest id → one document kept per component (lowest perplexity if chosen, then
url, content), each keeping `minhash_cluster` (the component id) and `minhash_cluster_size`.

Document identity: `_doc_id` = xxhash64(url, raw_content) unless the DataFrame already has one;
rows with the same url and content are the same document.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # `spark-submit jobs/dedup.py` runs this file as a script: before any
    # other import, put the repository root on the path instead of jobs/ (its tokenize.py would
    # shadow the standard library's).
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from curation.dedup_lines import MIN_LENGTH, dedup_document, distinct_hashes
from curation.minhash import MAX_CHARS, MinHasher, MinHashParams, band_keys, shingle_bytes

log = logging.getLogger("dedup")

ID = "_doc_id"


def with_doc_id(df: DataFrame) -> DataFrame:
    if ID in df.columns:
        return df
    return df.withColumn(ID, F.xxhash64(F.col("url"), F.col("raw_content")))


# ---------------------------------------------------------------------------------------------
# Line dedup


def _line_hashes_fn(scope_cols: list[str]):
    def fn(batches):
        for batch in batches:
            ids = batch.column(ID).to_pylist()
            texts = batch.column("raw_content").to_pylist()
            scopes = [batch.column(c).to_pylist() for c in scope_cols]
            out_ids, out_hashes, out_scopes = [], [], [[] for _ in scope_cols]
            for row, (doc_id, text) in enumerate(zip(ids, texts)):
                hashes = distinct_hashes(text or "")
                out_ids.extend([doc_id] * len(hashes))
                out_hashes.extend(hashes)
                for k, column in enumerate(scopes):
                    out_scopes[k].extend([column[row]] * len(hashes))
            arrays = [pa.array(out_ids, pa.int64()), pa.array(out_hashes, pa.int64())]
            arrays += [pa.array(values, type=batch.schema.field(c).type) for c, values in zip(scope_cols, out_scopes)]
            yield pa.RecordBatch.from_arrays(arrays, names=[ID, "_hash", *scope_cols])
    return fn


def _apply_lines_fn(min_length: int, out_names: list[str]):
    def fn(batches):
        for batch in batches:
            cols = {name: batch.column(name) for name in batch.schema.names}
            texts = cols["raw_content"].to_pylist()
            dups = cols["_dups"].to_pylist()
            short = cols["_short"].to_pylist()
            orig_len = cols["original_length"].to_pylist()
            orig_nl = cols["original_nlines"].to_pylist()
            new_text, length, nlines, removed, reason = [], [], [], [], []
            for i, text in enumerate(texts):
                text = text or ""
                if orig_len[i] is None:
                    orig_len[i] = len(text)
                if orig_nl[i] is None:
                    orig_nl[i] = len(text.split("\n"))
                if short[i]:
                    new_text.append(text), length.append(len(text)), nlines.append(len(text.split("\n")))
                    removed.append(0), reason.append("too_short")
                    continue
                t, n, r = dedup_document(text, set(dups[i] or ()))
                new_text.append(t), length.append(len(t)), nlines.append(n), removed.append(r)
                reason.append("empty" if not t.strip() else "too_short" if len(t) < min_length else None)
            cols.update(raw_content=pa.array(new_text, cols["raw_content"].type),
                        length=pa.array(length, pa.int64()), nlines=pa.array(nlines, pa.int64()),
                        original_length=pa.array(orig_len, pa.int64()),
                        original_nlines=pa.array(orig_nl, pa.int64()),
                        _lines_removed=pa.array(removed, pa.int64()),
                        _drop_reason=pa.array(reason, pa.string()))
            yield pa.RecordBatch.from_arrays([cols[n] for n in out_names], names=out_names)
    return fn


def line_dedup(df: DataFrame, scope: str | list[str] | None = None,
               min_length: int = MIN_LENGTH) -> tuple[DataFrame, dict]:
    """CCNet line dedup across `df` (or within each group of the `scope` column(s), e.g. a file-group
    id). Documents shorter than `min_length` are dropped before counting; after dedup, documents
    left empty or shorter than `min_length` are dropped. Updates `raw_content`, `length`, `nlines`;
    keeps `original_length`/`original_nlines` (filled from the input text when absent or null).
    Returns the kept documents (persisted, same columns, `_doc_id` added) and
    {"in", "out", "dropped": {"empty", "too_short"}, "lines_in", "lines_removed", "seconds"}."""
    started = time.perf_counter()
    scope_cols = [scope] if isinstance(scope, str) else list(scope or [])
    df = with_doc_id(df)
    for name in ("length", "nlines", "original_length", "original_nlines"):
        df = df.withColumn(name, F.col(name).cast("long") if name in df.columns else F.lit(None).cast("long"))
    df = df.withColumn("_short", F.length(F.coalesce(F.col("raw_content"), F.lit(""))) < min_length)

    long_docs = df.where(~F.col("_short")).select(ID, "raw_content", *scope_cols)
    hash_schema = T.StructType([T.StructField(ID, T.LongType()), T.StructField("_hash", T.LongType()),
                                *(df.schema[c] for c in scope_cols)])
    hashes = long_docs.mapInArrow(_line_hashes_fn(scope_cols), hash_schema).persist()  # used twice
    duplicated = hashes.groupBy(*scope_cols, "_hash").count().where(F.col("count") > 1).drop("count")
    # Null-safe on the scope columns: documents with a null scope form one scope together.
    same = [F.col("h._hash") == F.col("d._hash")] + [F.col(f"h.{c}").eqNullSafe(F.col(f"d.{c}")) for c in scope_cols]
    doc_dups = (hashes.alias("h").join(duplicated.alias("d"), on=same).select(f"h.{ID}", "h._hash")
                .groupBy(ID).agg(F.collect_list("_hash").alias("_dups")))
    joined = df.join(doc_dups, on=ID, how="left")

    out_fields = [f for f in joined.schema.fields if f.name != "_dups"]
    out_fields += [T.StructField("_lines_removed", T.LongType()), T.StructField("_drop_reason", T.StringType())]
    out_schema = T.StructType(out_fields)
    result = joined.mapInArrow(_apply_lines_fn(min_length, out_schema.names), out_schema).persist()

    rows = (result.groupBy("_drop_reason")
            .agg(F.count(F.lit(1)).alias("docs"), F.sum("original_nlines").alias("lines_in"),
                 F.sum("_lines_removed").alias("lines_removed")).collect())
    stats: dict = {"in": 0, "out": 0, "dropped": {}, "lines_in": 0, "lines_removed": 0}
    for row in rows:
        stats["in"] += row["docs"]
        stats["lines_in"] += row["lines_in"] or 0
        stats["lines_removed"] += row["lines_removed"] or 0
        if row["_drop_reason"] is None:
            stats["out"] += row["docs"]
        else:
            stats["dropped"][row["_drop_reason"]] = row["docs"]
    hashes.unpersist()
    stats["seconds"] = time.perf_counter() - started
    kept = result.where(F.col("_drop_reason").isNull()).drop("_short", "_lines_removed", "_drop_reason")
    return kept, stats


# ---------------------------------------------------------------------------------------------
# MinHash


def _band_keys_fn(params: MinHashParams):
    def fn(batches):
        hasher = MinHasher(params.num_perm, params.seed, params.ngram)
        for batch in batches:
            ids = batch.column(ID).to_pylist()
            sets = [shingle_bytes(t or "", params.ngram, params.max_chars)
                    for t in batch.column("raw_content").to_pylist()]
            sigs = hasher.signatures_from_shingles(sets)
            out_ids, out_bands, out_keys, out_sigs = [], [], [], []
            for doc_id, sig, ss in zip(ids, sigs, sets):
                if not ss:  # no shingles: never a candidate
                    continue
                keys = band_keys(sig, params.bands, params.rows)
                out_ids.extend([doc_id] * len(keys))
                out_bands.extend(range(len(keys)))
                out_keys.extend(keys)
                out_sigs.append(sig)
            # The signature (as int32 bits) rides on band 0's row only, for candidate verification.
            values = pa.array(np.concatenate(out_sigs).view(np.int32) if out_sigs else np.zeros(0, np.int32))
            offsets = pa.array(np.arange(len(out_sigs) + 1, dtype=np.int32) * params.num_perm)
            sig_column = pa.ListArray.from_arrays(offsets, values)
            take, doc = [], -1
            for band in out_bands:
                if band == 0:
                    doc += 1
                take.append(doc if band == 0 else None)
            sig_rows = sig_column.take(pa.array(take, pa.int32()))
            yield pa.RecordBatch.from_arrays(
                [pa.array(out_ids, pa.int64()), pa.array(out_bands, pa.int32()), pa.array(out_keys, pa.binary()),
                 sig_rows], names=[ID, "_band", "_key", "_sig"])
    return fn


def _large_star(edges: DataFrame) -> DataFrame:
    both = edges.select("src", "dst").union(edges.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    mins = both.groupBy("src").agg(F.min("dst").alias("_m"))
    return (both.join(mins, on="src").where(F.col("dst") > F.col("src"))
            .select(F.col("dst").alias("src"), F.least(F.col("_m"), F.col("src")).alias("dst")).distinct())


def _small_star(edges: DataFrame) -> DataFrame:
    oriented = edges.select(F.greatest("src", "dst").alias("src"), F.least("src", "dst").alias("dst")) \
        .where(F.col("src") != F.col("dst"))
    mins = oriented.groupBy("src").agg(F.min("dst").alias("_m"))
    j = oriented.join(mins, on="src")
    return (j.select(F.col("dst").alias("src"), F.col("_m").alias("dst"))
            .union(j.select("src", F.col("_m").alias("dst")))
            .where(F.col("src") != F.col("dst")).distinct())


def connected_components(edges: DataFrame, max_iterations: int = 64) -> tuple[DataFrame, int]:
    """Connected components of an undirected graph given as (src, dst) long edges, by alternating
    large-star and small-star until every edge points from a node to its component's smallest node.
    Returns ((node, component) for every node that has an edge, iterations run). Only counts
    reach the driver."""
    edges = edges.select(F.col("src").cast("long"), F.col("dst").cast("long")).localCheckpoint()
    for iteration in range(1, max_iterations + 1):
        edges = _small_star(_large_star(edges)).localCheckpoint()
        # Converged when no edge's target is itself the source of an edge (every component is a
        # star around its minimum: small-star always points edges to smaller nodes).
        chained = edges.alias("a").join(edges.alias("b"), F.col("a.dst") == F.col("b.src")).limit(1).count()
        if not chained:
            break
    else:
        raise RuntimeError(f"connected components did not converge in {max_iterations} iterations")
    nodes = edges.select(F.col("src").alias("node"), F.col("dst").alias("component")).union(
        edges.select(F.col("dst").alias("node"), F.col("dst").alias("component"))).distinct()
    return nodes, iteration


def minhash_clusters(df: DataFrame, ngram: int = 5, num_perm: int = 128, threshold: float = 0.8,
                     bands: int | None = None, rows: int | None = None, seed: int = 1,
                     verify: bool = True, max_chars: int | None = MAX_CHARS) -> tuple[DataFrame, dict]:
    """Every document of `df` with `minhash_cluster` (long: the smallest `_doc_id` of its connected
    component) and `minhash_cluster_size`. Members of an LSH bucket are linked to the bucket's
    smallest `_doc_id`; with `verify`, only when their signatures agree on ≥ threshold of values.
    Same semantics as curation.minhash.local_clusters. Returns (DataFrame, partial stats)."""
    params = MinHashParams(ngram, num_perm, seed, threshold, bands, rows, max_chars).resolved()
    df = with_doc_id(df)
    band_schema = T.StructType([T.StructField(ID, T.LongType()), T.StructField("_band", T.IntegerType()),
                                T.StructField("_key", T.BinaryType()),
                                T.StructField("_sig", T.ArrayType(T.IntegerType()))])
    keyed = df.select(ID, "raw_content").mapInArrow(_band_keys_fn(params), band_schema).persist()
    buckets = (keyed.groupBy("_band", "_key").agg(F.min(ID).alias("_root"), F.count(F.lit(1)).alias("_n"))
               .where(F.col("_n") > 1).drop("_n"))
    edges = (keyed.select(ID, "_band", "_key").join(buckets, on=["_band", "_key"])
             .where(F.col(ID) != F.col("_root"))
             .select(F.col(ID).alias("src"), F.col("_root").alias("dst")).distinct())
    if verify:
        sigs = keyed.where(F.col("_band") == 0).select(ID, "_sig")
        a, b = sigs.select(F.col(ID).alias("src"), F.col("_sig").alias("_a")), \
            sigs.select(F.col(ID).alias("dst"), F.col("_sig").alias("_b"))
        equal = F.aggregate(F.zip_with("_a", "_b", lambda x, y: (x == y).cast("int")), F.lit(0),
                            lambda acc, x: acc + x)
        edges = (edges.join(a, on="src").join(b, on="dst")
                 .where(equal / F.lit(float(params.num_perm)) >= F.lit(float(params.threshold)))
                 .select("src", "dst"))
    components, iterations = connected_components(edges)
    keyed.unpersist()
    clustered = (df.join(components, df[ID] == components["node"], "left")
                 .withColumn("minhash_cluster", F.coalesce(F.col("component"), F.col(ID)))
                 .drop("node", "component"))
    clustered = clustered.withColumn("minhash_cluster_size",
                                     F.count(F.lit(1)).over(Window.partitionBy("minhash_cluster")))
    stats = {"bands": params.bands, "rows": params.rows, "ngram": params.ngram, "num_perm": params.num_perm,
             "threshold": params.threshold, "verify": verify, "cc_iterations": iterations}
    return clustered, stats


def minhash_dedup(df: DataFrame, ngram: int = 5, num_perm: int = 128, threshold: float = 0.8,
                  bands: int | None = None, rows: int | None = None, seed: int = 1,
                  keep: str = "perplexity", verify: bool = True,
                  drop_duplicates: bool = True, max_chars: int | None = MAX_CHARS) -> tuple[DataFrame, dict]:
    """MinHash LSH near-duplicate removal across `df` (see `minhash_clusters`): keeps one document
    per cluster, with its `minhash_cluster` and `minhash_cluster_size`: the lowest `perplexity`
    when keep="perplexity" and the column exists (nulls last), then the smallest url, then content.
    Returns the kept documents (persisted; `_doc_id` added) and {"in", "out", "dropped":
    {"near_duplicate"}, "clusters" (of size > 1), "cluster_sizes": {size: clusters}, "bands",
    "rows", "ngram", "num_perm", "threshold", "verify", "cc_iterations", "seconds"}.
    With drop_duplicates=False, every document comes back with a boolean `minhash_keep` instead."""
    if keep not in ("perplexity", "id"):
        raise ValueError(f"keep must be 'perplexity' or 'id', not {keep!r}")
    started = time.perf_counter()
    clustered, stats = minhash_clusters(df, ngram, num_perm, threshold, bands, rows, seed, verify, max_chars)
    order = []
    if keep == "perplexity" and "perplexity" in clustered.columns:
        order.append(F.col("perplexity").asc_nulls_last())
    order += [F.col("url").asc_nulls_last(), F.col("raw_content").asc_nulls_last(), F.col(ID)]
    ranked = clustered.withColumn("_rank", F.row_number().over(Window.partitionBy("minhash_cluster").orderBy(*order)))
    ranked = ranked.withColumn("minhash_keep", F.col("_rank") == 1).drop("_rank").persist()
    kept = ranked.where("minhash_keep").drop("minhash_keep") if drop_duplicates else ranked

    sizes = ranked.where("minhash_keep").groupBy("minhash_cluster_size").count().collect()
    cluster_sizes = {int(r["minhash_cluster_size"]): int(r["count"]) for r in sizes}
    docs_in = sum(size * n for size, n in cluster_sizes.items())
    docs_out = sum(cluster_sizes.values())
    stats = {"in": docs_in, "out": docs_out, "dropped": {"near_duplicate": docs_in - docs_out},
             "clusters": sum(n for size, n in cluster_sizes.items() if size > 1),
             "cluster_sizes": {str(k): cluster_sizes[k] for k in sorted(cluster_sizes)},
             **stats, "seconds": time.perf_counter() - started}
    return kept, stats


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="Parquet file or directory with url, raw_content")
    parser.add_argument("--output", required=True, help="output directory (Parquet + stats.json)")
    parser.add_argument("--steps", default="lines,minhash", help="comma list of: lines, minhash")
    parser.add_argument("--scope", default=None, help="column(s) bounding line dedup scope, comma separated")
    parser.add_argument("--min-length", type=int, default=MIN_LENGTH)
    parser.add_argument("--ngram", type=int, default=5)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--bands", type=int, default=None)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", choices=["perplexity", "id"], default="perplexity")
    parser.add_argument("--no-verify", action="store_true", help="link LSH candidates without checking signatures")
    parser.add_argument("--master", default=None, help="local mode master (default local[*])")
    args = parser.parse_args(argv)

    from jobs.spark import spark_session

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    spark = spark_session("ccurate-dedup", master=args.master, log_file=output / "spark.log")
    started = time.perf_counter()
    df = spark.read.parquet(args.input)
    stats: dict = {}
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(steps) - {"lines", "minhash"}
    if unknown:
        parser.error(f"unknown steps: {sorted(unknown)}")
    if "lines" in steps:
        scope = args.scope.split(",") if args.scope else None
        df, stats["line_dedup"] = line_dedup(df, scope=scope, min_length=args.min_length)
    if "minhash" in steps:
        df, stats["minhash_dedup"] = minhash_dedup(df, args.ngram, args.num_perm, args.threshold, args.bands,
                                                   args.rows, args.seed, args.keep, not args.no_verify)
    df.drop(ID).write.mode("overwrite").option("compression", "zstd").parquet(str(output / "data"))
    stats["seconds"] = time.perf_counter() - started
    (output / "stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats, indent=2))
    return stats


if __name__ == "__main__":
    main()
