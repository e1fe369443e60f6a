"""Training batches from LLaMA's mixture: the shards `make mixture` built per source (settings:
tokenizer.mixture.MixtureSettings), drawn by the sources' shares.

The schedule: the training windows of a run are one sequence, all steps and ranks together, and each window of
it goes to the source furthest below its share of the windows so far (ties: the first in Table 1's order). At
every point of the run each source's count is then within one window of its share (a share of tokens too: the
windows are equal), whatever the batch size. Each source has a cursor (epoch, position) over its windows in an
order drawn from (seed, source, epoch) (trainer.data.WindowOrder); a source at the end of its windows starts its
next epoch in a new order. A global batch is the next batch_size × world windows of the sequence, and rank r
reads its r-th slice of it. Checkpoints record, per source, the windows drawn, the epoch and the position, so a
resumed run draws exactly the windows an unstopped one would have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import torch

from curation import storage
from curation.settings import load_settings
from tokenizer.mixture import SOURCES, MixtureSettings, plan
from tokenizer.shards import ShardError
from trainer.data import TokenWindows, WindowOrder, find_shards, shard_list


def assign_windows(shares: np.ndarray, drawn: np.ndarray, count: int) -> np.ndarray:
    """The source of each of the next `count` windows, given the windows drawn so far per source: each goes to
    the source furthest below its share of all the windows (ties: the first), which keeps every source within
    one window of its share at every point."""
    drawn = np.array(drawn, dtype=np.int64)
    total = int(drawn.sum())
    chosen = np.empty(count, dtype=np.int64)
    for i in range(count):
        chosen[i] = int(np.argmax((total + i + 1) * shares - drawn))
        drawn[chosen[i]] += 1
    return chosen


def source_seed(seed: int, name: str) -> int:
    """A seed of the source's own for its window order: two sources never walk their windows alike."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{name}".encode()).digest()[:8], "little")


class SourceCursor:
    """One source's windows in an order drawn from (seed, epoch); the cursor is (epoch, position)."""

    def __init__(self, windows: TokenWindows, seed: int):
        self.windows, self.seed = windows, seed
        self.restore(0, 0)

    def restore(self, epoch: int, position: int) -> None:
        self.epoch, self.position = epoch, min(position, len(self.windows))
        self._order = WindowOrder(len(self.windows), self.seed, epoch)

    def take(self) -> int:
        """The next window's index; at the end of the windows, the first of the next epoch's order."""
        if self.position == len(self.windows):
            self.restore(self.epoch + 1, 0)
        self.position += 1
        return self._order[self.position - 1]

    @property
    def epochs(self) -> float:
        """Passes over the source so far, the current one in part."""
        return self.epoch + self.position / len(self.windows)


def read_mixture(settings_file: str) -> tuple[MixtureSettings, dict[str, float], dict[str, str]]:
    """(the mixture's settings, the share each source is drawn with, the sources left out and why): the shares
    of the settings file over the sources `make mixture` built (its output's mixture.json)."""
    settings = load_settings(MixtureSettings, settings_file)
    built_file = storage.join(settings.output, "mixture.json")
    if not storage.exists(built_file):
        raise FileNotFoundError(f"no {built_file}: run `make mixture MIXTURE={settings_file}` first")
    built = json.loads(storage.read_text(built_file))
    not_built = {name: f"no shards in {settings.output} (`make mixture` builds them)" for name in SOURCES
                 if name not in built["sources"] and name not in built["left_out"]}
    plan(settings, not_built)  # a source with a share that make mixture never saw: an error, unless missing=drop
    # What make mixture left out (missing=drop there) stays out, whatever this file's `missing` says.
    shares, left_out = plan(dataclasses.replace(settings, missing="drop"), {**built["left_out"], **not_built})
    return settings, shares, left_out


class MixtureLoader:
    """Batches whose windows come from the mixture's sources by their shares, each rank its slice of a global
    batch (the interface of trainer.data.TrainLoader)."""

    def __init__(self, settings_file: str, seq_len: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        self.settings, self.shares, self.left_out = read_mixture(settings_file)
        self.names = list(self.shares)
        self.share_vector = np.array([self.shares[name] for name in self.names])
        self.shards = {name: find_shards(self.directory(name), "train") for name in self.names}
        tokenizers = {name: (shards[0].vocab_size, shards[0].tokenizer_sha256) for name, shards in self.shards.items()}
        if len(set(tokenizers.values())) > 1:
            raise ShardError(f"the sources' shards were made with different tokenizers: {self.settings.output} mixes "
                             f"shards of several `make mixture` runs")
        self.vocab_size, self.tokenizer_sha256 = tokenizers[self.names[0]]
        self.windows = {name: self.source_windows(name, seq_len) for name in self.names}
        self.cursors = {name: SourceCursor(self.windows[name], source_seed(seed, name)) for name in self.names}
        self.drawn = np.zeros(len(self.names), dtype=np.int64)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size

    def directory(self, name: str) -> str:
        return storage.join(self.settings.output, "shards", name)

    def source_windows(self, name: str, seq_len: int) -> TokenWindows:
        try:
            return TokenWindows(self.shards[name], seq_len)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None

    @property
    def num_windows(self) -> int:
        return sum(len(windows) for windows in self.windows.values())

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of the next global batch; every rank moves every cursor over the whole of it."""
        sources = assign_windows(self.share_vector, self.drawn, self.batch_size * self.world_size)
        picks = [(self.names[s], self.cursors[self.names[s]].take()) for s in sources]
        np.add.at(self.drawn, sources, 1)
        mine = picks[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        rows = [self.windows[name].batch([index]) for name, index in mine]
        return torch.cat([x for x, _ in rows]), torch.cat([y for _, y in rows])

    def validation_sets(self) -> dict[str, tuple[float, str]]:
        """{source: (share, its shard folder)} of the sources with validation shards."""
        return {name: (self.shares[name], self.directory(name)) for name in self.names
                if storage.list_files(self.directory(name), "val-*.idx")}

    def state_dict(self) -> dict:
        return {"seed": self.seed, "shares": self.shares,
                "sources": {name: {"drawn": int(self.drawn[i]), "epoch": self.cursors[name].epoch,
                                   "position": self.cursors[name].position, "shards": shard_list(self.shards[name])}
                            for i, name in enumerate(self.names)}}

    def load_state_dict(self, state: dict, allow_shard_change: bool = False) -> None:
        """Continue from `state`. Other sources or shares change every draw that follows: an error. Other shards
        too, unless `allow_shard_change` (the cursors then go on over the new windows)."""
        if "sources" not in state:
            raise ValueError("the checkpoint was trained on one shard folder (data_dir), not on a mixture: train into "
                             "another out_dir")
        if state["shares"] != self.shares:
            raise ValueError(f"the mixture's shares changed since the checkpoint ({state['shares']}, now "
                             f"{self.shares}): train into another out_dir")
        for i, name in enumerate(self.names):
            saved = state["sources"][name]
            if [tuple(s) for s in saved["shards"]] != [tuple(s) for s in shard_list(self.shards[name])] and \
                    not allow_shard_change:
                raise ValueError(f"the shards of {name} changed since the checkpoint; set allow_shard_change=true to "
                                 f"continue in a new data order")
            self.drawn[i] = saved["drawn"]
            self.cursors[name].seed = source_seed(state["seed"], name)
            self.cursors[name].restore(saved["epoch"], saved["position"])
        self.seed = state["seed"]

    def table(self, windows_at_end: int) -> list[dict]:
        """Per source: tokens available, share planned and drawn, epochs so far and at the run's end (of
        `windows_at_end` windows), and LLaMA's epochs."""
        total = max(1, int(self.drawn.sum()))
        return [{"source": name, "train_tokens": sum(s.num_tokens for s in self.shards[name]),
                 "windows": len(self.windows[name]), "planned": self.shares[name], "drawn": int(self.drawn[i]) / total,
                 "epochs": self.cursors[name].epochs,
                 "epochs_at_end": windows_at_end * self.shares[name] / len(self.windows[name]),
                 "llama_epochs": getattr(self.settings, name).llama_epochs}
                for i, name in enumerate(self.names)]
