"""Token shards: the contract between the tokenizer and the trainer.

A shard NAME is two files:
- NAME.bin: the tokens of every document back to back, little-endian uint16 (vocabulary ≤ 65536)
  or uint32 (larger vocabularies); BOS/EOS are already in the token stream.
- NAME.idx: a fixed header followed by `num_docs + 1` little-endian uint64 token offsets;
  document i is tokens[offsets[i]:offsets[i + 1]].

Header (little-endian, 68 bytes): magic b"LLMSHARD", format version (u32), bytes per token (u32),
vocabulary size (u32), SHA-256 of the tokenizer model (32 bytes), document count (u64), token count (u64).

The writer streams tokens to disk and publishes both files atomically (temporary names, then
rename, `.idx` last), so a reader never sees half a shard. The reader memory-maps and refuses any
mismatch with a message that names the file and the problem; `validate()` also scans the tokens
for ids outside the vocabulary (O(tokens): `python -m tokenizer.inspect` runs it).
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np

MAGIC = b"LLMSHARD"
VERSION = 1
HEADER = struct.Struct("<8sIII32sQQ")
OFFSET_DTYPE = np.dtype("<u8")


class ShardError(ValueError):
    """A shard that cannot be read as written: wrong magic, version, tokenizer, dtype or size."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def tokenizer_hash(model_path: str | os.PathLike) -> bytes:
    """SHA-256 of a tokenizer model file: shards record it so that a trainer cannot mix tokenizers."""
    return hashlib.sha256(Path(model_path).read_bytes()).digest()


def shard_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx")


def shard_exists(prefix: str | os.PathLike) -> bool:
    """True once a shard has been published (the .idx is renamed into place last)."""
    bin_path, idx_path = shard_paths(prefix)
    return bin_path.exists() and idx_path.exists()


class ShardWriter:
    """Streams documents into one shard; `close()` (or leaving the `with` block) publishes it.

    `durable=False` skips the fsyncs before publication: for intermediate files that a killed job
    (whose writes the page cache keeps) may reuse, but that a machine crash need not survive."""

    def __init__(self, prefix: str | os.PathLike, vocab_size: int, tokenizer_sha256: bytes, durable: bool = True):
        if len(tokenizer_sha256) != 32:
            raise ValueError("tokenizer_sha256 must be the 32-byte SHA-256 digest of the model")
        self.bin_path, self.idx_path = shard_paths(prefix)
        self.vocab_size = vocab_size
        self.tokenizer_sha256 = tokenizer_sha256
        self.dtype = token_dtype(vocab_size)
        self.durable = durable
        self.num_tokens = 0
        self.num_docs = 0
        self._lengths: list[np.ndarray] = []  # document lengths, one array per batch of documents added
        self._tmp_bin = self.bin_path.with_name(self.bin_path.name + f".tmp{os.getpid()}")
        self._bin = open(self._tmp_bin, "wb")

    def add_document(self, tokens) -> None:
        array = np.asarray(tokens)
        self.add_documents(array, np.array([array.size]))

    def add_documents(self, tokens, lengths) -> None:
        """Documents back to back in `tokens`, their token counts in `lengths` (one write for many)."""
        array, lengths = np.asarray(tokens), np.asarray(lengths, dtype=np.int64)
        if lengths.sum() != array.size or (lengths < 0).any():
            raise ValueError(f"document lengths sum to {lengths.sum()}, not to the {array.size} tokens given")
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            raise ValueError(f"token id outside the vocabulary of {self.vocab_size}")
        self._bin.write(np.ascontiguousarray(array, dtype=self.dtype).data)
        self._lengths.append(lengths)
        self.num_tokens += array.size
        self.num_docs += lengths.size

    def copy_documents(self, shard: ShardReader, first: int, last: int) -> None:
        """Appends documents [first, last) of a published shard of the same tokenizer; the kernel copies
        the tokens file to file (they were checked when that shard was written)."""
        if (shard.vocab_size, shard.tokenizer_sha256) != (self.vocab_size, self.tokenizer_sha256):
            raise ShardError(f"{shard.idx_path}: made with another tokenizer or vocabulary than {self.bin_path}")
        offsets = np.asarray(shard.offsets[first:last + 1], dtype=np.int64)
        position, remaining = int(offsets[0]) * self.dtype.itemsize, int(offsets[-1] - offsets[0]) * self.dtype.itemsize
        self._bin.flush()  # the kernel appends at the file's offset: buffered tokens go first
        with open(shard.bin_path, "rb") as source:
            while remaining:
                sent = os.sendfile(self._bin.fileno(), source.fileno(), position, remaining)
                if not sent:
                    raise ShardError(f"{shard.bin_path}: shorter than its index says (truncated while read)")
                position, remaining = position + sent, remaining - sent
        self._lengths.append(np.diff(offsets))
        self.num_tokens += int(offsets[-1] - offsets[0])
        self.num_docs += len(offsets) - 1

    def close(self) -> None:
        if self._bin.closed:
            return
        self._bin.flush()
        if self.durable:
            os.fsync(self._bin.fileno())
        self._bin.close()
        header = HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, self.vocab_size,
                             self.tokenizer_sha256, self.num_docs, self.num_tokens)
        tmp_idx = self.idx_path.with_name(self.idx_path.name + f".tmp{os.getpid()}")
        with open(tmp_idx, "wb") as f:
            f.write(header)
            offsets = np.zeros(self.num_docs + 1, dtype=OFFSET_DTYPE)
            np.cumsum(np.concatenate([np.zeros(0, np.int64), *self._lengths]), out=offsets[1:])
            f.write(offsets.tobytes())
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(self._tmp_bin, self.bin_path)
        os.replace(tmp_idx, self.idx_path)

    def abort(self) -> None:
        """Drop a half-written shard without publishing anything."""
        self._bin.close()
        self._tmp_bin.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ShardReader:
    """Memory-maps a published shard after validating its header and file sizes.

    `expected_tokenizer_sha256` / `expected_vocab_size`, when given, must match the header."""

    def __init__(self, prefix: str | os.PathLike, expected_tokenizer_sha256: bytes | None = None,
                 expected_vocab_size: int | None = None):
        self.bin_path, self.idx_path = shard_paths(prefix)
        for path in (self.idx_path, self.bin_path):
            if not path.exists():
                raise ShardError(f"{path}: missing (shard {prefix} is not published)")
            if not path.is_file():
                raise ShardError(f"{path}: not a file (a shard is NAME.bin and NAME.idx)")
        idx_size = self.idx_path.stat().st_size
        if idx_size < HEADER.size:
            raise ShardError(f"{self.idx_path}: truncated header ({idx_size} of {HEADER.size} bytes)")
        with open(self.idx_path, "rb") as f:
            fields = HEADER.unpack(f.read(HEADER.size))
        magic, version, itemsize, vocab_size, sha, num_docs, num_tokens = fields
        if magic != MAGIC:
            raise ShardError(f"{self.idx_path}: not a token shard index (magic {magic!r})")
        if version != VERSION:
            raise ShardError(f"{self.idx_path}: format version {version}, this reader reads {VERSION}")
        if vocab_size == 0:
            raise ShardError(f"{self.idx_path}: vocabulary size 0 in the header (corrupt, or not a ShardWriter's)")
        if itemsize != token_dtype(vocab_size).itemsize:
            raise ShardError(f"{self.idx_path}: {itemsize}-byte tokens do not match a vocabulary "
                             f"of {vocab_size} (expected {token_dtype(vocab_size).itemsize}-byte)")
        if expected_vocab_size is not None and vocab_size != expected_vocab_size:
            raise ShardError(f"{self.idx_path}: vocabulary size {vocab_size}, expected {expected_vocab_size}")
        if expected_tokenizer_sha256 is not None and sha != expected_tokenizer_sha256:
            raise ShardError(f"{self.idx_path}: made with another tokenizer (sha256 {sha.hex()[:16]}…, "
                             f"expected {expected_tokenizer_sha256.hex()[:16]}…)")
        expected_idx = HEADER.size + (num_docs + 1) * OFFSET_DTYPE.itemsize
        if idx_size != expected_idx:
            raise ShardError(f"{self.idx_path}: {idx_size} bytes, expected {expected_idx} for {num_docs} documents")
        self.dtype = token_dtype(vocab_size)
        bin_size = self.bin_path.stat().st_size
        if bin_size != num_tokens * itemsize:
            raise ShardError(f"{self.bin_path}: {bin_size} bytes, expected {num_tokens * itemsize} "
                             f"for {num_tokens} tokens (truncated or corrupt)")
        self.offsets = np.memmap(self.idx_path, dtype=OFFSET_DTYPE, mode="r", offset=HEADER.size)
        if self.offsets[0] != 0 or self.offsets[-1] != num_tokens or np.any(np.diff(self.offsets.astype(np.int64)) < 0):
            raise ShardError(f"{self.idx_path}: document offsets are not a monotone cover of {num_tokens} tokens")
        self.tokens = (np.memmap(self.bin_path, dtype=self.dtype, mode="r") if num_tokens
                       else np.zeros(0, dtype=self.dtype))
        self.vocab_size = vocab_size
        self.tokenizer_sha256 = sha
        self.num_docs = num_docs
        self.num_tokens = num_tokens

    def __len__(self) -> int:
        return self.num_docs

    def validate(self, chunk_tokens: int = 1 << 24) -> None:
        """Scans every token (O(tokens), in chunks of `chunk_tokens`, so a few MB of memory) and
        refuses an id outside the vocabulary. Opening checks only the header and sizes."""
        for start in range(0, self.num_tokens, chunk_tokens):
            chunk = self.tokens[start:start + chunk_tokens]
            if int(chunk.max()) >= self.vocab_size:
                bad = start + int(np.argmax(chunk >= self.vocab_size))
                raise ShardError(f"{self.bin_path}: token {bad} has id {int(self.tokens[bad])}, "
                                 f"outside the vocabulary of {self.vocab_size}")

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def header(self) -> dict:
        return {"path": str(self.idx_path.with_suffix("")), "version": VERSION,
                "dtype": self.dtype.name, "vocab_size": self.vocab_size,
                "tokenizer_sha256": self.tokenizer_sha256.hex(),
                "num_docs": self.num_docs, "num_tokens": self.num_tokens}
