"""Training batches from token shards (`tokenizer/shards.py`).

The token stream of each shard (documents back to back, each starting with BOS) is cut into
windows of `seq_len + 1` tokens that overlap by one, so every token is a target exactly once per
epoch. An epoch visits all windows of all shards in a pseudo-random order drawn from (seed, epoch);
the position in that order is the data cursor. The cursor and the shard list go into checkpoints, so
a resumed run reads exactly the tokens the uninterrupted run would have read.

Scale: each shard's header is validated once, then its tokens file is opened only for the duration
of a read, so thousands of shards hold no file handles between reads (`ulimit -n` stays irrelevant).
The epoch order is a keyed Feistel permutation of the window indices computed on demand: its memory
is a few keys, not a permutation array of all windows (which is gigabytes at 10^11 tokens); what grows
with the data is only the first-window table, one entry per shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenizer.shards import ShardError, ShardReader


@dataclass(frozen=True)
class Shard:
    """What the trainer keeps of one published shard: its header facts, no open file."""
    prefix: Path  # NAME of NAME.bin / NAME.idx
    num_tokens: int
    dtype: np.dtype  # token dtype of NAME.bin
    vocab_size: int
    tokenizer_sha256: bytes

    @property
    def bin_path(self) -> Path:
        return self.prefix.with_name(self.prefix.name + ".bin")

    def read(self, start: int, count: int) -> np.ndarray:
        """`count` tokens from `start`: one open/read/close, so no handle outlives the call."""
        tokens = np.fromfile(self.bin_path, dtype=self.dtype, count=count, offset=start * self.dtype.itemsize)
        if tokens.size != count:
            raise ShardError(f"{self.bin_path}: {tokens.size} tokens at {start}, expected {count} (file shrank?)")
        return tokens


def find_shards(directory: str | Path, split: str, expected_tokenizer_sha256: bytes | None = None) -> list[Shard]:
    """Every published `{split}-*.idx` shard in `directory`, validated; all must share one tokenizer."""
    paths = sorted(Path(directory).glob(f"{split}-*.idx"))
    if not paths:
        raise FileNotFoundError(f"no {split}-*.idx shards in {directory} (run `make shards` first)")
    shards = []
    for path in paths:
        reader = ShardReader(path.with_suffix(""), expected_tokenizer_sha256)  # validates; closed when dropped
        shards.append(Shard(path.with_suffix(""), reader.num_tokens, reader.dtype, reader.vocab_size,
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

    def window(self, index: int) -> np.ndarray:
        shard_index = int(np.searchsorted(self.starts, index, side="right")) - 1
        shard = self.shards[shard_index]
        start = (index - int(self.starts[shard_index])) * self.seq_len
        tokens = shard.read(start, self.seq_len + 1)
        # A corrupt or foreign shard would otherwise surface as an IndexError deep in the embedding.
        largest = int(tokens.max())
        if largest >= self.vocab_size:
            raise ShardError(f"{shard.bin_path}: token id {largest} at tokens {start}..{start + self.seq_len} "
                             f"is outside the vocabulary of {self.vocab_size}")
        return tokens

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(np.stack([self.window(int(i)) for i in indices]).astype(np.int64))
        return rows[:, :-1], rows[:, 1:]


class WindowOrder:
    """A pseudo-random permutation of range(n) drawn from (seed, epoch), evaluated per position.

    A 4-round Feistel network over the smallest even number of bits that holds n is a bijection on
    [0, 2^bits); "cycle walking" (apply it again while the result is >= n) restricts it to [0, n).
    As 2^bits < 4n, a position needs fewer than 4 walks on average. Memory: four round keys."""

    ROUNDS = 4

    def __init__(self, n: int, seed: int, epoch: int):
        self.n = n
        self.half = max(1, (int(n - 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = np.random.default_rng([seed, epoch]).integers(0, 2**63, self.ROUNDS, dtype=np.uint64)

    def _round(self, right: np.ndarray, key: np.uint64) -> np.ndarray:
        # splitmix64's finaliser: every input bit reaches every output bit.
        z = (right ^ key) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & self.mask

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        half = np.uint64(self.half)
        left, right = x >> half, x & self.mask
        for key in self.keys:
            left, right = right, left ^ self._round(right, key)
        return (left << half) | right

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        out = self._feistel(np.asarray(positions, dtype=np.uint64))
        outside = out >= np.uint64(self.n)
        while outside.any():
            out[outside] = self._feistel(out[outside])
            outside = out >= np.uint64(self.n)
        return out.astype(np.int64)


def shard_list(shards: list[Shard]) -> list[list]:
    """[name, token count] per shard: what a checkpoint records to detect a changed data folder."""
    return [[s.prefix.name, s.num_tokens] for s in shards]


class TrainLoader:
    """Shuffled training batches with a resumable cursor; each rank takes its slice of a global batch."""

    def __init__(self, directory: str | Path, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, expected_tokenizer_sha256: bytes | None = None):
        self.shards = find_shards(directory, "train", expected_tokenizer_sha256)
        self.windows = TokenWindows(self.shards, seq_len)
        self.vocab_size = self.shards[0].vocab_size
        self.tokenizer_sha256 = self.shards[0].tokenizer_sha256
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch, self.position = 0, 0
        self._order = WindowOrder(len(self.windows), seed, self.epoch)

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
        return self.windows.batch(self._order[np.arange(first, first + self.batch_size)])

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "shards": shard_list(self.shards)}

    def load_state_dict(self, state: dict, allow_shard_change: bool = False) -> None:
        """Continue from `state`. Another shard list would silently change the order of everything that
        follows, so it is an error unless `allow_shard_change` (then the cursor goes on over the new list)."""
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
