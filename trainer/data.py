"""Training batches from token shards (`tokenizer/shards.py`), memory-mapped.

The token stream of each shard (documents back to back, each starting with BOS) is cut into
windows of `seq_len + 1` tokens that overlap by one, so every token is a target exactly once per
epoch. An epoch visits all windows of all shards in an order drawn from (seed, epoch); the position
in that order is the data cursor. The cursor goes into checkpoints, so a resumed run reads exactly
the tokens the uninterrupted run would have read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tokenizer.shards import ShardError, ShardReader


def open_shards(directory: str | Path, split: str, expected_tokenizer_sha256: bytes | None = None) -> list[ShardReader]:
    """Every published `{split}-*.idx` shard in `directory`; all must share one tokenizer."""
    paths = sorted(Path(directory).glob(f"{split}-*.idx"))
    if not paths:
        raise FileNotFoundError(f"no {split}-*.idx shards in {directory} (run `make shards` first)")
    shards = [ShardReader(p.with_suffix(""), expected_tokenizer_sha256) for p in paths]
    first = shards[0]
    for shard in shards[1:]:
        if (shard.vocab_size, shard.tokenizer_sha256) != (first.vocab_size, first.tokenizer_sha256):
            raise ShardError(f"{shard.idx_path}: tokenizer or vocabulary differs from {first.idx_path}")
    return shards


class TokenWindows:
    """Windows of `seq_len + 1` tokens over a list of shards, addressed by one global index."""

    def __init__(self, shards: list[ShardReader], seq_len: int):
        self.shards = shards
        self.seq_len = seq_len
        per_shard = [max(0, (s.num_tokens - 1) // seq_len) for s in shards]
        self.starts = np.cumsum([0] + per_shard)  # first global window of each shard
        if self.starts[-1] == 0:
            raise ValueError(f"shards hold fewer than {seq_len + 1} tokens: nothing to train on")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def window(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        start = (index - int(self.starts[shard])) * self.seq_len
        return self.shards[shard].tokens[start:start + self.seq_len + 1]

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(np.stack([self.window(int(i)) for i in indices]).astype(np.int64))
        return rows[:, :-1], rows[:, 1:]


class TrainLoader:
    """Shuffled training batches with a resumable cursor; each DDP rank takes its slice of a batch."""

    def __init__(self, directory: str | Path, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, expected_tokenizer_sha256: bytes | None = None):
        self.shards = open_shards(directory, "train", expected_tokenizer_sha256)
        self.windows = TokenWindows(self.shards, seq_len)
        self.vocab_size = self.shards[0].vocab_size
        self.tokenizer_sha256 = self.shards[0].tokenizer_sha256
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.windows))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `batch_size` windows for this rank; all ranks advance the cursor together."""
        global_batch = self.batch_size * self.world_size
        if global_batch > len(self.windows):
            raise ValueError(f"a batch of {global_batch} windows exceeds the {len(self.windows)} in the data")
        if self.position + global_batch > len(self._order):
            # Drop the epoch's ragged tail rather than mixing two epochs in one batch.
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order()
        chosen = self._order[self.position:self.position + global_batch]
        self.position += global_batch
        return self.windows.batch(chosen[self.rank * self.batch_size:(self.rank + 1) * self.batch_size])

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._epoch_order()


def val_batches(directory: str | Path, seq_len: int, batch_size: int, max_batches: int,
                expected_tokenizer_sha256: bytes | None = None):
    """The same first `max_batches` batches in shard order every time, so evaluations compare."""
    windows = TokenWindows(open_shards(directory, "val", expected_tokenizer_sha256), seq_len)
    for first in range(0, min(len(windows), max_batches * batch_size), batch_size):
        yield windows.batch(range(first, min(first + batch_size, len(windows))))
