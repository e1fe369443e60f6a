"""LSH over MinHash signatures (`curation.minhash`) and near-duplicate clusters in one process (no Spark here).

LSH: `num_perm` values cut into `bands` bands of `rows` rows (from datasketch's `_optimal_param`
for the threshold unless given); documents with one equal band share a bucket; each member of a
bucket is linked to the bucket's smallest id (a star, so a bucket of n documents gives n-1 edges,
never n²), if their signatures agree on at least `threshold` of their values (verification, on by
default: without it, LSH's soft S-curve chains 0.7-similar pages into clusters); clusters are the
connected components (`local_clusters` here, `jobs.minhash` in Spark).

`MinHashDedupStage` is the single-process MinHash dedup that the Spark job is tested against;
`keep_order_key` says which document of a cluster it keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from curation import schema
from curation.minhash import MinHashSettings, document_signatures
from curation.pipeline import Stage


def band_key_bytes(signatures: np.ndarray, bands: int, rows: int) -> bytes:
    """The LSH bucket keys of a batch of signatures ((documents, num_perm) uint32), document-major:
    `bands` keys per document, each the little-endian bytes of its band's `rows` values (4·rows bytes)."""
    return np.ascontiguousarray(signatures[:, : bands * rows], dtype="<u4").tobytes()


def band_keys(signature: np.ndarray, bands: int, rows: int) -> list[bytes]:
    """The `bands` LSH bucket keys of one signature (`band_key_bytes`)."""
    keys, width = band_key_bytes(signature[np.newaxis], bands, rows), 4 * rows
    return [keys[i * width:(i + 1) * width] for i in range(bands)]


def lsh_edges(ids: np.ndarray, signatures: np.ndarray, params: MinHashSettings,
              chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """The LSH graph of documents (`ids`, int64; `signatures`, (n, num_perm) uint32, all with shingles) in
    one process, as `jobs.minhash.minhash_components` builds it on Spark: in each band, the members of a
    bucket are linked to its smallest id; with `params.verify`, only when their signatures agree on ≥
    threshold of their values. Returns the distinct (src, dst) edges, src ≠ dst."""
    params = params.resolved()
    width = 4 * params.rows
    keys = band_key_bytes(signatures, params.bands, params.rows)
    edges = []
    for band in range(params.bands):
        band_keys = np.frombuffer(keys, dtype=np.dtype((np.void, width)))[band::params.bands]
        _, bucket = np.unique(band_keys, return_inverse=True)
        order = np.lexsort((ids, bucket))  # by bucket, then id: each bucket's first row is its root
        first = np.ones(len(order), dtype=bool)
        first[1:] = bucket[order][1:] != bucket[order][:-1]
        root_row = np.empty(bucket.max() + 1 if len(bucket) else 0, dtype=np.int64)
        root_row[bucket[order][first]] = order[first]
        rows = np.flatnonzero(root_row[bucket] != np.arange(len(ids)))
        roots = root_row[bucket[rows]]
        if params.verify:
            agree = np.concatenate([np.count_nonzero(signatures[rows[i:i + chunk]] == signatures[roots[i:i + chunk]],
                                                     axis=1) for i in range(0, len(rows), chunk)] or [[]])
            keep = agree / params.num_perm >= params.threshold  # as `similar` decides it
            rows, roots = rows[keep], roots[keep]
        edges.append(np.stack([ids[rows], ids[roots]], axis=1))
    pairs = np.unique(np.concatenate(edges) if edges else np.empty((0, 2), np.int64), axis=0)
    return pairs[:, 0], pairs[:, 1]


def similar(sig_a: np.ndarray, sig_b: np.ndarray, threshold: float) -> bool:
    """Candidate verification: estimated Jaccard (share of equal MinHash values) ≥ threshold."""
    return int(np.count_nonzero(sig_a == sig_b)) / len(sig_a) >= threshold


def local_clusters(texts: Sequence[str], params: MinHashSettings = MinHashSettings(),
                   ids: Sequence[int] | None = None) -> list[int]:
    """Single-process reference, same semantics as jobs.minhash.minhash_dedup: documents sharing an
    LSH bucket are linked to the bucket's smallest id (with `params.verify`, only if their signatures
    estimate Jaccard ≥ threshold); clusters are the connected components. Returns each text's
    cluster as the smallest id in it (ids default to positions)."""
    params = params.resolved()
    ids = list(range(len(texts))) if ids is None else list(ids)
    parent = list(range(len(texts)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    sigs, has_shingles = document_signatures(texts, params)
    buckets: dict[tuple[int, bytes], list[int]] = {}
    for i, sig in enumerate(sigs):
        if has_shingles[i]:
            for band, key in enumerate(band_keys(sig, params.bands, params.rows)):
                buckets.setdefault((band, key), []).append(i)
    for members in buckets.values():
        root = min(members, key=lambda i: ids[i])
        for i in members:
            if i != root and (not params.verify or similar(sigs[i], sigs[root], params.threshold)):
                ra, rb = find(root), find(i)
                if ra != rb:
                    if ids[ra] < ids[rb]:
                        parent[rb] = ra
                    else:
                        parent[ra] = rb
    return [ids[find(i)] for i in range(len(texts))]


def keep_order_key(doc: dict, use_perplexity: bool, id_field: str = "_doc_id") -> tuple:
    """Which document of a cluster is kept: the smallest key (lowest perplexity when chosen and known,
    then url, then its id: `id_field`, else `curation.schema.doc_id` of its url and text)."""
    ppl = doc.get("perplexity") if use_perplexity else None
    doc_id = doc[id_field] if id_field in doc else schema.doc_id(doc.get("url"), doc.get("raw_content"))
    return (ppl is None, ppl if ppl is not None else 0.0, doc.get("url") or "", doc_id)


class MinHashDedupStage(Stage):
    """Single-process MinHash dedup over a whole list of documents (the reference the Spark job is
    tested against): adds `minhash_cluster` (index of the cluster's first document in input order)
    and `minhash_cluster_size`, keeps one document per cluster."""

    name = "minhash"
    writes = ("minhash_cluster", "minhash_cluster_size")

    def __init__(self, settings: MinHashSettings = MinHashSettings(), id_field: str | None = None):
        super().__init__()
        self.params = settings.resolved()
        self.use_perplexity, self.id_field = settings.keep == "perplexity", id_field

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        docs = list(docs)
        ids = [d[self.id_field] for d in docs] if self.id_field else None
        clusters = local_clusters([d.get("raw_content") or "" for d in docs], self.params, ids)
        members: dict[int, list[int]] = {}
        for i, c in enumerate(clusters):
            members.setdefault(c, []).append(i)
        for c, idx in members.items():
            best = min(idx, key=lambda i: keep_order_key(docs[i], self.use_perplexity, self.id_field or "_doc_id"))
            self.drop("near_duplicate", len(idx) - 1)
            yield {**docs[best], "minhash_cluster": c, "minhash_cluster_size": len(idx)}
