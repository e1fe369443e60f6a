"""Token shards: the contract between the tokenizer and the trainer.

A shard NAME is two files:
- NAME.bin: the tokens of every document back to back, little-endian uint16 (vocabulary ≤ 65536)
  or uint32 (larger vocabularies); BOS/EOS are already in the token stream.
- NAME.idx: a fixed header followed by `num_docs + 1` little-endian uint64 token offsets;
  document i is tokens[offsets[i]:offsets[i + 1]].

Header (little-endian, 68 bytes): magic b"LLMSHARD", format version (u32), bytes per token (u32),
vocabulary size (u32), SHA-256 of the tokenizer model (32 bytes), document count (u64), token count (u64).

The writer streams tokens to disk and publishes both files atomically (temporary names, then
rename, `.idx` last; on an object store, local files uploaded whole, `.idx` last: `curation.storage`),
so a reader never sees half a shard. A shard NAME may be a local path or a URI (s3://…). The reader
memory-maps (or reads ranges of) a shard and refuses any mismatch with a message that names the file
and the problem; `validate()` also scans the tokens for ids outside the vocabulary
(O(tokens): `python -m tokenizer.inspect` runs it).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import uuid
from pathlib import Path

import numpy as np

from curation import storage

MAGIC = b"LLMSHARD"
VERSION = 1
HEADER = struct.Struct("<8sIII32sQQ")
OFFSET_DTYPE = np.dtype("<u8")
COPY_BYTES = 16 << 20  # tokens copied per read from a shard on an object store


class ShardError(ValueError):
    """A shard that cannot be read as written: wrong magic, version, tokenizer, dtype or size."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def tokenizer_hash(model_path: str | os.PathLike) -> bytes:
    """SHA-256 of a tokenizer model file: shards record it so that a trainer cannot mix tokenizers."""
    return hashlib.sha256(Path(model_path).read_bytes()).digest()


def shard_paths(prefix: str | os.PathLike) -> tuple[str, str]:
    return f"{prefix}.bin", f"{prefix}.idx"


def shard_exists(prefix: str | os.PathLike) -> bool:
    """True once a shard has been published (the .idx is renamed into place last)."""
    bin_path, idx_path = shard_paths(prefix)
    return storage.exists(bin_path) and storage.exists(idx_path)


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
        # Written locally (beside the shard, or in a local temporary directory when it goes to a store
        # without rename), then published.
        local = storage.local_path(prefix)
        self._staging = None if local else tempfile.TemporaryDirectory(prefix="ccurate-shard-")
        self._tmp_bin, self._tmp_idx = (f"{path}.tmp-{uuid.uuid4().hex}" for path in shard_paths(
            local or os.path.join(self._staging.name, os.path.basename(str(prefix)))))
        os.makedirs(os.path.dirname(os.path.abspath(self._tmp_bin)), exist_ok=True)
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
        local = storage.local_path(shard.bin_path)
        while remaining:
            if local:
                with open(local, "rb") as source:
                    sent = os.sendfile(self._bin.fileno(), source.fileno(), position, remaining)
            else:
                sent = self._bin.write(storage.read_range(shard.bin_path, position, min(remaining, COPY_BYTES)))
                self._bin.flush()
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
        with open(self._tmp_idx, "wb") as f:
            f.write(header)
            offsets = np.zeros(self.num_docs + 1, dtype=OFFSET_DTYPE)
            np.cumsum(np.concatenate([np.zeros(0, np.int64), *self._lengths]), out=offsets[1:])
            f.write(offsets.tobytes())
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        storage.upload(self._tmp_bin, self.bin_path)
        storage.upload(self._tmp_idx, self.idx_path)
        if self._staging is not None:
            self._staging.cleanup()

    def abort(self) -> None:
        """Drop a half-written shard without publishing anything."""
        self._bin.close()
        for path in (self._tmp_bin, self._tmp_idx):
            if os.path.exists(path):
                os.remove(path)
        if self._staging is not None:
            self._staging.cleanup()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ShardReader:
    """Memory-maps a published shard after validating its header and file sizes (a shard on a store
    without memory maps, s3://…: its offsets are read, its tokens by `read_tokens`; `tokens` is None).

    `expected_tokenizer_sha256` / `expected_vocab_size`, when given, must match the header."""

    def __init__(self, prefix: str | os.PathLike, expected_tokenizer_sha256: bytes | None = None,
                 expected_vocab_size: int | None = None):
        self.bin_path, self.idx_path = shard_paths(prefix)
        for path in (self.idx_path, self.bin_path):
            if not storage.exists(path):
                raise ShardError(f"{path}: missing (shard {prefix} is not published)")
            if storage.is_dir(path):
                raise ShardError(f"{path}: not a file (a shard is NAME.bin and NAME.idx)")
        idx_size = storage.size(self.idx_path)
        if idx_size < HEADER.size:
            raise ShardError(f"{self.idx_path}: truncated header ({idx_size} of {HEADER.size} bytes)")
        fields = HEADER.unpack(storage.read_range(self.idx_path, 0, HEADER.size))
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
        bin_size = storage.size(self.bin_path)
        if bin_size != num_tokens * itemsize:
            raise ShardError(f"{self.bin_path}: {bin_size} bytes, expected {num_tokens * itemsize} "
                             f"for {num_tokens} tokens (truncated or corrupt)")
        local_idx, local_bin = storage.local_path(self.idx_path), storage.local_path(self.bin_path)
        self.offsets = (np.memmap(local_idx, dtype=OFFSET_DTYPE, mode="r", offset=HEADER.size) if local_idx
                        else np.frombuffer(storage.read_bytes(self.idx_path), OFFSET_DTYPE, offset=HEADER.size))
        if self.offsets[0] != 0 or self.offsets[-1] != num_tokens or np.any(np.diff(self.offsets.astype(np.int64)) < 0):
            raise ShardError(f"{self.idx_path}: document offsets are not a monotone cover of {num_tokens} tokens")
        self.tokens = (np.memmap(local_bin, dtype=self.dtype, mode="r") if num_tokens and local_bin
                       else np.zeros(0, dtype=self.dtype) if local_bin else None)
        self.vocab_size = vocab_size
        self.tokenizer_sha256 = sha
        self.num_docs = num_docs
        self.num_tokens = num_tokens

    def __len__(self) -> int:
        return self.num_docs

    def read_tokens(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start + count): a view of the memory map, or one ranged read from a store."""
        if self.tokens is not None:
            return self.tokens[start:start + count]
        itemsize = self.dtype.itemsize
        return np.frombuffer(storage.read_range(self.bin_path, start * itemsize, count * itemsize), self.dtype)

    def validate(self, chunk_tokens: int = 1 << 24) -> None:
        """Scans every token (O(tokens), in chunks of `chunk_tokens`, so a few MB of memory) and
        refuses an id outside the vocabulary. Opening checks only the header and sizes."""
        for start in range(0, self.num_tokens, chunk_tokens):
            chunk = self.read_tokens(start, chunk_tokens)
            if int(chunk.max()) >= self.vocab_size:
                bad = start + int(np.argmax(chunk >= self.vocab_size))
                raise ShardError(f"{self.bin_path}: token {bad} has id {int(chunk[bad - start])}, "
                                 f"outside the vocabulary of {self.vocab_size}")

    def document(self, i: int) -> np.ndarray:
        return self.read_tokens(int(self.offsets[i]), int(self.offsets[i + 1] - self.offsets[i]))

    def header(self) -> dict:
        return {"path": self.idx_path.removesuffix(".idx"), "version": VERSION,
                "dtype": self.dtype.name, "vocab_size": self.vocab_size,
                "tokenizer_sha256": self.tokenizer_sha256.hex(),
                "num_docs": self.num_docs, "num_tokens": self.num_tokens}
