"""MinHash: signatures equal to datasketch's, LSH parameters as datasketch picks them, precision and
recall at 0.8 against exact Jaccard on a near-duplicate corpus made from real text, Spark == local."""

import random

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from bench.corpus import cluster_pairs, make_corpus, precision_recall, real_texts, truth_pairs
from curation.minhash import MinHashDedupStage, MinHasher, MinHashSettings, local_clusters, optimal_bands_rows, shingles

DUP_TARGETS = (1.0, 0.97, 0.95, 0.92)


@pytest.fixture(scope="module")
def corpus(shared_data):
    return make_corpus(shared_data, originals=60, seed=0, dup_targets=DUP_TARGETS)


@pytest.fixture(scope="module")
def truth(corpus):
    return truth_pairs(corpus, threshold=0.8)


@pytest.mark.parametrize("num_perm,seed,ngram", [(128, 1, 5), (64, 7, 3), (256, 42, 1)])
def test_signatures_equal_datasketch(shared_data, num_perm, seed, ngram):
    texts = real_texts(shared_data, min_words=1)[:150] + ["", "   ", "one two", "Ünïcödé 123 — «quoted»"]
    sigs = MinHasher(num_perm, seed, ngram).signatures(texts)
    assert sigs.shape == (len(texts), num_perm) and sigs.dtype == np.uint32
    for text, sig in zip(texts, sigs):
        reference = MinHash(num_perm=num_perm, seed=seed)
        reference.update_batch([s.encode("utf-8") for s in shingles(text, ngram)])
        assert np.array_equal(reference.hashvalues, sig), text[:60]


def test_signatures_batching_does_not_change_results(shared_data):
    texts = real_texts(shared_data)[:60]
    whole = MinHasher().signatures(texts)
    tiny_chunks = MinHasher(chunk_shingles=7).signatures(texts)
    one_by_one = np.vstack([MinHasher().signatures([t]) for t in texts])
    assert np.array_equal(whole, tiny_chunks) and np.array_equal(whole, one_by_one)


@pytest.mark.parametrize("threshold,num_perm", [(0.8, 128), (0.5, 64), (0.9, 256), (0.7, 128)])
def test_bands_rows_as_datasketch(threshold, num_perm):
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    assert optimal_bands_rows(threshold, num_perm) == (lsh.b, lsh.r)


def test_shingles():
    assert shingles("The  cat\nsat on the MAT in 1999.", ngram=3) == {
        "the cat sat", "cat sat on", "sat on the", "on the mat", "the mat in", "mat in 0000."}
    assert shingles("two words", ngram=5) == {"two words"}
    assert shingles(" \n ") == set()


def test_corpus_has_known_similarities(corpus):
    from curation.minhash import jaccard

    originals = {d["group"]: shingles(d["raw_content"]) for d in corpus if d["kind"] == "original"}
    assert len(originals) == 60
    edits = {d["kind"] for d in corpus}
    assert edits >= {"original", "substitute", "insert", "reorder", "truncate"}
    for d in corpus:
        similarity = jaccard(shingles(d["raw_content"]), originals[d["group"]])
        assert similarity <= d["target"] + 1e-9
        if d["target"] < 1:
            assert similarity >= d["target"] - 0.25


def test_precision_recall_local(corpus, truth):
    predicted = cluster_pairs(local_clusters([d["raw_content"] for d in corpus], MinHashSettings(threshold=0.8)))
    precision, recall = precision_recall(predicted, truth)
    print(f"local: {len(truth)} true pairs, {len(predicted)} predicted, precision {precision:.3f}, recall {recall:.3f}")
    assert precision >= 0.95 and recall >= 0.95


def test_spark_equals_local_and_meets_targets(spark, corpus, truth):
    from jobs.dedup import minhash_dedup

    rng = random.Random(3)
    docs = [{**d, "_doc_id": i, "perplexity": float(rng.randrange(50, 500))} for i, d in enumerate(corpus)]
    df = spark.createDataFrame(docs).repartition(3)

    audited, stats = minhash_dedup(df, MinHashSettings(keep="perplexity"), drop_duplicates=False)
    rows = {r["_doc_id"]: r for r in audited.select("_doc_id", "url", "perplexity", "minhash_cluster",
                                                    "minhash_cluster_size", "minhash_keep").collect()}
    labels = [rows[i]["minhash_cluster"] for i in range(len(docs))]
    assert labels == local_clusters([d["raw_content"] for d in docs])
    precision, recall = precision_recall(cluster_pairs(labels), truth)
    assert precision >= 0.95 and recall >= 0.95

    kept = [r for r in rows.values() if r["minhash_keep"]]
    local = list(MinHashDedupStage(MinHashSettings(keep="perplexity"), id_field="_doc_id")(docs))
    assert sorted((r["url"], r["minhash_cluster"], r["minhash_cluster_size"]) for r in kept) == \
        sorted((d["url"], d["minhash_cluster"], d["minhash_cluster_size"]) for d in local)
    assert stats["in"] == len(docs) and stats["out"] == len(local)
    assert stats["dropped"]["near_duplicate"] == len(docs) - len(local)
    assert sum(int(k) * v for k, v in stats["cluster_sizes"].items()) == len(docs)
    assert (stats["bands"], stats["rows"]) == (9, 13)

    # Tie-break by perplexity: each kept document has the lowest perplexity of its cluster.
    by_cluster = {}
    for i, label in enumerate(labels):
        by_cluster.setdefault(label, []).append(docs[i]["perplexity"])
    kept_ppl = {r["minhash_cluster"]: r["perplexity"] for r in kept}
    assert all(kept_ppl[c] == min(p) for c, p in by_cluster.items())


def test_keep_first_by_url_without_perplexity(spark):
    text = " ".join(f"word{i}" for i in range(200))
    docs = [{"url": "https://b.example/", "raw_content": text}, {"url": "https://a.example/", "raw_content": text},
            {"url": "https://c.example/", "raw_content": text + " tail"},
            {"url": "https://z.example/", "raw_content": " ".join(f"other{i}" for i in range(200))}]
    from jobs.dedup import minhash_dedup

    kept, stats = minhash_dedup(spark.createDataFrame(docs), MinHashSettings(keep="id"))
    assert sorted((r["url"], r["minhash_cluster_size"]) for r in kept.collect()) == \
        [("https://a.example/", 3), ("https://z.example/", 1)]
    assert stats["cluster_sizes"] == {"1": 1, "3": 1}


def test_connected_components_long_chain_and_stars(spark):
    from jobs.dedup import connected_components

    rng = random.Random(0)
    nodes = list(range(1, 100))
    rng.shuffle(nodes)
    edges = list(zip(nodes[:39], nodes[1:40]))              # one long path, shuffled labels
    edges += [(1000, 1000 + k) for k in range(1, 30)]      # a star
    edges += [(2000 + k, 2000) for k in range(1, 5)] + [(5000, 5001)]
    expect = {n: min(nodes[:40]) for n in nodes[:40]}
    expect.update({1000 + k: 1000 for k in range(30)})
    expect.update({2000 + k: 2000 for k in range(5)})
    expect.update({5000: 5000, 5001: 5000})
    frame = spark.createDataFrame(edges, "src long, dst long")
    components, iterations = connected_components(frame)  # Spark rounds
    assert dict(components.collect()) == expect
    assert 0 < iterations < 20
    # The same graph under the bound for one process: scipy's components, no rounds.
    components, iterations = connected_components(frame, local_max_edges=len(edges))
    assert dict(components.collect()) == expect and iterations == 0
