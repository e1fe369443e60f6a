"""Stages over documents, datatrove style: each stage takes documents and gives documents, and
counts what came in, what went out and why the rest was dropped. Running stages is the engine's
job (`run_stages` here, Spark's `mapPartitions` in `jobs/`), not the stages'.

A document is a plain dict with CCNet's field names (`url`, `raw_content`, `language`, …).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelFiles:
    """A model a stage reads, located by one of its settings."""
    setting: str  # the field of the stage's settings that says where the model is
    files: Callable[[str | None], list[Path]]  # its files at that location; [] when no usable model is there
    train: str | None = None  # the make target that trains it; None: it ships with a package, the stage needs it


class Stage:
    """One step of the pipeline. Subclasses implement `process`, call `self.drop(reason)` for each
    document they do not yield, and list in `writes` the fields (of `curation.schema`) they set.
    A stage that a job registers (`curation.stages`) also names its `settings_class` (built from
    the settings section of its `name`) and the `models` it reads."""

    name = "stage"
    writes: tuple[str, ...] = ()
    settings_class: type | None = None
    models: tuple[ModelFiles, ...] = ()

    def __init__(self) -> None:
        self.stats: Counter = Counter()

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        raise NotImplementedError

    def drop(self, reason: str, count: int = 1) -> None:
        self.stats[f"dropped.{reason}"] += count

    def __call__(self, docs: Iterable[dict]) -> Iterator[dict]:
        """`process`, counting documents in and out and the seconds of this stage's own work:
        the time spent pulling from upstream stages is subtracted (datatrove's `track_time`)."""
        upstream = 0.0

        def counted(docs: Iterable[dict]) -> Iterator[dict]:
            nonlocal upstream
            docs = iter(docs)
            while True:
                pulled = time.perf_counter()
                doc = next(docs, _END)
                upstream += time.perf_counter() - pulled
                if doc is _END:
                    return
                self.stats["in"] += 1
                yield doc

        started = time.perf_counter()
        for doc in self.process(counted(docs)):
            self.stats["out"] += 1
            self.stats["seconds"] += time.perf_counter() - started - upstream
            yield doc
            started, upstream = time.perf_counter(), 0.0
        self.stats["seconds"] += time.perf_counter() - started - upstream


_END = object()


def run_stages(docs: Iterable[dict], stages: list[Stage]) -> Iterator[dict]:
    """Chains stages lazily: documents stream through, nothing is held."""
    for stage in stages:
        docs = stage(docs)
    yield from docs


def stage_stats(stages: list[Stage]) -> dict[str, dict]:
    """{stage name: {"in", "out", "seconds", "dropped": {reason: n}}} for the stats file."""
    return {stage.name: nest_counters(stage.stats) for stage in stages}


def nest_counters(counters: Counter | dict) -> dict:
    out: dict = {"in": 0, "out": 0, "dropped": {}}
    for key, value in counters.items():
        if key.startswith("dropped."):
            out["dropped"][key.removeprefix("dropped.")] = value
        else:
            out[key] = value
    return out


def merge_stats(into: dict, other: dict) -> dict:
    """Adds nested counters of `other` into `into`: numbers add, lists concatenate, dicts merge."""
    for key, value in other.items():
        if isinstance(value, dict):
            merge_stats(into.setdefault(key, {}), value)
        else:
            into[key] = into.get(key, type(value)()) + value
    return into
