"""MinHash near-duplicate detection over word n-gram shingles (no Spark here).

Signatures are bit-identical to `datasketch.MinHash(num_perm, seed)` (its default scheme
`affine32`: `sha1_hash32` of each shingle, MurmurHash3 32-bit finalizer, then `a*h + b mod 2^32`
per permutation, minimum over shingles), fed with the UTF-8 bytes of each shingle. They are computed
vectorised: one SHA-1 per distinct shingle (hashlib has no batch API), the rest as numpy over all
shingles of a batch of documents (`np.minimum.reduceat` per document).

Shingles: the text is normalized like CCNet's line dedup (lowercase, digits → 0, unicode
punctuation and control characters removed, whitespace runs collapsed), split on whitespace, and
every `ngram` consecutive words joined by one space make a shingle; a text shorter than `ngram`
words is one shingle; an empty text has none (and never collides with anything).

LSH: `num_perm` values cut into `bands` bands of `rows` rows (from datasketch's `_optimal_param`
for the threshold unless given); documents with one equal band share a bucket; each member of a
bucket is linked to the bucket's smallest id (a star, so a bucket of n documents gives n-1 edges,
never n²), if their signatures agree on at least `threshold` of their values (verification, on by
default: without it, LSH's soft S-curve chains 0.7-similar pages into clusters); clusters are the
connected components (`local_clusters` here, `jobs.dedup` in Spark).
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from curation.normalize import normalize_for_dedup
from curation.pipeline import Stage
from curation.settings import setting

MAX_HASH32 = np.uint32(0xFFFFFFFF)
# Shingles come from a document's first 100,000 characters (minhash.max_chars): near-duplicates
# share their beginning, and a whole multi-MB document would cost num_perm × 4 bytes per shingle
# (a 4 MB document: 442 MB).
MAX_CHARS = 100_000
_DIGEST = operator.methodcaller("digest")
# MurmurHash3 fmix32 constants (datasketch's _FMIX_CONSTANTS[32]).
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))


def optimal_bands_rows(threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """(bands, rows) minimizing the weighted false positive + false negative probability, exactly as
    `datasketch.MinHashLSH` chooses them (its own `_optimal_param` when available)."""
    try:
        from datasketch.lsh import _optimal_param
    except ImportError:  # pragma: no cover - same integral computation, without datasketch
        _optimal_param = _optimal_param_fallback
    return tuple(int(x) for x in _optimal_param(threshold, num_perm, weights[0], weights[1]))


def _optimal_param_fallback(threshold, num_perm, fp_weight, fn_weight):
    def integrate(f, a, b, n=1000):
        step = (b - a) / n
        return sum(f(a + (i + 0.5) * step) for i in range(n)) * step

    best, opt = float("inf"), (0, 0)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = integrate(lambda s, r=r, b=b: 1 - (1 - s ** r) ** b, 0.0, threshold)
            fn = integrate(lambda s, r=r, b=b: 1 - (1 - (1 - s ** r) ** b), threshold, 1.0)
            if fp * fp_weight + fn * fn_weight < best:
                best, opt = fp * fp_weight + fn * fn_weight, (b, r)
    return opt


def permutations(num_perm: int = 128, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b) for this seed."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def shingle_words(text: str) -> list[str]:
    """Normalized words of a text (whitespace collapsed first so lines never glue together)."""
    return normalize_for_dedup(" ".join(text.split())).split()


def shingles(text: str, ngram: int = 5, max_chars: int | None = MAX_CHARS) -> set[str]:
    """The set of word `ngram`-grams of the normalized text (its first `max_chars` characters)."""
    words = shingle_words(text[:max_chars])
    if len(words) <= ngram:
        return {" ".join(words)} if words else set()
    return set(map(" ".join, zip(*(words[i:] for i in range(ngram)))))


def shingle_bytes(text: str, ngram: int = 5, max_chars: int | None = MAX_CHARS) -> set[bytes]:
    """`shingles` as UTF-8 bytes (what is hashed), words encoded once rather than every shingle."""
    words = shingle_words(text[:max_chars])
    if len(words) <= ngram:
        return {" ".join(words).encode("utf-8")} if words else set()
    encoded = [w.encode("utf-8") for w in words]
    return set(map(b" ".join, zip(*(encoded[i:] for i in range(ngram)))))


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def sha1_hash32_array(items: Iterable[bytes]) -> np.ndarray:
    """`datasketch.hashfunc.sha1_hash32` of every item, as one uint32 array: the 20-byte digests are
    concatenated and their first little-endian word read by numpy (no struct/int per item)."""
    sha1, digest = hashlib.sha1, _DIGEST
    digests = b"".join(map(digest, map(sha1, items)))
    return np.frombuffer(digests, dtype="<u4")[::5].astype(np.uint32)


def _fmix32(hv: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    return hv ^ (hv >> s3)


class MinHasher:
    """Batch MinHash signatures equal to datasketch.MinHash(num_perm, seed).update_batch(...)."""

    def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = 5, chunk_shingles: int = 4096):
        self.num_perm, self.seed, self.ngram = num_perm, seed, ngram
        self.a, self.b = permutations(num_perm, seed)
        self.chunk_shingles = chunk_shingles

    def signatures_from_shingles(self, docs: Sequence[Iterable[bytes]]) -> np.ndarray:
        """(len(docs), num_perm) uint32 signatures for documents given as iterables of shingle bytes
        (duplicates allowed: MinHash is a set function)."""
        counts, hashed = [], []
        for items in docs:
            hv = sha1_hash32_array(items)
            counts.append(len(hv))
            hashed.append(hv)
        return self.signatures_from_hashes(hashed, counts)

    def signatures_from_hashes(self, hashed: list[np.ndarray], counts: list[int]) -> np.ndarray:
        out = np.full((len(hashed), self.num_perm), MAX_HASH32, dtype=np.uint32)
        if not hashed:
            return out
        a, b = self.a[:, None], self.b[:, None]
        # Walk the documents in chunks of about `chunk_shingles` hash values; the (num_perm ×
        # shingles) matrix lives in one reused buffer, permutation-major so that the per-document
        # minimum (`reduceat` along axis 1) runs over contiguous memory (6× faster than the
        # shingle-major layout datasketch uses). Empty documents keep the all-max signature.
        buffer = np.empty((self.num_perm, max(self.chunk_shingles, max(counts))), dtype=np.uint32)
        start = 0
        while start < len(hashed):
            stop, total = start, 0
            while stop < len(hashed) and (total == 0 or total + counts[stop] <= self.chunk_shingles):
                total += counts[stop]
                stop += 1
            idx = [i for i in range(start, stop) if counts[i]]
            if idx:
                hv = _fmix32(np.concatenate([hashed[i] for i in idx]))
                phv = buffer[:, :len(hv)]
                np.multiply(a, hv, out=phv)
                phv += b
                offsets = np.cumsum([0] + [counts[i] for i in idx[:-1]])
                out[idx] = np.minimum.reduceat(phv, offsets, axis=1).T
            start = stop
        return out

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """Signatures of raw texts (normalization and shingling included)."""
        return self.signatures_from_shingles([shingle_bytes(t, self.ngram) for t in texts])


def band_key_bytes(signatures: np.ndarray, bands: int, rows: int) -> bytes:
    """The LSH bucket keys of a batch of signatures ((documents, num_perm) uint32), document-major:
    `bands` keys per document, each the little-endian bytes of its band's `rows` values (4·rows bytes)."""
    return np.ascontiguousarray(signatures[:, : bands * rows], dtype="<u4").tobytes()


def band_keys(signature: np.ndarray, bands: int, rows: int) -> list[bytes]:
    """The `bands` LSH bucket keys of one signature (`band_key_bytes`)."""
    keys, width = band_key_bytes(signature[np.newaxis], bands, rows), 4 * rows
    return [keys[i * width:(i + 1) * width] for i in range(bands)]


@dataclass(frozen=True)
class MinHashSettings:
    """MinHash near-duplicate removal."""
    enabled: bool = setting(True, "near-duplicate removal over the whole run, after scoring")
    ngram: int = setting(5, "words per shingle", minimum=1)
    num_perm: int = setting(128, "permutations", minimum=1)
    threshold: float = setting(0.8, "Jaccard similarity of near-duplicates", minimum=0, maximum=1)
    bands: int | None = setting(None, "LSH bands; null: chosen for the threshold as datasketch does", minimum=1)
    rows: int | None = setting(None, "LSH rows per band; null: as bands", minimum=1)
    seed: int = setting(1, "permutation seed (datasketch's)")
    verify: bool = setting(True, "link LSH candidates only when their signatures agree on ≥ threshold")
    max_chars: int | None = setting(MAX_CHARS, "shingles come from this many first characters (memory bound)",
                                    minimum=1)
    keep: Literal["perplexity", "id"] = setting("perplexity", "per cluster keep the lowest perplexity, or "
                                                "(`id`) the smallest url")
    cc_max_iterations: int = setting(64, "connected-components rounds before the job fails (it needs about "
                                     "log² of the largest cluster's diameter)", minimum=1)
    cc_local_max_edges: int = setting(2_000_000, "a graph of at most this many edges gets its connected components "
                                      "in one process (scipy; 2M edges: ~250 MB, ~3 s) instead of Spark rounds "
                                      "of two jobs each; 0: always Spark", minimum=0)

    def resolved(self) -> MinHashSettings:
        """The same settings with `bands` and `rows` filled in."""
        if self.bands is None or self.rows is None:
            bands, rows = optimal_bands_rows(self.threshold, self.num_perm)
            return replace(self, bands=self.bands or bands, rows=self.rows or rows)
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands × rows = {self.bands * self.rows} > num_perm = {self.num_perm}")
        return self


def document_signatures(texts: Sequence[str], params: MinHashSettings,
                        hasher: MinHasher | None = None) -> tuple[np.ndarray, list[bool]]:
    """Signatures of texts, and whether each text has shingles at all."""
    p = params.resolved()
    hasher = hasher or MinHasher(p.num_perm, p.seed, p.ngram)
    sets = [shingle_bytes(t, p.ngram, p.max_chars) for t in texts]
    return hasher.signatures_from_shingles(sets), [bool(ss) for ss in sets]


def similar(sig_a: np.ndarray, sig_b: np.ndarray, threshold: float) -> bool:
    """Candidate verification: estimated Jaccard (share of equal MinHash values) ≥ threshold."""
    return int(np.count_nonzero(sig_a == sig_b)) / len(sig_a) >= threshold


def local_clusters(texts: Sequence[str], params: MinHashSettings = MinHashSettings(),
                   ids: Sequence[int] | None = None) -> list[int]:
    """Single-process reference, same semantics as jobs.dedup.minhash_dedup: documents sharing an
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


def keep_order_key(doc: dict, use_perplexity: bool) -> tuple:
    """Which document of a cluster is kept: the smallest key (lowest perplexity when chosen and known,
    then url, then content)."""
    ppl = doc.get("perplexity") if use_perplexity else None
    return (ppl is None, ppl if ppl is not None else 0.0, doc.get("url") or "", doc.get("raw_content") or "")


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
            best = min(idx, key=lambda i: keep_order_key(docs[i], self.use_perplexity))
            self.drop("near_duplicate", len(idx) - 1)
            yield {**docs[best], "minhash_cluster": c, "minhash_cluster_size": len(idx)}
