"""Phase 2, per dedup group (`line_dedup.group_size` consecutive inputs), as cc_net's two passes: a task
per group finds the lines duplicated in it from phase 1's stored hashes, then Python tasks of about
`partitions.text_bytes` of text each (`units`) read their pieces of phase 1's files, remove those lines,
run the row-wise stages and the MinHash signatures and write the group's files themselves: from file
to file, no text through the JVM or a shuffle. A group is published by its marker in
RUN/groups/group=N/ with its segments, the fingerprint of what made it and its counts; a rerun makes
only the groups whose segments or fingerprint changed.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import schema, storage
from curation.dedup_lines import (
    LINE_HASHES,
    DuplicateLinesRemover,
    document_counts,
    document_hashes,
    duplicated_hashes,
    hashes_of,
)
from curation.minhash import make_hasher, signature_settings
from curation.pipeline import Stage, merge_stats, run_stages, stage_stats
from curation.settings import as_dict
from curation.stages import ROW_STAGES, model_files
from jobs.curate.layout import (
    ANNOTATED,
    ANNOTATED_WITH_ID,
    CURATED,
    CURATED_FILES,
    EXTRACTED,
    PARTITIONS,
    ROW_GROUP_DOCS,
    STORED,
    RunDirectory,
    segment_id,
)
from jobs.curate.phase1 import SMALLEST_TASK_SHARE, guided_size
from jobs.curate.units import Piece, RowGroupSizes, Unit, plan_units, text_bytes
from jobs.minhash import ID as DOC_ID
from jobs.minhash import SIGNATURE, SIGNATURES, signature_column
from jobs.spark import counting_tasks
from jobs.storage_io import write_partitioned

if TYPE_CHECKING:
    from jobs.curate.run import Run


def fingerprint(settings, stages: tuple[type[Stage], ...], direct: bool) -> str:
    """What a group's stored documents depend on besides its segments: line dedup's settings, each
    registered stage's (whether it runs, its settings, its models' files by size and modification
    time), the signatures' parameters, and where the documents went (`direct`: straight into the
    curated layout). A group stored under another fingerprint is made again."""
    made_by: dict = {"line_dedup": as_dict(settings.line_dedup), "curated_directly": direct,
                     "signatures": signature_settings(settings.minhash)}
    for stage in ROW_STAGES:
        section = getattr(settings, stage.name)
        made_by[stage.name] = {"runs": stage in stages, "settings": as_dict(section), "models": {
            name: [[str(path), path.stat().st_size, path.stat().st_mtime_ns] for path in files]
            for name, files in model_files(stage, section).items()}}
    return hashlib.sha1(json.dumps(made_by, sort_keys=True).encode()).hexdigest()


def row_stages(settings, stages: tuple[type[Stage], ...]) -> list[Stage]:
    """The row-wise stages that run, each built from its own section of the settings."""
    return [stage(getattr(settings, stage.name)) for stage in stages]


def write_duplicated_lines(run: RunDirectory, group: int, sources: list[str]) -> float:
    """cc_net's hashes step for one group: the line hashes found in more than one of its documents,
    from phase 1's stored hashes (computed from the text for a segment stored without them), to the
    group's folder (read by each of its units). Memory: the distinct hashes of the group, as cc_net's
    in-memory set of a group. Returns its seconds."""
    started = time.perf_counter()
    parts = []
    for source in sources:
        with storage.open_input(run.segment_file(source)) as f:
            parquet = pq.ParquetFile(f)
            if LINE_HASHES in parquet.schema_arrow.names:
                documents = hashes_of(parquet.read(columns=[LINE_HASHES]).column(LINE_HASHES))
            else:
                documents = [document_hashes(text or "") for text in parquet.read(["raw_content"])["raw_content"]
                             .to_pylist()]
        parts.append(document_counts(documents))
    buffer = io.BytesIO()
    np.save(buffer, duplicated_hashes(parts))
    storage.write_bytes(run.duplicated_lines_file(group), buffer.getvalue())
    return time.perf_counter() - started


def read_pieces(pieces: list[Piece], with_hashes: bool, with_ids: bool) -> Iterator[dict]:
    """The documents of `pieces` of phase 1's files, each with, `with_ids`, its `_doc_id` (MinHash's
    key) and, `with_hashes` where phase 1 stored them, its line hashes; one row group in memory at a
    time."""
    for path, row_group, first, stop in pieces:
        with storage.open_input(path) as f:
            parquet = pq.ParquetFile(f)
            hashed = with_hashes and LINE_HASHES in parquet.schema_arrow.names
            rows = parquet.read_row_group(row_group, columns=EXTRACTED.names + [LINE_HASHES] * hashed)
        rows = rows.slice(first, stop - first)
        hashes = hashes_of(rows.column(LINE_HASHES)) if hashed else itertools.repeat(None)
        for doc, doc_hashes in zip(rows.select(EXTRACTED.names).to_pylist(), hashes):
            if with_ids:
                doc[DOC_ID] = schema.doc_id(doc["url"], doc["raw_content"])
            if doc_hashes is not None:
                doc[LINE_HASHES] = doc_hashes
            yield doc


def annotated_batches(unit: Unit, run: RunDirectory, settings, stages: list[Stage], with_ids: bool):
    """A unit's documents through line dedup (against its group's duplicated lines) and `stages`, in
    batches of a row group's size."""
    group, pieces = unit
    if settings.line_dedup.enabled:
        duplicated = np.load(io.BytesIO(storage.read_bytes(run.duplicated_lines_file(group))))
        stages.insert(0, DuplicateLinesRemover(duplicated, settings.line_dedup))
    internal = frozenset([DOC_ID])
    docs = run_stages(read_pieces(pieces, settings.line_dedup.enabled, with_ids), stages)
    while batch := list(itertools.islice(docs, ROW_GROUP_DOCS)):
        for doc in batch:
            schema.check_document(doc, internal)
            doc.setdefault("bucket", "all")
        yield batch


def annotate_unit(unit: Unit, run: RunDirectory, made: str, settings, stages: tuple[type[Stage], ...],
                  direct: bool) -> dict:
    """One task of phase 2, in Python from file to file: its documents annotated (`annotated_batches`)
    and written as one file of the group's folder with their MinHash signatures, or, `direct` (nothing
    is computed across groups: MinHash off, the cutoffs with the models), straight into the curated
    layout (language=xx/bucket=yy/, a file per value met). Files are named after the unit's first
    piece and `made` (this making of the groups: a retried task writes the same files, and a file that
    an earlier marker lists is never overwritten). Returns the files, their rows and the stages'
    counts; read from the job's result, counts are those of the successful attempt only."""
    group, pieces = unit
    running = row_stages(settings, stages)
    path, row_group, first, _ = pieces[0]
    name = f"part-{Path(path).stem}-{row_group:04d}-{first:05d}-{made}"
    batches = annotated_batches(unit, run, settings, running, with_ids=not direct)
    counts: dict = {}
    if direct:
        files = write_partitioned((pa.RecordBatch.from_pylist(docs, ANNOTATED) for docs in batches), run.curated,
                                  PARTITIONS, CURATED, name)
    else:
        files = write_with_signatures(batches, storage.join(run.group(group), f"{name}.zstd.parquet"),
                                      settings.minhash, counts)
    return {"group": group, "files": files, "stages": {**stage_stats(running), **counts}}


def write_with_signatures(batches, location: str, minhash, counts: dict) -> dict[str, int]:
    """The annotated documents with their MinHash signatures (null with MinHash off) as one file;
    the signatures' seconds go to counts["minhash"]."""
    # Only with MinHash on: resolving its bands imports datasketch and scipy (0.7 s of CPU a worker).
    params = minhash.resolved() if minhash.enabled else None
    hasher = make_hasher(params) if params else None
    seconds, rows = 0.0, 0
    with storage.atomic_output(location) as stream, pq.ParquetWriter(stream, STORED, compression="zstd") as out:
        for docs in batches:
            table = pa.Table.from_pylist(docs, ANNOTATED_WITH_ID)
            started = time.perf_counter()
            signatures = signature_column([doc.get("raw_content") or "" for doc in docs], params, hasher) \
                if hasher else pa.nulls(len(docs), SIGNATURES.field(SIGNATURE).type)
            seconds += time.perf_counter() - started
            out.write_table(table.append_column(SIGNATURES.field(SIGNATURE), signatures))
            rows += len(docs)
    if hasher:
        counts["minhash"] = {"signature_seconds": seconds}
    return {location: rows}


def make_groups(run: Run, groups: dict[int, list[str]], sizes: RowGroupSizes, fingerprint: str,
                direct: bool, stats: dict) -> dict[int, dict]:
    """Phase 2 of `groups` ({group: its done segments}): their duplicated lines, then their units;
    each group published with its counts. Records its Spark tasks and units in `stats`; returns
    {group: marker}."""
    context, settings, tasks = run.spark.sparkContext, run.settings, stats["tasks"]
    counts: dict[int, dict] = {group: {} for group in groups}
    if settings.line_dedup.enabled:
        directory = run.directory
        with counting_tasks(run.spark, "line_dedup", tasks):
            seconds = context.parallelize(sorted(groups.items()), len(groups)).map(
                lambda item: (item[0], write_duplicated_lines(directory, *item))).collect()
        for group, group_seconds in seconds:  # the hashes step's time, counted with the group's line dedup
            counts[group]["line_dedup"] = {"seconds": group_seconds}
    units = plan_annotation(run, groups, sizes)
    stats["partitions"] = {"input_text_bytes": text_bytes(run.directory, groups, sizes), "annotate": len(units)}
    made, directory, stages = uuid.uuid4().hex[:12], run.directory, run.stages
    with counting_tasks(run.spark, "annotate", tasks):
        results = context.parallelize(units, max(1, len(units))).map(
            lambda unit: annotate_unit(unit, directory, made, settings, stages, direct)).collect()
    written: dict[int, dict[str, int]] = {group: {} for group in groups}
    for result in results:
        merge_stats(counts[result["group"]], result["stages"])
        written[result["group"]].update(result["files"])
    markers = {}
    for group, sources in groups.items():
        about = {"segments": [segment_id(s) for s in sources], "fingerprint": fingerprint, "stages": counts[group]}
        if direct:  # its files are curated/'s, named relative to it; the group's folder keeps the marker
            about[CURATED_FILES] = storage.relative_names(run.directory.curated, written[group])
        markers[group] = storage.publish_files(run.directory.group(group), {} if direct else written[group], about)
    return markers


def plan_annotation(run: Run, groups: dict[int, list[str]], sizes: RowGroupSizes) -> list[Unit]:
    """Units of at most `partitions.text_bytes` of text, smaller towards the stage's end (`guided_size`)."""
    cores = run.spark.sparkContext.defaultParallelism
    largest = run.settings.partitions.text_bytes
    smallest = min(largest, text_bytes(run.directory, groups, sizes) / (SMALLEST_TASK_SHARE * cores))
    return plan_units(run.directory, groups, sizes,
                      lambda remaining: max(1.0, guided_size(remaining, cores, largest, smallest)))
