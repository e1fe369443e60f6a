"""The run directory: where each part of a run lives, the Arrow schemas of its files, its markers
and what a killed run left behind.

    RUN/_ccurate_run.json         the claim: a directory of the curate job (curation.storage)
    RUN/config.json               the effective settings, the inputs, library versions
    RUN/segments/ID.parquet       phase 1: an input's extracted documents (+ line hashes); ID.json, written
                                  last, marks it done and holds its counts
    RUN/groups/group=N/           phase 2: a dedup group's annotated documents and MinHash signatures, or
                                  only its marker (the files it wrote in curated/); duplicated_lines.npy
    RUN/curated/language=xx/bucket=yy/*.parquet   the result, published by curated/_PUBLISHED.json
    RUN/manifest.json, stats.json, report.html, cutoff.csv (this run's percentiles), logs/
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import PurePosixPath as Path

import pyarrow as pa

from curation import schema, storage
from curation.dedup_lines import LINE_HASHES
from curation.redact import redact_config
from curation.stages import ROW_STAGES
from curation.warc import cc_segment
from jobs.minhash import ID as DOC_ID
from jobs.minhash import SIGNATURE, SIGNATURES

GROUP = "group"  # a document's dedup group: RUN/groups/group=N/
CURATED_FILES = "curated_files"  # in a group's marker: its files in RUN/curated/, when it wrote them there
ROW_GROUP_DOCS = 1000  # documents per Parquet row group, phase 1's and phase 2's

# Phase 1's files: the extracted documents, and their line hashes when line dedup is on.
EXTRACTED = schema.arrow_schema(schema.EXTRACTED)
LINE_HASHES_FIELD = pa.field(LINE_HASHES, pa.list_(pa.int64()))
SEGMENT_WITH_HASHES = EXTRACTED.append(LINE_HASHES_FIELD)
# Phase 2's columns before MinHash: phase 1's, then those the registered stages write.
ANNOTATED = schema.arrow_schema(schema.ordered([*schema.EXTRACTED, *(f for stage in ROW_STAGES for f in stage.writes)]))
ANNOTATED_WITH_ID = ANNOTATED.append(pa.field(DOC_ID, pa.int64()))
# What a group keeps: the annotated documents and their MinHash signatures (a column of its own, so
# that the run-wide clustering reads no text).
STORED = ANNOTATED_WITH_ID.append(SIGNATURES.field(SIGNATURE))
# A curated file's columns: the language and bucket are its directories.
PARTITIONS = ["language", "bucket"]
CURATED = pa.schema([field for field in ANNOTATED if field.name not in PARTITIONS])


def segment_id(source: str) -> str:
    """A file name for an input's output: readable, unique per input, and the same for a CommonCrawl
    path whichever mirror serves it (so a run resumes after a change of base URL)."""
    key = cc_segment(source) if "crawl-data/" in source else source
    name = os.path.basename(source.rstrip("/")).split("?")[0]
    for suffix in (".gz", ".warc", ".wet"):
        name = name.removesuffix(suffix)
    return f"{name[:80]}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class RunDirectory:
    """A run directory (a local path or URI of `curation.storage`): the locations of its parts."""
    root: str

    def path(self, *names: str) -> str:
        return storage.join(self.root, *names)

    @property
    def segments(self) -> str:
        return self.path("segments")

    @property
    def groups(self) -> str:
        return self.path("groups")

    @property
    def curated(self) -> str:
        return self.path("curated")

    @property
    def checkpoints(self) -> str:  # the MinHash rounds' edges, removed at the end of a run
        return self.path("checkpoints")

    def segment_file(self, source: str) -> str:
        """Where phase 1 keeps an input's documents."""
        return storage.join(self.segments, f"{segment_id(source)}.parquet")

    def segment_marker(self, source: str) -> str:
        """An input's counts, written last: it marks the input done."""
        return storage.join(self.segments, f"{segment_id(source)}.json")

    def is_done(self, source: str) -> bool:
        return storage.exists(self.segment_marker(source))

    def done(self, inputs: list[str]) -> set[str]:
        """The inputs whose segments are done, from one listing of the folder (not a request per input)."""
        markers = {Path(location).name for location in storage.list_files(self.segments, "*.json")}
        return {source for source in inputs if f"{segment_id(source)}.json" in markers}

    def segment_stats(self, source: str) -> dict:
        """The counts phase 1 stored with a done input (they survive a resume)."""
        return json.loads(storage.read_text(self.segment_marker(source)))["stages"]

    def group(self, group: int) -> str:
        return storage.join(self.groups, f"{GROUP}={group}")

    def duplicated_lines_file(self, group: int) -> str:
        return storage.join(self.group(group), "duplicated_lines.npy")

    def stored_group(self, group: int, segments: list[str], fingerprint: str) -> dict | None:
        """The marker of a group stored by an earlier run from the same segments and the same
        fingerprint (so the same documents), else None."""
        marker = storage.published_marker(self.group(group))
        about = (marker or {}).get("about", {})
        same = about.get("segments") == [segment_id(s) for s in segments] and about.get("fingerprint") == fingerprint
        return marker if same else None

    def curated_files(self, marker: dict) -> dict[str, int]:
        """{file: rows} of the curated files a group's marker lists (it wrote them there), else {}."""
        return storage.locations(self.curated, marker["about"].get(CURATED_FILES, {}))

    def write_json(self, name: str, value) -> None:
        """RUN/name as indented JSON, secrets redacted (dicts keep their order: stages in pipeline order)."""
        storage.write_text(self.path(name), json.dumps(redact_config(value), indent=2))

    def read_json(self, name: str) -> dict | None:
        return json.loads(storage.read_text(self.path(name))) if storage.exists(self.path(name)) else None

    def remove_leftovers(self) -> None:
        """What a killed run wrote and never published, so never read: its temporary files, curated files
        that no marker lists (the curated one, or a group's that wrote them), its checkpoints. One run
        per directory."""
        storage.remove_temporaries(self.root)
        storage.remove_temporaries(self.segments)
        groups = storage.list_directories(self.groups)
        made = {file for group in groups if (marker := storage.published_marker(group))
                for file in self.curated_files(marker)}
        storage.remove_unpublished(self.curated, keep=made)
        for group in groups:
            storage.remove_unpublished(group)
        storage.delete(self.checkpoints)
