"""MinHash near-duplicate removal on Spark, over the whole input, and the documents' identity.

`jobs.dedup` runs `minhash_dedup` after its line dedup; `jobs.curate` runs it (with `signature_column`,
`SIGNATURE(S)` and `ID`) on its stored signatures.

MinHash: signatures per partition (curation.minhash, the scheme of `minhash.scheme`). Up to
`minhash.local_max_documents` documents, their LSH buckets, verification and connected components are
made in the driver from the signatures alone (curation.lsh.lsh_edges, scipy: one small collect).
More: band keys per partition → shuffle on (band, key) → each bucket's members linked to its smallest
document id (verified on their signatures) → connected components by alternating large-star /
small-star (Kiveris et al. 2014) on DataFrames until a round leaves the edges unchanged (every
component a star around its smallest id), or, for a graph of at most `minhash.cc_local_max_edges`
edges, scipy's in the driver. Then, on the documents' keys alone (`_doc_id`, url, perplexity), one
aggregation per component gives its size and the kept document (lowest perplexity if chosen, then
url, then `_doc_id`), and a row per linked document is joined back on the id: each document keeps
`minhash_cluster` (the component id) and `minhash_cluster_size`. No task ever holds a whole
cluster's documents, and the text is read once, never cached or shuffled for the decision.

Document identity: `_doc_id` = xxhash64(url, raw_content) unless the DataFrame already has one;
rows with the same url and content are the same document.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema

from curation import storage
from curation.lsh import band_key_bytes, lsh_edges
from curation.minhash import MinHasher, MinHashSettings, document_signatures, make_hasher
from jobs.storage_io import read_parquet, write_parquet

ID = "_doc_id"
SIGNATURE = "_minhash_sig"
SIGNATURES = pa.schema([(ID, pa.int64()), (SIGNATURE, pa.list_(pa.int32()))])
EDGES = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
COMPONENTS = pa.schema([("node", pa.int64()), ("component", pa.int64())])


def with_doc_id(df: DataFrame) -> DataFrame:
    """`_doc_id` added where missing: `curation.schema.doc_id` as a Spark expression."""
    if ID in df.columns:
        return df
    return df.withColumn(ID, F.xxhash64(F.col("url"), F.col("raw_content")))


def signature_column(texts: list[str], params: MinHashSettings, hasher: MinHasher | None = None) -> pa.Array:
    """The MinHash signatures of `texts` (by `params.scheme`) as a list<int32> column (the uint32
    values' bits): null for a text with no shingles, which is never a candidate. `hasher`:
    `curation.minhash.make_hasher(params)`, made once for many batches (one of other settings: ValueError)."""
    sigs, has_shingles = document_signatures(texts, params, hasher)
    offsets = pa.array(np.arange(len(texts) + 1, dtype=np.int32) * params.num_perm)
    return pa.ListArray.from_arrays(offsets, pa.array(sigs.reshape(-1).view(np.int32)), mask=pa.array(~has_shingles))


def with_signatures(df: DataFrame, settings: MinHashSettings) -> DataFrame:
    """(`_doc_id`, `_minhash_sig`) of every document of `df`: its MinHash signature, from its text."""
    params = settings.resolved()

    def fn(batches):
        hasher = make_hasher(params)
        for batch in batches:
            texts = [t or "" for t in batch.column("raw_content").to_pylist()]
            yield pa.RecordBatch.from_arrays([batch.column(ID), signature_column(texts, params, hasher)],
                                             schema=SIGNATURES)

    return with_doc_id(df).select(ID, "raw_content").mapInArrow(fn, from_arrow_schema(SIGNATURES))


def _band_keys_fn(params: MinHashSettings):
    """Signatures → one row per (document, band): the band's LSH key (`curation.lsh.band_key_bytes`)."""
    def fn(batches):
        for batch in batches:
            n = batch.num_rows
            sigs = batch.column(SIGNATURE).flatten().to_numpy().view("<u4").reshape(n, params.num_perm)
            keys = band_key_bytes(sigs, params.bands, params.rows)
            key_array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * params.rows), n * params.bands,
                                                              [None, pa.py_buffer(keys)])
            yield pa.RecordBatch.from_arrays(
                [pa.array(np.repeat(batch.column(ID).to_numpy(), params.bands)),
                 pa.array(np.tile(np.arange(params.bands, dtype=np.int32), n)), key_array.cast(pa.binary())],
                names=[ID, "_band", "_key"])
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


def _edge_checksum(edges: DataFrame) -> tuple:
    """(count, xor and sum of the edges' xxhash64): equal for equal edge sets; a changed set has the same
    checksum only by a 64-bit hash collision. One aggregate, in the job that materializes the edges."""
    edge_hash = F.xxhash64("src", "dst")
    return tuple(edges.agg(F.count(F.lit(1)), F.bit_xor(edge_hash), F.sum(edge_hash.cast("decimal(38,0)"))).first())


def _checkpoint_root(spark, checkpoint_dir: str | None) -> str:
    """Where the rounds' edges go: `checkpoint_dir`, or in local mode a temporary directory removed at exit."""
    if checkpoint_dir:
        return checkpoint_dir.rstrip("/")
    if not spark.sparkContext.master.startswith("local"):
        raise ValueError("connected components need a checkpoint_dir that every executor reads "
                         "(e.g. RUN_DIR/checkpoints)")
    root = tempfile.mkdtemp(prefix="ccurate-cc-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


def _materialized(edges: DataFrame, round_dir: str) -> tuple[DataFrame, list[str]]:
    """A round's edges computed once, as Parquet: the next round reads them back with a plan that starts
    there (a plan that kept every round would double in size each round) and they survive the loss of an
    executor (unlike `localCheckpoint`). Written and read by Python tasks (jobs.storage_io): any store
    of `curation.storage`, with no Hadoop connector. Returns the edges read back and their files."""
    files = sorted(write_parquet(edges, round_dir))
    return read_parquet(edges.sparkSession, round_dir, files, EDGES), files


def _components_in_one_process(src: np.ndarray, dst: np.ndarray, out_dir: str) -> list[str]:
    """(node, component) of the edges (src, dst), found by scipy in this process and written as one
    Parquet file under `out_dir`: the component is its smallest node, as the Spark rounds give."""
    # Imported here: every Python worker imports this module (through jobs.curate), none of them
    # needs scipy, and it costs each of them about 0.3 s of CPU.
    import scipy.sparse
    import scipy.sparse.csgraph

    nodes, index = np.unique(np.concatenate([src, dst]), return_inverse=True)
    graph = scipy.sparse.coo_matrix((np.ones(len(src), np.int8), (index[:len(src)], index[len(src):])),
                                    shape=(len(nodes), len(nodes)))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    smallest = np.full(labels.max() + 1 if len(labels) else 0, np.iinfo(np.int64).max)
    np.minimum.at(smallest, labels, nodes)
    location = storage.join(out_dir, "components.parquet")
    with storage.atomic_output(location) as out:
        pq.write_table(pa.table({"node": nodes.astype(np.int64), "component": smallest[labels]}), out)
    return [location]


def connected_components(edges: DataFrame, max_iterations: int = 64, checkpoint_dir: str | None = None,
                         local_max_edges: int = 0) -> tuple[DataFrame, int]:
    """Connected components of an undirected graph given as (src, dst) long edges. A graph of at most
    `local_max_edges` edges is solved in this process (scipy), from its edges written once. A larger one
    by alternating large-star and small-star until a round leaves the edge set unchanged: then every
    component is a star around its smallest node (Kiveris et al. 2014: stars are the only fixed point).
    Two jobs per round: the round's edges written as Parquet under `checkpoint_dir` (a directory every
    executor reads, e.g. RUN_DIR/checkpoints; in local mode a temporary one by default), then their
    checksum, the only thing that reaches the driver, read back. Returns ((node, component) for every
    node that has an edge, rounds run: 0 when solved in one process). Raises RuntimeError after
    `max_iterations` rounds without convergence: unconverged edges do not say which component a node
    is in (a node can still point at two roots), so no partial answer is given."""
    spark = edges.sparkSession
    run_dir = f"{_checkpoint_root(spark, checkpoint_dir)}/cc-{uuid.uuid4().hex}"
    round_dir = f"{run_dir}/round-0"
    edges, files = _materialized(edges.select(F.col("src").cast("long"), F.col("dst").cast("long")), round_dir)
    checksum = _edge_checksum(edges)
    if checksum[0] <= local_max_edges:
        table = storage.parquet_dataset(round_dir, files).to_table() if files else EDGES.empty_table()
        components = _components_in_one_process(table.column("src").to_numpy(), table.column("dst").to_numpy(),
                                                f"{run_dir}/components")
        return read_parquet(spark, f"{run_dir}/components", components, COMPONENTS), 0
    for iteration in range(1, max_iterations + 1):
        next_dir = f"{run_dir}/round-{iteration}"
        edges, _ = _materialized(_small_star(_large_star(edges)), next_dir)
        next_checksum = _edge_checksum(edges)
        storage.delete(round_dir)
        round_dir = next_dir
        if next_checksum == checksum:
            break
        checksum = next_checksum
    else:
        raise RuntimeError(f"connected components did not converge in {max_iterations} rounds "
                           f"(minhash.cc_max_iterations); raise it: a cluster's rounds grow as log² of its diameter")
    nodes = edges.select(F.col("src").alias("node"), F.col("dst").alias("component")).union(
        edges.select(F.col("dst").alias("node"), F.col("dst").alias("component"))).distinct()
    return nodes, iteration


def _distributed_edges(candidates: DataFrame, params: MinHashSettings) -> tuple[DataFrame, DataFrame]:
    """The LSH graph on Spark: each document's band keys, members of a bucket linked to its smallest
    `_doc_id` (a star: n-1 edges for n members), verified on their signatures when `verify`. Returns the
    edges and the persisted band keys (to unpersist once the edges are materialized)."""
    band_schema = T.StructType([T.StructField(ID, T.LongType()), T.StructField("_band", T.IntegerType()),
                                T.StructField("_key", T.BinaryType())])
    keyed = candidates.mapInArrow(_band_keys_fn(params), band_schema).persist()
    buckets = (keyed.groupBy("_band", "_key").agg(F.min(ID).alias("_root"), F.count(F.lit(1)).alias("_n"))
               .where(F.col("_n") > 1).drop("_n"))
    edges = (keyed.join(buckets, on=["_band", "_key"])
             .where(F.col(ID) != F.col("_root"))
             .select(F.col(ID).alias("src"), F.col("_root").alias("dst")).distinct())
    if params.verify:
        a = candidates.select(F.col(ID).alias("src"), F.col(SIGNATURE).alias("_a"))
        b = candidates.select(F.col(ID).alias("dst"), F.col(SIGNATURE).alias("_b"))
        equal = F.aggregate(F.zip_with("_a", "_b", lambda x, y: (x == y).cast("int")), F.lit(0),
                            lambda acc, x: acc + x)
        edges = (edges.join(a, on="src").join(b, on="dst")
                 .where(equal / F.lit(float(params.num_perm)) >= F.lit(float(params.threshold)))
                 .select("src", "dst"))
    return edges, keyed


def _components_of_few(candidates: DataFrame, params: MinHashSettings, checkpoint_dir: str | None) -> DataFrame:
    """(node, component) of at most `local_max_documents` documents' signatures, their LSH graph and its
    components made in this process (`curation.lsh.lsh_edges`, scipy): the same clusters as the
    Spark jobs make, without their shuffles and joins (20,000 pages: ~10 s of a 2-core run's 20)."""
    spark = candidates.sparkSession
    table = candidates.toArrow()
    ids = table.column(ID).to_numpy()
    signatures = table.column(SIGNATURE).combine_chunks().flatten().to_numpy().view("<u4")
    src, dst = lsh_edges(ids, signatures.reshape(len(ids), params.num_perm), params)
    out_dir = f"{_checkpoint_root(spark, checkpoint_dir)}/cc-{uuid.uuid4().hex}/components"
    return read_parquet(spark, out_dir, _components_in_one_process(src, dst, out_dir), COMPONENTS)


def minhash_components(df: DataFrame, settings: MinHashSettings = MinHashSettings(),
                       checkpoint_dir: str | None = None, signatures: DataFrame | None = None,
                       documents: int | None = None) -> tuple[DataFrame, dict]:
    """(node, component) of every document of `df` that has a near-duplicate: the component is the
    smallest `_doc_id` of its connected component. Members of an LSH bucket are linked to the bucket's
    smallest `_doc_id`; with `verify`, only when their signatures agree on ≥ threshold of values (same
    semantics as curation.lsh.local_clusters). `signatures`: the documents' (`_doc_id`,
    `_minhash_sig`) when already stored (no text is read), else computed from `df`'s text; `documents`:
    how many, when known. Up to `minhash.local_max_documents` documents are clustered in one process,
    more on Spark. Returns the components and partial stats."""
    params = settings.resolved()
    computed = signatures is None
    if computed:
        signatures = with_signatures(df, params).persist()
    candidates = signatures.where(F.col(SIGNATURE).isNotNull())
    few = (documents if documents is not None else candidates.count()) <= params.local_max_documents
    if few:
        components, iterations = _components_of_few(candidates, params, checkpoint_dir), 0
    else:
        edges, keyed = _distributed_edges(candidates, params)
        components, iterations = connected_components(edges, params.cc_max_iterations, checkpoint_dir,
                                                      params.cc_local_max_edges)
        keyed.unpersist()  # the first round's edges are materialized: keys and signatures are read no more
    if computed:
        signatures.unpersist()
    stats = {"scheme": params.scheme, "bands": params.bands, "rows": params.rows, "ngram": params.ngram,
             "num_perm": params.num_perm, "threshold": params.threshold, "verify": params.verify,
             "clustered_in": "one process" if few else "spark", "cc_iterations": iterations}
    return components, stats


def keep_order(keys: DataFrame, use_perplexity: bool) -> Column:
    """`curation.lsh.keep_order_key` as a struct whose smallest value is the kept document: perplexity
    known first, lowest perplexity, url (null as ""), then `_doc_id`."""
    ppl = F.col("perplexity") if use_perplexity and "perplexity" in keys.columns else F.lit(None).cast("double")
    return F.struct(ppl.isNull().alias("unknown"), F.coalesce(ppl, F.lit(0.0)).alias("perplexity"),
                    F.coalesce(F.col("url"), F.lit("")).alias("url"), F.col(ID).alias("id"))


def minhash_dedup(df: DataFrame, settings: MinHashSettings = MinHashSettings(), drop_duplicates: bool = True,
                  checkpoint_dir: str | None = None, signatures: DataFrame | None = None,
                  documents: int | None = None, keys: DataFrame | None = None) -> tuple[DataFrame, dict]:
    """MinHash LSH near-duplicate removal across `df` (`minhash_components`): keeps one document per
    cluster, with its `minhash_cluster` and `minhash_cluster_size`: the lowest `perplexity` when
    keep="perplexity" and the column exists (nulls last), then the smallest url, then `_doc_id`. The
    decision is made on the documents' keys alone (`keys`: their `_doc_id`, url and perplexity when
    already at hand, else selected from `df`): one aggregation per cluster over its linked documents
    (partial aggregation first, so a cluster of a million copies is a few rows per task, never one task
    holding the cluster), then a row per linked document joined back to `df` on `_doc_id`: the text is
    read once, never cached or shuffled for the decision. Returns the kept documents (`_doc_id` added)
    and {"in", "out", "dropped": {"near_duplicate"}, "clusters" (of size > 1), "cluster_sizes": {size:
    clusters}, "scheme", "bands", "rows", "ngram", "num_perm", "threshold", "verify", "clustered_in",
    "cc_iterations", "seconds"}. With drop_duplicates=False, every document comes back with a boolean
    `minhash_keep` instead. `signatures`, `documents`: as in `minhash_components`."""
    started = time.perf_counter()
    df = with_doc_id(df)
    components, stats = minhash_components(df, settings, checkpoint_dir, signatures, documents)
    if keys is None:
        keys = df.select(ID, "url", *(["perplexity"] if "perplexity" in df.columns else []))
    linked = keys.join(components.withColumnRenamed("node", ID), on=ID)
    linked = linked.select(ID, F.col("component").alias("minhash_cluster"),
                           keep_order(linked, settings.keep == "perplexity").alias("_key"))
    per_cluster = (linked.groupBy("minhash_cluster")
                   .agg(F.count(F.lit(1)).alias("minhash_cluster_size"), F.min("_key")["id"].alias("_kept"))).persist()
    marks = (linked.join(per_cluster, on="minhash_cluster")
             .select(ID, "minhash_cluster", "minhash_cluster_size", (F.col(ID) == F.col("_kept")).alias("_keep")))
    marked = (df.join(marks, on=ID, how="left")
              .withColumn("minhash_cluster", F.coalesce(F.col("minhash_cluster"), F.col(ID)))
              .withColumn("minhash_cluster_size", F.coalesce(F.col("minhash_cluster_size"), F.lit(1)).cast("long"))
              .withColumn("minhash_keep", F.coalesce(F.col("_keep"), F.lit(True))).drop("_keep"))
    kept = marked.where("minhash_keep").drop("minhash_keep") if drop_duplicates else marked
    linked_sizes = {int(row["minhash_cluster_size"]): int(row["count"])
                    for row in per_cluster.groupBy("minhash_cluster_size").count().collect()}
    per_cluster.unpersist()
    docs_in = documents if documents is not None else keys.count()
    singles = docs_in - sum(size * n for size, n in linked_sizes.items())
    cluster_sizes = {**({1: singles} if singles else {}), **linked_sizes}
    docs_out = sum(cluster_sizes.values())
    stats = {"in": docs_in, "out": docs_out, "dropped": {"near_duplicate": docs_in - docs_out},
             "clusters": sum(linked_sizes.values()),
             "cluster_sizes": {str(k): cluster_sizes[k] for k in sorted(cluster_sizes)},
             **stats, "seconds": time.perf_counter() - started}
    return kept, stats
