"""Training batches from token shards (`tokenizer/shards.py`).

The token stream of each shard (documents back to back, each starting with BOS) is cut into
windows of `seq_len + 1` tokens that overlap by one, so every token is a target exactly once per
epoch. An epoch visits all windows of all shards in a pseudo-random order drawn from (seed, epoch);
the position in that order is the data cursor. The cursor and the shard list go into checkpoints, so
a resumed run reads exactly the tokens the uninterrupted run would have read. (LLaMA's mixture of several
shard folders, one per source, is trainer.mixture.)

Scale: each shard's header is validated once, then its tokens file is opened only for the duration
of a read, so thousands of shards hold no file handles between reads (`ulimit -n` stays irrelevant).
The epoch order is a keyed Feistel permutation of the window indices computed on demand: its memory
is a few keys, not a permutation array of all windows (which is gigabytes at 10^11 tokens); what grows
with the data is only the first-window table, one entry per shard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from curation import storage
from tokenizer.shards import ShardError, ShardReader, shard_paths


@dataclass(frozen=True)
class Shard:
    """What the trainer keeps of one published shard: its header facts, no open file."""
    prefix: str  # NAME of NAME.bin / NAME.idx: a local path or a URI (curation.storage)
    num_tokens: int  # tokens in NAME.bin
    dtype: np.dtype  # token dtype of NAME.bin
    vocab_size: int  # from the header: every id must be below it
    tokenizer_sha256: bytes  # from the header: the tokenizer model that made the shard

    @property
    def bin_path(self) -> str:
        return shard_paths(self.prefix)[0]

    def read(self, start: int, count: int) -> np.ndarray:
        """`count` tokens from `start`: one open/read/close, so no handle outlives the call."""
        data = storage.read_range(self.bin_path, start * self.dtype.itemsize, count * self.dtype.itemsize)
        if len(data) != count * self.dtype.itemsize:
            raise ShardError(f"{self.bin_path}: {len(data) // self.dtype.itemsize} tokens at {start}, "
                             f"expected {count} (file shrank?)")
        return np.frombuffer(data, dtype=self.dtype)


def find_shards(directory: str | Path, split: str, expected_tokenizer_sha256: bytes | None = None) -> list[Shard]:
    """Every published `{split}-*.idx` shard in `directory` (a local path or URI), validated; all must
    share one tokenizer."""
    paths = [path.removesuffix(".idx") for path in storage.list_files(directory, f"{split}-*.idx")]
    if not paths:
        raise FileNotFoundError(f"no {split}-*.idx shards in {directory} (run `make shards` first)")
    shards = []
    for path in paths:
        reader = ShardReader(path, expected_tokenizer_sha256)  # validates; closed when dropped
        shards.append(Shard(path, reader.num_tokens, reader.dtype, reader.vocab_size,
                            reader.tokenizer_sha256))
    first = shards[0]
    for shard in shards[1:]:
        if (shard.vocab_size, shard.tokenizer_sha256) != (first.vocab_size, first.tokenizer_sha256):
            raise ShardError(f"{shard.prefix}.idx: tokenizer or vocabulary differs from {first.prefix}.idx")
    return shards


class TokenWindows:
    """Windows of `seq_len + 1` tokens over a list of shards, addressed by one global index."""

    def __init__(self, shards: list[Shard], seq_len: int):
        self.shards = shards
        self.seq_len = seq_len
        self.vocab_size = shards[0].vocab_size
        per_shard = [max(0, (s.num_tokens - 1) // seq_len) for s in shards]
        self.starts = np.cumsum([0] + per_shard)  # first global window of each shard
        if self.starts[-1] == 0:
            raise ValueError(f"shards hold fewer than {seq_len + 1} tokens: nothing to train on")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[Shard, int]:
        """The shard of global window `index` and the window's first token in it."""
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.shards[shard], (index - int(self.starts[shard])) * self.seq_len

    def window(self, index: int) -> np.ndarray:
        shard, start = self.locate(index)
        return shard.read(start, self.seq_len + 1)

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        indices = [int(i) for i in indices]
        rows = np.stack([self.window(i) for i in indices])
        # One max per batch; a corrupt or foreign shard would otherwise be an IndexError deep in the embedding.
        if int(rows.max()) >= self.vocab_size:
            row = int(np.argmax(rows.max(axis=1) >= self.vocab_size))
            shard, start = self.locate(indices[row])
            raise ShardError(f"{shard.bin_path}: token id {int(rows[row].max())} at tokens {start}.."
                             f"{start + self.seq_len} is outside the vocabulary of {self.vocab_size}")
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1], rows[:, 1:]


class WindowOrder:
    """A pseudo-random permutation of range(n) drawn from (seed, epoch), evaluated per position.

    A 4-round Feistel network over the smallest even number of bits that holds n is a bijection on
    [0, 2^bits); "cycle walking" (apply it again while the result is >= n) restricts it to [0, n).
    As 2^bits < 4n, a position needs fewer than 4 walks on average. Memory: four round keys.
    Plain Python integers: for the few positions of a batch they beat numpy's per-call overhead."""

    ROUNDS = 4
    MASK64 = (1 << 64) - 1

    def __init__(self, n: int, seed: int, epoch: int):
        self.n = n
        self.half = max(1, (int(n - 1).bit_length() + 1) // 2)
        self.mask = (1 << self.half) - 1
        self.keys = [int(k) for k in np.random.default_rng([seed, epoch]).integers(0, 2**63, self.ROUNDS)]

    def _round(self, right: int, key: int) -> int:
        # splitmix64's finaliser: every input bit reaches every output bit.
        z = ((right ^ key) * 0x9E3779B97F4A7C15) & self.MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK64
        return (z ^ (z >> 31)) & self.mask

    def _feistel(self, x: int) -> int:
        left, right = x >> self.half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << self.half) | right

    def __getitem__(self, position: int) -> int:
        x = self._feistel(position)
        while x >= self.n:
            x = self._feistel(x)
        return x


def shard_list(shards: list[Shard]) -> list[list]:
    """[name, token count] per shard: what a checkpoint records to detect a changed data folder."""
    return [[os.path.basename(s.prefix), s.num_tokens] for s in shards]


class TrainLoader:
    """Shuffled training batches with a resumable cursor; each rank takes its slice of a global batch."""

    def __init__(self, directory: str | Path, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, expected_tokenizer_sha256: bytes | None = None):
        self.directory = directory
        self.shards = find_shards(directory, "train", expected_tokenizer_sha256)
        self.windows = TokenWindows(self.shards, seq_len)
        self.vocab_size = self.shards[0].vocab_size
        self.tokenizer_sha256 = self.shards[0].tokenizer_sha256
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch, self.position = 0, 0
        self._order = WindowOrder(len(self.windows), seed, self.epoch)

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    def validation_sets(self) -> dict[str, tuple[float, str]]:
        """{name: (weight, shard folder)} of the validation sets: the one of the shard folder."""
        return {"all": (1.0, self.directory)}

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `batch_size` windows for this rank; all ranks advance the cursor together."""
        global_batch = self.batch_size * self.world_size
        if global_batch > len(self.windows):
            raise ValueError(f"a batch of {global_batch} windows exceeds the {len(self.windows)} in the data")
        if self.position + global_batch > len(self.windows):
            # Drop the epoch's ragged tail rather than mixing two epochs in one batch.
            self.epoch, self.position = self.epoch + 1, 0
            self._order = WindowOrder(len(self.windows), self.seed, self.epoch)
        first = self.position + self.rank * self.batch_size
        self.position += global_batch
        return self.windows.batch([self._order[p] for p in range(first, first + self.batch_size)])

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "shards": shard_list(self.shards)}

    def load_state_dict(self, state: dict, allow_shard_change: bool = False) -> None:
        """Continue from `state`. Another shard list would silently change the order of everything that
        follows, so it is an error unless `allow_shard_change` (then the cursor goes on over the new list)."""
        if "sources" in state:
            raise ValueError("the checkpoint was trained on a mixture (trainer.mixture), not on one shard folder: "
                             "train into another out_dir")
        saved, now = [tuple(s) for s in state["shards"]], [tuple(s) for s in shard_list(self.shards)]
        if saved != now and not allow_shard_change:
            added = sorted({name for name, _ in now} - {name for name, _ in saved})
            removed = sorted({name for name, _ in saved} - {name for name, _ in now})
            resized = sorted({name for name, _ in set(now) - set(saved)} - set(added))
            raise ValueError(f"the training shards changed since the checkpoint (added {added}, removed {removed}, "
                             f"resized {resized}); set allow_shard_change=true to continue in a new data order")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = WindowOrder(len(self.windows), self.seed, self.epoch)


def val_batches(directory: str | Path, seq_len: int, batch_size: int, max_batches: int,
                expected_tokenizer_sha256: bytes | None = None):
    """The same first `max_batches` batches in shard order every time, so evaluations compare."""
    windows = TokenWindows(find_shards(directory, "val", expected_tokenizer_sha256), seq_len)
    for first in range(0, min(len(windows), max_batches * batch_size), batch_size):
        yield windows.batch(range(first, min(first + batch_size, len(windows))))
