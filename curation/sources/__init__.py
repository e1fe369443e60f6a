"""LLaMA's sources besides CommonCrawl and C4 (the LLaMA paper, section 2.1): GitHub, Wikipedia,
books, arXiv and Stack Exchange, one module each, no Spark.

Each module declares its source once, as a `Source`: how one input file becomes documents, the
per-document stages that clean and filter them (each counting its drops by reason), its settings and
its own columns. The engine that runs a source on Spark, resumable per input file, is
`jobs.sources`; `python -m jobs.sources.NAME --input PATH… --output DIR` runs one.

Optional parts of a declaration, each with a default that does nothing:
- `inputs`: what a location the user gave holds (Stack Exchange: a dump's folder → its sites' archives);
- `left_out`: the inputs not to read, each with the reason (Stack Exchange: all but the 28 largest
  sites), decided on the driver from the inputs' names and sizes only;
- `run_wide`: steps over every document of the run at once (exact dedup across inputs, near-duplicate
  books), each a `RunWideStep`: the engine computes a small key per document where it is read, and the
  step reads only those keys (never the text) once every input is read; see `RunWideStep`.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import xxhash

from curation.pipeline import Stage


@dataclass(frozen=True)
class RunWideStep:
    """A step over all the documents of a run, across inputs: which documents to drop, decided from
    one small key per document.

    The input's task computes `key(doc)` for every document it writes (after the source's stages) and
    stores the keys beside the input's documents (`DIR/inputs/ID.keys.parquet`: the document's row and
    one column per step). Once every input is read, the engine runs the step's `kind` over the keys of
    the whole run (a Spark job that reads no text), drops the documents it names, counted in stats.json
    under the step's `name` with reason `reason`, and writes the others to `DIR/documents/`. Steps run in
    order, each over the documents the previous ones kept; a rerun that adds inputs runs them again over
    all keys, reading no input again.

    Kinds (`jobs.sources.run_wide.KINDS`):
    - "exact_duplicates": documents whose keys are equal are one document; the first (in the order of
      the inputs given, then of the documents in the input) is kept. A key of None is never a duplicate.
      `EXACT_DUPLICATES` below keys on a hash of `raw_content`; GitHub's exact file dedup can key on its
      `content_hash` field (`key=lambda doc: doc["content_hash"], key_type=pa.string()`).
    - "near_duplicate_books": the key is a book's summary (`curation.sources.books.summary_key`), the
      decision `curation.sources.books.near_duplicates` with the step's `settings`; each dropped book
      is listed in stats.json with the book kept in its place.
    A new kind is a function in jobs/sources/run_wide.py, registered in its KINDS by name.

    `settings` are what the kind decides with (and the key is computed with): a run whose steps'
    settings differ from those an input's keys were made with reads that input again."""
    name: str  # its stage name in stats.json
    kind: str  # how the engine decides over the keys: a name in jobs.sources.run_wide.KINDS
    key: Callable[[dict], Any]  # a document's key, computed where the document is read
    key_type: pa.DataType  # its Arrow type in the stored keys
    reason: str = "duplicate"  # the drop reason of the documents it drops
    settings: Any = None  # a frozen settings dataclass, or None

    @property
    def identity(self) -> str:
        """The step's name and a hash of its settings: what an input's stored keys were made for."""
        if self.settings is None:
            return self.name
        return f"{self.name}@{xxhash.xxh64_hexdigest(repr(self.settings).encode())}"


def content_hash(doc: dict) -> bytes:
    """128 bits of XXH3 of the document's text: equal texts, equal keys (a false match among 10^12
    documents has a chance of about 10^-15)."""
    return xxhash.xxh3_128_digest(doc["raw_content"].encode("utf-8"))


EXACT_DUPLICATES = RunWideStep("exact_dedup", "exact_duplicates", content_hash, pa.binary())


def each_location(location: str) -> list[str]:
    """A location the user gave is one input (the default of `Source.inputs`)."""
    return [location]


def none_left_out(sizes: dict[str, int], settings: Any) -> dict[str, str]:
    """Every input is read (the default of `Source.left_out`)."""
    return {}


def no_run_wide_steps(settings: Any) -> list[RunWideStep]:
    return []


@dataclass(frozen=True)
class Source:
    """What the engine needs to know of a source."""
    name: str  # the job's name (`jobs.sources.NAME`) and every document's `source` column
    settings: type  # its settings dataclass (`curation.settings.setting` fields)
    # The documents of one input (a location of `curation.storage`), streaming, each a dict with
    # `raw_content` and the source's own fields; a record it cannot use is counted in the Counter
    # as `dropped.REASON` and skipped; an input it cannot read at all raises (it fails alone).
    read: Callable[[str, Any, Counter], Iterator[dict]]
    stages: Callable[[Any], list[Stage]]  # the per-document stages, in order, built from the settings
    fields: tuple[str, ...]  # its own columns, each in `curation.schema.FIELDS`
    # The inputs a location given on the command line holds (after globs are expanded), in order.
    inputs: Callable[[str], list[str]] = field(default=each_location)
    # {input: why it is not read} from {input: bytes} and the settings; the others are read.
    left_out: Callable[[dict[str, int], Any], dict[str, str]] = field(default=none_left_out)
    run_wide: Callable[[Any], list[RunWideStep]] = field(default=no_run_wide_steps)  # from the settings


def load(name: str) -> Source:
    """The `SOURCE` of `curation.sources.NAME` (how a Spark task finds the source it runs)."""
    return importlib.import_module(f"curation.sources.{name}").SOURCE
