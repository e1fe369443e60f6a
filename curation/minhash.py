"""MinHash signatures of texts over word n-gram shingles, and MinHash's settings (no Spark here).

Shingles: the text (its first `max_chars` characters) is normalized like CCNet's line dedup
(lowercase, digits → 0, unicode punctuation and control characters removed), split on whitespace,
and every `ngram` consecutive words make a shingle; a text shorter than `ngram` words is one
shingle; an empty text has none (and never collides with anything).

Signatures: each shingle gets a 32-bit hash, datasketch's affine32 permutations (`a*h + b mod 2^32`
after the MurmurHash3 32-bit finalizer) map it `num_perm` ways, and a document's signature is the
minimum of each over its shingles (numpy over a batch of documents, `np.minimum.reduceat` per
document). Two schemes (`minhash.scheme`) make the shingle hashes:

- `native` (default): the batch's normalized words as one UTF-8 byte array
  (`curation.normalize.dedup_words_utf8`), each word's 64-bit hash from polynomial prefix sums over
  its bytes, each n-gram's from its words' hashes weighted by position, all in numpy: no Python step
  per word or shingle (~9× the `datasketch` scheme's documents/s: `python -m bench.minhash`).
- `datasketch`: the SHA-1 of each distinct shingle's UTF-8 bytes (`sha1_hash32`, one `hashlib` call
  per shingle): signatures bit-identical to `datasketch.MinHash(num_perm, seed)`'s `update_batch`.

The schemes shingle the same words and estimate Jaccard alike, but their signatures differ: the
signatures compared in one run must come from one scheme (`signature_settings` says what they
depend on).

LSH's bands and rows are chosen here (`optimal_bands_rows`, which `MinHashSettings.resolved` fills
in); the banding, the candidates' verification and the clusters are `curation.lsh`'s.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import chain
from typing import Literal

import numpy as np

from curation.normalize import dedup_words_utf8, normalize_for_dedup
from curation.settings import setting

MAX_HASH32 = np.uint32(0xFFFFFFFF)
# Shingles come from a document's first 100,000 characters (minhash.max_chars): near-duplicates
# share their beginning, and a whole multi-MB document would cost num_perm × 4 bytes per shingle
# (a 4 MB document: 442 MB).
MAX_CHARS = 100_000
SCHEMES = ("native", "datasketch")
# What stored signatures depend on (with `enabled`): signatures made under other values never match.
SIGNATURE_FIELDS = ("scheme", "num_perm", "seed", "ngram", "max_chars")
_DIGEST = operator.methodcaller("digest")
# MurmurHash3 fmix32 constants (datasketch's _FMIX_CONSTANTS[32]).
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
# MurmurHash3 fmix64 constants.
_FMIX64 = (np.uint64(33), np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))
# The native scheme's word hash base: FNV's 64-bit prime (odd, so invertible mod 2^64).
_WORD_BASE = 0x100000001B3
# The native scheme works on about this many characters of text at a time: its arrays (8-16 bytes
# per byte of text) stay in the CPU's cache (1.2× faster than a whole 6 MB batch at once).
NATIVE_CHUNK_CHARS = 1 << 18


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
    """`shingles` as UTF-8 bytes (what is hashed), words encoded once rather than every shingle (lone
    surrogates, which no Arrow text holds, as by "surrogatepass", like the native scheme)."""
    words = shingle_words(text[:max_chars])
    if len(words) <= ngram:
        return {" ".join(words).encode("utf-8", "surrogatepass")} if words else set()
    encoded = [w.encode("utf-8", "surrogatepass") for w in words]
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


def _fmix64(hv: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, in place (every input bit reaches every output bit)."""
    shift, m1, m2 = _FMIX64
    hv ^= hv >> shift
    hv *= m1
    hv ^= hv >> shift
    hv *= m2
    hv ^= hv >> shift
    return hv


class _WordBasePowers:
    """_WORD_BASE^i and its inverse ^i mod 2^64 for i < n: one pair of tables per process, grown by
    doubling to the largest chunk of text met (16 bytes per byte)."""

    def __init__(self):
        self.up = self.down = np.ones(1, np.uint64)

    def __call__(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.up) < n:
            size = max(n, 2 * len(self.up))
            self.up, self.down = (self._powers(base, size) for base in (_WORD_BASE, pow(_WORD_BASE, -1, 1 << 64)))
        return self.up[:n], self.down[:n]

    @staticmethod
    def _powers(base: int, size: int) -> np.ndarray:
        factors = np.full(size, base, np.uint64)
        factors[0] = 1
        return np.cumprod(factors)  # uint64 products wrap: mod 2^64


_WORD_BASE_POWERS = _WordBasePowers()


def _word_hashes(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of each word, index of its text) of `dedup_words_utf8`'s bytes. A word's hash is
    the polynomial Σ byte_i·B^i of its bytes (from prefix sums over the whole array, shifted back by
    B^-start so that it does not depend on where the word stands) plus its length, then fmix64."""
    up, down = _WORD_BASE_POWERS(len(data))
    prefix = np.zeros(len(data) + 1, np.uint64)
    np.cumsum(data * up, out=prefix[1:])
    edges = np.diff((data > 32).view(np.int8), prepend=np.int8(0), append=np.int8(0))  # words: bytes > b" "
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    hashes = _fmix64((prefix[ends] - prefix[starts]) * down[starts] + (ends - starts).astype(np.uint64))
    return hashes, np.searchsorted(np.flatnonzero(data == 10), starts)


def _ngram_hashes(words: np.ndarray, text_of: np.ndarray, texts: int, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of each shingle, shingles per text), the shingles of each text consecutive: the
    hash of the `ngram` words from position i is fmix64(Σ_k word[i+k]·W_k) with odd weights W_k; a
    text of fewer words has one shingle, the same sum over all its words."""
    n = len(words)
    per_text = np.bincount(text_of, minlength=texts)
    first = np.cumsum(per_text) - per_text
    weights = _fmix64(np.arange(1, ngram + 1, dtype=np.uint64)) | np.uint64(1)
    total, value = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
    for k in range(min(ngram, n)):
        total[:n - k] += words[k:] * weights[k]
        short = first[per_text == k + 1]
        value[short] = total[short]  # the shingle of the texts of k+1 words (their only one when k+1 < ngram)
    starts = np.zeros(n, bool)
    full = max(n - ngram + 1, 0)
    starts[:full] = text_of[:full] == text_of[ngram - 1:]
    value[starts] = total[starts]
    starts[first[(per_text > 0) & (per_text < ngram)]] = True
    return _fmix64(value[starts]), np.bincount(text_of[starts], minlength=texts)


def _batches(sizes: np.ndarray, limit: int) -> Iterator[tuple[int, int]]:
    """Consecutive (start, stop) ranges of items whose sizes add up to at most `limit` (an item
    larger than `limit` alone)."""
    ends = np.cumsum(sizes)
    start = 0
    while start < len(sizes):
        done = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, done + limit, "right")), start + 1)
        yield start, stop
        start = stop


def native_shingle_hashes(texts: Sequence[str], ngram: int = 5,
                          max_chars: int | None = MAX_CHARS) -> tuple[np.ndarray, np.ndarray]:
    """The native scheme: (uint64 hash of every shingle occurrence, shingles per text), each text's
    consecutive; the same shingle always has the same hash. Its sets of hashes are `shingles`' sets."""
    texts = [text[:max_chars] for text in texts]
    hashes, counts = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
    for start, stop in _batches(np.array([len(text) + 1 for text in texts]), NATIVE_CHUNK_CHARS):
        words, text_of = _word_hashes(dedup_words_utf8(texts[start:stop]))
        chunk_hashes, chunk_counts = _ngram_hashes(words, text_of, stop - start, ngram)
        hashes.append(chunk_hashes)
        counts.append(chunk_counts)
    return np.concatenate(hashes), np.concatenate(counts)


class MinHasher:
    """MinHash signatures of texts by one scheme (`make_hasher(settings)` makes the one of the settings):
    `signatures(texts)` normalizes, shingles, hashes and permutes a whole batch of texts."""

    def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = 5, max_chars: int | None = MAX_CHARS,
                 scheme: str = "native", chunk_shingles: int = 16384):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown MinHash scheme {scheme!r}: one of {', '.join(SCHEMES)}")
        self.num_perm, self.seed, self.ngram, self.max_chars, self.scheme = num_perm, seed, ngram, max_chars, scheme
        self.a, self.b = permutations(num_perm, seed)
        # Shingles permuted at a time: the (num_perm × shingles) uint32 buffer (8 MB at 128 × 16384)
        # stays in cache (1.3× faster than 65536; 4096 spends more time per call).
        self.chunk_shingles = chunk_shingles

    def makes(self, settings: MinHashSettings) -> bool:
        """Whether this hasher makes the signatures `settings` describe."""
        return all(getattr(self, name) == getattr(settings, name) for name in SIGNATURE_FIELDS)

    def shingle_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 hash of every shingle, shingles per text), by this hasher's scheme."""
        if self.scheme == "native":
            hashes, counts = native_shingle_hashes(texts, self.ngram, self.max_chars)
            return (hashes >> np.uint64(32)).astype(np.uint32), counts
        sets = [shingle_bytes(text, self.ngram, self.max_chars) for text in texts]
        return sha1_hash32_array(chain.from_iterable(sets)), np.array([len(s) for s in sets], np.int64)

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """((len(texts), num_perm) uint32 signatures, whether each text has shingles at all); a text
        without shingles has the all-max signature."""
        hashes, counts = self.shingle_hashes(texts)
        return self.signatures_from_hashes(hashes, counts), counts > 0

    def signatures_from_shingles(self, docs: Sequence[Iterable[bytes]]) -> np.ndarray:
        """Signatures of documents given as iterables of shingle bytes (duplicates allowed: MinHash is
        a set function), hashed as the `datasketch` scheme does: datasketch's `update_batch`."""
        docs = [list(items) for items in docs]
        counts = np.array([len(items) for items in docs], np.int64)
        return self.signatures_from_hashes(sha1_hash32_array(chain.from_iterable(docs)), counts)

    def signatures_from_hashes(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(len(counts), num_perm) signatures of documents whose 32-bit shingle hashes are `hashes`,
        `counts[i]` of them for document i, in order."""
        counts = np.asarray(counts, np.int64)
        out = np.full((len(counts), self.num_perm), MAX_HASH32, dtype=np.uint32)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        # The (num_perm × shingles) matrix of a chunk of documents lives in one reused buffer,
        # permutation-major so that the per-document minimum (`reduceat` along axis 1) runs over
        # contiguous memory (6× faster than the shingle-major layout datasketch uses).
        buffer = np.empty((self.num_perm, max(self.chunk_shingles, int(counts.max(initial=0)))), dtype=np.uint32)
        a, b = self.a[:, None], self.b[:, None]
        for start, stop in _batches(counts, self.chunk_shingles):
            nonempty = start + np.flatnonzero(counts[start:stop])  # empty documents keep the all-max signature
            if len(nonempty):
                permuted = buffer[:, :offsets[stop] - offsets[start]]
                np.multiply(a, _fmix32(hashes[offsets[start]:offsets[stop]]), out=permuted)
                permuted += b
                out[nonempty] = np.minimum.reduceat(permuted, offsets[nonempty] - offsets[start], axis=1).T
        return out


def make_hasher(settings: MinHashSettings) -> MinHasher:
    """The hasher of `settings`' scheme and parameters (make it once, sign many batches with it)."""
    return MinHasher(settings.num_perm, settings.seed, settings.ngram, settings.max_chars, settings.scheme)


def signature_settings(settings: MinHashSettings) -> dict:
    """The settings that stored signatures depend on: signatures made under others are made again."""
    return {"enabled": settings.enabled, **{name: getattr(settings, name) for name in SIGNATURE_FIELDS}}


@dataclass(frozen=True)
class MinHashSettings:
    """MinHash near-duplicate removal."""
    enabled: bool = setting(True, "near-duplicate removal over the whole run, after scoring")
    ngram: int = setting(5, "words per shingle", minimum=1)
    num_perm: int = setting(128, "permutations", minimum=1)
    threshold: float = setting(0.8, "Jaccard similarity of near-duplicates", minimum=0, maximum=1)
    bands: int | None = setting(None, "LSH bands; null: chosen for the threshold as datasketch does", minimum=1)
    rows: int | None = setting(None, "LSH rows per band; null: as bands", minimum=1)
    scheme: Literal["native", "datasketch"] = setting(
        "native", "shingle hashes: `native` (64-bit word hashes combined per n-gram, in numpy: ~9× faster) or "
        "`datasketch` (SHA-1 per shingle: signatures bit-identical to datasketch.MinHash); either estimates "
        "Jaccard alike, but a run compares only signatures of one scheme")
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
    local_max_documents: int = setting(1_000_000, "at most this many documents with shingles: their LSH buckets, "
                                       "verification and clusters in one process (numpy + scipy; 1M documents: "
                                       "~0.6 GB) instead of Spark's shuffles and joins; 0: always Spark", minimum=0)

    def resolved(self) -> MinHashSettings:
        """The same settings with `bands` and `rows` filled in."""
        if self.bands is None or self.rows is None:
            bands, rows = optimal_bands_rows(self.threshold, self.num_perm)
            return replace(self, bands=self.bands or bands, rows=self.rows or rows)
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands × rows = {self.bands * self.rows} > num_perm = {self.num_perm}")
        return self


def document_signatures(texts: Sequence[str], params: MinHashSettings,
                        hasher: MinHasher | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Signatures of texts by the scheme of `params`, and whether each text has shingles at all.
    `hasher`: `make_hasher(params)`, made once by a caller that signs many batches; one made for other
    settings is refused (ValueError): its signatures would never match the others of the run."""
    if hasher is None:
        hasher = make_hasher(params)
    elif not hasher.makes(params):
        raise ValueError(f"this MinHasher makes other signatures than {signature_settings(params)}: "
                         "use curation.minhash.make_hasher(settings)")
    return hasher.signatures(texts)
