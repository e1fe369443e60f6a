"""LLaMA's sources besides CommonCrawl and C4 (the LLaMA paper, section 2.1): GitHub, Wikipedia,
books, arXiv and Stack Exchange, one module each, no Spark.

Each module declares its source once, as a `Source`: how one input file becomes documents, the
per-document stages that clean and filter them (each counting its drops by reason), its settings and
its own columns. The engine that runs a source on Spark, resumable per input file, is
`jobs.sources`; `python -m jobs.sources.NAME --input PATH… --output DIR` runs one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from curation.pipeline import Stage


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
