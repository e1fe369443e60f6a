"""The curation job: CommonCrawl WARC/WET → text → line dedup → language ID → KenLM perplexity
→ Wikipedia-reference score → MinHash near-duplicate removal → Parquet by language and bucket.

    python -m jobs.curate --output DIR input.snapshot=2020-05 input.segments=2     (local mode)
    python -m jobs.curate --output DIR --input FILE_OR_URL…
    spark-submit jobs/curate.py --output DIR …                                      (any cluster)

Settings: `CurateSettings` below, one section per stage (defaults and meanings in the stage
modules; `--print-settings` lists them all), from an optional `--config` YAML and KEY=VALUE
arguments.

DIR is a local path or a URI (s3://, gs://, hdfs://: `curation.storage`); every file goes through
that layer, Spark's data included (`jobs.storage_io`), so no Hadoop connector is needed. A new DIR
is claimed (DIR/_ccurate_run.json); a non-empty one without that marker is refused (exit 2).
The run directory is resumable. Phase 1 reads and extracts each input (a few per Spark task, in a
child process of the task, streaming) into DIR/segments/ID.parquet with each document's line hashes,
published atomically with its stats (ID.json, written last, marks it done); a re-run skips done
segments and redoes failed or missing ones. Phase 2 works by dedup group (`line_dedup.group_size`
consecutive inputs), as cc_net's two passes: a task per group finds the lines duplicated in it from
the stored hashes, then Python tasks read, dedup, annotate and write the group's documents from file
to file (no text through the JVM or a shuffle): line dedup, the row-wise stages and MinHash
signatures, into DIR/groups/group=N/, published with the group's segments and a fingerprint of the
settings and models that made it; a rerun makes only the groups whose segments or fingerprint
changed (stats.json's `processed` says which, and the documents each stage saw). MinHash then
clusters every group's stored signatures (no text read), and the kept documents are written to
DIR/curated/ (language=xx/bucket=yy/*.parquet, zstd), published by DIR/curated/_PUBLISHED.json
written last (the files and their rows; the previous result's files are deleted after it). The
result equals a run from scratch. When nothing is computed across groups (MinHash off, the cutoffs
with the models), phase 2's tasks write the curated files themselves, each group's marker lists them,
and DIR/groups/ keeps no copy. What a killed run left unpublished is removed by the next run. A
stage whose model is not there (no `make lm`, no `make classifier`) is left out with a note, and its
columns stay empty (bucket `all`). Phase 2's tasks follow the data: at most `partitions.text_bytes` of
text each, smaller towards a stage's end (guided self-scheduling, as phase 1's).
DIR/manifest.json lists the segments and their state, DIR/stats.json the counts per stage and
reason and the Spark tasks each stage ran; DIR/config.json the effective settings and library versions.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import TaskContext
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from curation import schema, storage
from curation.c4 import C4Settings, C4Stage
from curation.commoncrawl import list_paths, select_segments, snapshot_name
from curation.dedup_lines import (
    LINE_HASHES,
    DuplicateLinesRemover,
    LineDedupSettings,
    document_counts,
    document_hashes,
    duplicated_hashes,
    hashes_of,
    line_hash_column,
)
from curation.extract import ExtractSettings, ExtractStage
from curation.langid import LanguageIdSettings, LanguageIdStage, default_model_path
from curation.minhash import MinHasher, MinHashSettings
from curation.perplexity import (
    HEAD_PERCENTILE,
    TAIL_PERCENTILE,
    PerplexitySettings,
    PerplexityStage,
    available_languages,
    bucket,
    load_cutoffs,
    read_cutoffs,
    write_cutoffs,
)
from curation.pipeline import merge_stats, nest_counters, run_stages, stage_stats
from curation.redact import install_redaction, redact_config, redact_text
from curation.report import pyplot, write_report
from curation.settings import (
    InputSettings,
    PartitionSettings,
    RunSettings,
    SettingsError,
    as_dict,
    describe,
    load_settings,
    section,
)
from curation.storage import NotARunDirectory
from curation.warc import ArchiveReader, ReadSettings, cc_segment
from curation.wikiref import WikirefSettings, WikirefStage
from jobs.dedup import ID as DOC_ID
from jobs.dedup import SIGNATURE, SIGNATURES, minhash_dedup, signature_column
from jobs.spark import claimed_session, counting_tasks, exit_now, stopping
from jobs.storage_io import read_parquet, write_parquet, write_partitioned

log = logging.getLogger("curate")
GROUP = "group"  # a document's dedup group: RUN/groups/group=N/ keeps the group's annotated documents
CURATED_FILES = "curated_files"  # in a group's marker: its files in RUN/curated/, when it wrote them there
# A task-local property the tests set to make phase 1 SIGKILL the process of each input whose path contains it.
FAILPOINT_KILL = "ccurate.failpoint.kill_segment"


@dataclass(frozen=True)
class CurateSettings:
    """Every setting of the curate job, one section per stage, in pipeline order."""
    input: InputSettings = section(InputSettings)
    read: ReadSettings = section(ReadSettings)
    extract: ExtractSettings = section(ExtractSettings)
    line_dedup: LineDedupSettings = section(LineDedupSettings)
    langid: LanguageIdSettings = section(LanguageIdSettings)
    c4: C4Settings = section(C4Settings)
    perplexity: PerplexitySettings = section(PerplexitySettings)
    wikiref: WikirefSettings = section(WikirefSettings)
    minhash: MinHashSettings = section(MinHashSettings)
    partitions: PartitionSettings = section(PartitionSettings)
    run: RunSettings = section(RunSettings)


# Phase 2's row-wise stages, in pipeline order; a stage whose model is missing is left out, and
# its columns stay empty. C4's rules need the language and, when they filter, change the text that
# perplexity, wikiref and MinHash then see (the LLaMA paper's order: after language ID).
ROW_STAGES = (LanguageIdStage, C4Stage, PerplexityStage, WikirefStage)
EXTRACTED = schema.arrow_schema(schema.EXTRACTED)
# Phase 1's files: the extracted documents, and their line hashes when line dedup is on.
LINE_HASHES_FIELD = pa.field(LINE_HASHES, pa.list_(pa.int64()))
SEGMENT_WITH_HASHES = EXTRACTED.append(LINE_HASHES_FIELD)
# Phase 2's columns before MinHash: phase 1's, then those the row-wise stages write.
ANNOTATED = schema.arrow_schema(schema.ordered([*schema.EXTRACTED, *(f for stage in ROW_STAGES for f in stage.writes)]))
ANNOTATED_WITH_ID = ANNOTATED.append(pa.field(DOC_ID, pa.int64()))
# What a group keeps: the annotated documents and their MinHash signatures (a column of its own, so
# that the run-wide clustering reads no text).
STORED = ANNOTATED_WITH_ID.append(SIGNATURES.field(SIGNATURE))
# A curated file's columns: the language and bucket are its directories.
PARTITIONS = ["language", "bucket"]
CURATED = pa.schema([field for field in ANNOTATED if field.name not in PARTITIONS])
ROW_GROUP_DOCS = 1000
# Python stages (phase 1's inputs, phase 2's units) are cut by guided self-scheduling (`guided_size`),
# down to tasks of 1/SMALLEST_TASK_SHARE of a core's share of the work.
SMALLEST_TASK_SHARE = 16
# A piece of phase 1's output: (file, row group, first row, end row); a unit: one task's pieces, of one group.
Piece = tuple[str, int, int, int]
Unit = tuple[int, list[Piece]]
SETTINGS_HEADER = """\
# Every setting of the curate job with its default and meaning: the output of
# `python -m jobs.curate --print-settings` (the defaults live in the stage modules; a test keeps this
# file current). Use a copy of the lines you change as `--config FILE`, or pass them as KEY=VALUE.
"""
LIBRARIES = ["pyspark", "fasttext", "warcio", "resiliparse", "pyarrow", "numpy"]


def segment_id(source: str) -> str:
    """A file name for an input's output: readable, unique per input, and the same for a CommonCrawl
    path whichever mirror serves it (so a run resumes after a change of base URL)."""
    key = cc_segment(source) if "crawl-data/" in source else source
    name = os.path.basename(source.rstrip("/")).split("?")[0]
    for suffix in (".gz", ".warc", ".wet"):
        name = name.removesuffix(suffix)
    return f"{name[:80]}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


# ---- phase 1: a few inputs per task, each published atomically ----------------------------------

def extract_segment(source: str, segments_dir: str, settings: CurateSettings) -> dict:
    """Streams one input through reading and extraction into ID.parquet; writes ID.json last."""
    seg = segment_id(source)
    reader = ArchiveReader(settings.read.max_payload_bytes, settings.read.max_line_bytes,
                           settings.input.retries, settings.input.backoff_seconds)
    extract = ExtractStage(settings.extract)
    hashed = settings.line_dedup.enabled  # cc_net's first dedup pass, done while the text is at hand
    started = time.time()
    with storage.atomic_output(storage.join(segments_dir, seg + ".parquet")) as out:
        with pq.ParquetWriter(out, SEGMENT_WITH_HASHES if hashed else EXTRACTED, compression="zstd") as writer:
            batch: list[dict] = []
            for doc in run_stages(reader.read(source), [extract]):
                batch.append(doc)
                if len(batch) == ROW_GROUP_DOCS:
                    writer.write_table(segment_table(batch, hashed))
                    batch.clear()
            writer.write_table(segment_table(batch, hashed))
        if reader.stats["dropped.corrupt_record"] and not reader.stats["out"]:
            raise ValueError("no page could be read: corrupt, or not a WARC/WET file")
    stats = {"source": redact_text(source), "seconds": round(time.time() - started, 3),
             "stages": {"read": nest_counters(reader.stats), "extract": nest_counters(extract.stats)}}
    storage.write_text(storage.join(segments_dir, seg + ".json"), json.dumps(stats))
    return stats


def segment_table(docs: list[dict], hashed: bool) -> pa.Table:
    """Phase 1's rows: the extracted documents, and their line hashes when `hashed` (line dedup on)."""
    rows = pa.Table.from_pylist(docs, EXTRACTED)
    return rows.append_column(LINE_HASHES_FIELD, line_hash_column([doc.get("raw_content") for doc in docs])) \
        if hashed else rows


def extract_segments(sources, segments_dir: str, settings: CurateSettings):
    """A task's share of phase 1; a failed input is reported, never fatal to the job."""
    install_redaction()  # this runs in a Python worker: its log goes to the console
    # pyarrow imports pandas at its first array made from Python objects (0.6 s of CPU): once here,
    # before the fork, instead of in every child.
    import pandas  # noqa: F401
    kill_marker = TaskContext.get().getLocalProperty(FAILPOINT_KILL) if TaskContext.get() else None
    todo = []
    for source in sources:  # a retried task skips the inputs its failed attempt published
        if is_done(segments_dir, source):
            yield source, None
        else:
            todo.append(source)
    yield from extract_in_children(todo, segments_dir, settings, kill_marker)


def extract_in_children(sources: list[str], segments_dir: str, settings: CurateSettings,
                        kill_marker: str | None = None) -> Iterator[tuple[str, str | None]]:
    """`extract_segment` of each source in turn, in a forked child process; yields (source, None or
    the cause of its failure). A segment whose process dies (the kernel's OOM killer, a segfault in a
    parser) fails alone, and a new child takes the sources after it: were it Spark's Python worker
    that died, Spark would retry the task and then abort the whole job, and every rerun would meet
    the same segment. One child takes many sources: a child per source cost 40-100 ms of CPU more
    per input (~250 ms), in the fork and the copy-on-write faults of a fresh process."""
    context = multiprocessing.get_context("fork")
    while sources:
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=extract_and_report, args=(sources, segments_dir, settings, send, kill_marker))
        child.start()
        send.close()
        reported = 0
        try:
            while reported < len(sources):
                error = receive.recv()
                reported += 1
                yield sources[reported - 1], error
        except EOFError:  # the child died before it could answer for sources[reported]
            child.join()
            cause = signal.Signals(-child.exitcode).name if child.exitcode and child.exitcode < 0 else None
            hint = " (out of memory?)" if cause == "SIGKILL" else ""
            error = f"the process extracting it was killed by {cause}{hint}" if cause \
                else f"the process extracting it exited with status {child.exitcode}"
            log.error("%s failed: %s", redact_text(sources[reported]), error)
            reported += 1
            yield sources[reported - 1], error
        finally:
            receive.close()
            if child.exitcode is None and reported < len(sources):  # the task was cancelled
                child.kill()
            child.join()
        sources = sources[reported:]


def extract_and_report(sources: list[str], segments_dir: str, settings: CurateSettings, send,
                       kill_marker: str | None) -> None:
    """The child's side of `extract_in_children`: for each source in turn, sends None or the error
    as text."""
    try:
        for source in sources:
            if kill_marker and kill_marker in source:
                os.kill(os.getpid(), signal.SIGKILL)
            try:
                extract_segment(source, segments_dir, settings)
                send.send(None)
            except Exception as error:
                log.exception("%s failed", source)
                send.send(f"{type(error).__name__}: {error}")
    finally:
        send.close()


def bad_input(stages: dict) -> dict:
    """A segment's counts of bad input (damaged records, oversized or non-text pages), by reason."""
    reasons = {*ArchiveReader.bad_input_reasons, *ExtractStage.bad_input_reasons}
    return {reason: n for stage in stages.values() for reason, n in stage["dropped"].items() if reason in reasons}


def is_done(segments_dir: str, source: str) -> bool:
    return storage.exists(storage.join(segments_dir, f"{segment_id(source)}.json"))


def segment_file(run_dir: str, source: str) -> str:
    """Where phase 1 keeps an input's documents."""
    return storage.join(run_dir, "segments", f"{segment_id(source)}.parquet")


# ---- phase 2: run-wide stages over every done segment ------------------------------------------

def model_stages(settings: CurateSettings) -> dict[str, bool]:
    """Which model-backed stages run: those whose models exist. A path that the user set and that
    does not exist is an error; a missing default only leaves the stage out, with a note."""
    models = {"perplexity": ("models", settings.perplexity.models, PerplexitySettings.models, "make lm"),
              "wikiref": ("model", settings.wikiref.model, WikirefSettings.model, "make classifier")}
    found = {"perplexity": Path(settings.perplexity.models).is_dir()
             and bool(available_languages(settings.perplexity.models)),
             "wikiref": Path(settings.wikiref.model).is_file()}
    for stage, (name, path, default, target) in models.items():
        if not found[stage] and path != default:
            raise FileNotFoundError(f"{stage}.{name}={path}: no model there (train one with `{target}`)")
        if not found[stage]:
            print(f"note: no {stage} model at {path}: stage skipped (`{target}` trains one)")
    return found


def row_stages(settings: CurateSettings, enabled: dict[str, bool]) -> list:
    """Phase 2's row-wise stages, each built from its own section of the settings."""
    return [stage(getattr(settings, stage.name)) for stage in ROW_STAGES if enabled.get(stage.name, True)]


def annotate_unit(unit: Unit, run_dir: str, made: str, settings: CurateSettings, enabled: dict[str, bool],
                  curated: str | None = None) -> dict:
    """One task of phase 2, in Python from file to file: its pieces of phase 1's files are read, go
    through line dedup (against the group's duplicated lines), the row-wise stages and the MinHash
    signatures, and are written as one file of the group's directory, or, given `curated` (nothing
    is computed across groups: MinHash off, the cutoffs with the models), straight into the curated
    layout there (language=xx/bucket=yy/, a file per value met). Files are named after the unit's
    first piece and `made` (this making of the groups: a retried task writes the same files, and a
    file that an earlier marker lists is never overwritten). Returns the files, their rows and the
    stages' counts; read from the job's result, counts are those of the successful attempt only."""
    group, pieces = unit
    stages = row_stages(settings, enabled)
    if settings.line_dedup.enabled:
        duplicated = np.load(io.BytesIO(storage.read_bytes(duplicated_lines_file(run_dir, group))))
        stages.insert(0, DuplicateLinesRemover(duplicated, settings.line_dedup))
    # Only with MinHash on: resolving its bands imports datasketch and scipy (0.7 s of CPU a worker).
    params = settings.minhash.resolved() if settings.minhash.enabled else None
    hasher = MinHasher(params.num_perm, params.seed, params.ngram) if params else None
    internal = frozenset([DOC_ID])
    signature_seconds = 0.0  # MinHash's share of the task, counted with MinHash's own time

    def annotated() -> Iterator[list[dict]]:
        batch = []
        for doc in run_stages(read_pieces(pieces, settings.line_dedup.enabled, with_ids=not curated), stages):
            schema.check_document(doc, internal)
            doc.setdefault("bucket", "all")
            batch.append(doc)
            if len(batch) == ROW_GROUP_DOCS:
                yield batch
                batch = []
        if batch:
            yield batch

    def stored(docs: list[dict]) -> pa.Table:
        nonlocal signature_seconds
        rows = pa.Table.from_pylist(docs, ANNOTATED_WITH_ID)
        started = time.perf_counter()
        signatures = signature_column([doc.get("raw_content") or "" for doc in docs], params, hasher) if hasher \
            else pa.nulls(len(docs), SIGNATURES.field(SIGNATURE).type)
        signature_seconds += time.perf_counter() - started
        return rows.append_column(SIGNATURES.field(SIGNATURE), signatures)

    path, row_group, first, _ = pieces[0]
    name = f"part-{Path(path).stem}-{row_group:04d}-{first:05d}-{made}"
    if curated:
        files = write_partitioned((pa.RecordBatch.from_pylist(docs, ANNOTATED) for docs in annotated()), curated,
                                  PARTITIONS, CURATED, name)
    else:
        location, rows = storage.join(group_directory(run_dir, group), f"{name}.zstd.parquet"), 0
        with storage.atomic_output(location) as stream, pq.ParquetWriter(stream, STORED, compression="zstd") as out:
            for docs in annotated():
                out.write_table(stored(docs))
                rows += len(docs)
        files = {location: rows}
    counts = stage_stats(stages)
    if hasher:
        counts["minhash"] = {"signature_seconds": signature_seconds}
    return {"group": group, "files": files, "stages": counts}


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


def write_duplicated_lines(run_dir: str, group: int, sources: list[str]) -> float:
    """cc_net's hashes step for one group: the line hashes found in more than one of its documents,
    from phase 1's stored hashes (computed from the text for a segment stored without them), to
    RUN/groups/group=N/ (read by each of the group's annotate tasks). Memory: the distinct hashes of
    the group, as cc_net's in-memory set of a group. Returns its seconds."""
    started = time.perf_counter()
    parts = []
    for source in sources:
        with storage.open_input(segment_file(run_dir, source)) as f:
            parquet = pq.ParquetFile(f)
            if LINE_HASHES in parquet.schema_arrow.names:
                documents = hashes_of(parquet.read(columns=[LINE_HASHES]).column(LINE_HASHES))
            else:
                documents = [document_hashes(text or "") for text in parquet.read(["raw_content"])["raw_content"]
                             .to_pylist()]
        parts.append(document_counts(documents))
    buffer = io.BytesIO()
    np.save(buffer, duplicated_hashes(parts))
    storage.write_bytes(duplicated_lines_file(run_dir, group), buffer.getvalue())
    return time.perf_counter() - started


def duplicated_lines_file(run_dir: str, group: int) -> str:
    return storage.join(group_directory(run_dir, group), "duplicated_lines.npy")


def dedup_groups(inputs: list[str], done: list[str], group_size: int) -> dict[int, list[str]]:
    """{group: its done inputs, in order}: an input's group is its position among the run's inputs
    divided by `group_size` (0: one group), so that a group keeps its number and its other members
    when a segment fails, is retried or is added after it."""
    position = {source: index for index, source in enumerate(inputs)}
    groups: dict[int, list[str]] = {}
    for source in done:
        groups.setdefault(position[source] // group_size if group_size else 0, []).append(source)
    return groups


def phase2_fingerprint(settings: CurateSettings, enabled: dict[str, bool], direct: bool) -> str:
    """What a group's stored documents depend on besides its segments: the settings of the stages that
    made them, the signatures' parameters, the models read (each file's size and modification time),
    and where they went (`direct`: in the curated layout; said outright, so that a group an earlier
    version stored in groups/ with MinHash off is made again, not reused without its curated files).
    A group stored under another fingerprint is made again."""
    minhash = settings.minhash
    made_by = {name: as_dict(getattr(settings, name))
               for name in ("line_dedup", "langid", "c4", "perplexity", "wikiref")}
    made_by["signatures"] = [minhash.enabled, minhash.num_perm, minhash.seed, minhash.ngram, minhash.max_chars]
    made_by["stages"] = enabled
    made_by["curated_directly"] = direct
    models = [Path(settings.langid.model or default_model_path()), Path(settings.wikiref.model),
              *Path(settings.perplexity.models).rglob("*")]
    made_by["models"] = {str(path): [path.stat().st_size, path.stat().st_mtime_ns] for path in models if path.is_file()}
    return hashlib.sha1(json.dumps(made_by, sort_keys=True).encode()).hexdigest()


def group_directory(run_dir: str, group: int) -> str:
    return storage.join(run_dir, "groups", f"{GROUP}={group}")


def stored_group(run_dir: str, group: int, segments: list[str], fingerprint: str) -> dict | None:
    """The marker of a group stored by an earlier run from the same segments and the same
    fingerprint (so the same documents), else None."""
    marker = storage.published_marker(group_directory(run_dir, group))
    about = (marker or {}).get("about", {})
    same = about.get("segments") == [segment_id(s) for s in segments] and about.get("fingerprint") == fingerprint
    return marker if same else None


def row_group_sizes(files: list[str]) -> dict[str, list[tuple[int, int]]]:
    """{file: [(rows, bytes of `raw_content`) of each row group]} of phase 1's Parquet files, from
    their footers (no data read)."""
    sizes = {}
    for path in files:
        with storage.open_input(path) as f:
            meta = pq.read_metadata(f)
        text = meta.schema.to_arrow_schema().get_field_index("raw_content")
        sizes[path] = [(meta.row_group(i).num_rows, meta.row_group(i).column(text).total_uncompressed_size)
                       for i in range(meta.num_row_groups)]
    return sizes


def segments_text_bytes(run_dir: str, groups: dict[int, list[str]], sizes: dict[str, list[tuple[int, int]]]) -> int:
    """The text of the groups' segments, from `row_group_sizes`."""
    return sum(text for sources in groups.values() for source in sources
               for _, text in sizes[segment_file(run_dir, source)])


def guided_size(remaining: float, cores: int, largest: float, smallest: float) -> float:
    """The size of a stage's next task by guided self-scheduling (OpenMP's `schedule(guided)`): a
    1/(2·cores) share of the work not yet given to a task, from `largest` down to `smallest`. Spark
    starts a stage's tasks in order, so the last to start, which decide when the stage ends, are the
    small ones and the cores finish together. With equal tasks, a core that runs slower (a busy
    neighbour, dearer text) held the end of the stage alone for up to a whole task."""
    return min(largest, max(smallest, remaining / (2 * cores)))


def input_chunks(inputs: list[str], cores: int) -> list[list[str]]:
    """Phase 1's tasks: the inputs in order, in chunks of `guided_size` (each input's work alike)."""
    chunks, start = [], 0
    smallest = len(inputs) / (SMALLEST_TASK_SHARE * cores)
    while start < len(inputs):
        size = math.ceil(guided_size(len(inputs) - start, cores, len(inputs), smallest))
        chunks.append(inputs[start:start + size])
        start += size
    return chunks


def plan_units(run_dir: str, groups: dict[int, list[str]], sizes: dict[str, list[tuple[int, int]]],
               unit_bytes: Callable[[float], float]) -> list[Unit]:
    """Phase 2's tasks: each group's documents, in order, cut into units of about `unit_bytes(text
    not yet in a unit)` of text (a row group split by rows where needed, its text counted evenly
    over its rows)."""
    units: list[Unit] = []
    remaining = float(segments_text_bytes(run_dir, groups, sizes))
    target = unit_bytes(remaining)

    def close(group: int, pieces: list[Piece], size: float) -> None:
        nonlocal remaining, target
        units.append((group, pieces))
        remaining -= size
        target = unit_bytes(remaining)

    for group, sources in groups.items():
        pieces: list[Piece] = []
        size = 0.0
        for source in sources:
            path = segment_file(run_dir, source)
            for row_group, (rows, text) in enumerate(sizes[path]):
                per_row, first = text / max(1, rows), 0
                while first < rows:
                    take = rows - first
                    if size + take * per_row > target:
                        take = max(1, min(take, math.ceil((target - size) / max(per_row, 1e-9))))
                    pieces.append((path, row_group, first, first + take))
                    size, first = size + take * per_row, first + take
                    if size >= target:
                        close(group, pieces, size)
                        pieces, size = [], 0.0
        if pieces:
            close(group, pieces, size)
    return units


def tasks_for(spark: SparkSession, text_bytes: int, settings: PartitionSettings) -> int:
    """Tasks for `text_bytes` of text: one per `settings.text_bytes`, at least one per core."""
    return max(spark.sparkContext.defaultParallelism, math.ceil(text_bytes / settings.text_bytes))


# Shuffles start with one partition per `partitions.text_bytes` of input (at least one per core) and
# AQE coalesces them towards that size without going below the cores (its parallelism-first default).
SHUFFLE_CONF = ("spark.sql.shuffle.partitions", "spark.sql.adaptive.enabled",
                "spark.sql.adaptive.coalescePartitions.enabled", "spark.sql.adaptive.advisoryPartitionSizeInBytes")


def write_curated(spark: SparkSession, run_dir: str, groups: dict[int, list[str]], settings: CurateSettings,
                  enabled: dict[str, bool]) -> dict:
    """Phase 2 over `groups` ({dedup group: its done segments' sources}): groups that an earlier run
    stored from the same segments and settings are reused, the others made (line dedup, row-wise
    stages, signatures); then MinHash over every group's stored signatures and the final selection
    into RUN/curated (or, with nothing to compute across groups, the groups' own curated files).
    Returns the stats."""
    sizes = row_group_sizes([segment_file(run_dir, source) for sources in groups.values() for source in sources])
    text_bytes = segments_text_bytes(run_dir, groups, sizes)
    previous = {key: spark.conf.get(key, None) for key in SHUFFLE_CONF}
    for key, value in zip(SHUFFLE_CONF, (tasks_for(spark, text_bytes, settings.partitions), "true",
                                         "true", settings.partitions.text_bytes)):
        spark.conf.set(key, str(value))
    try:
        return curate_documents(spark, run_dir, groups, sizes, settings, enabled)
    finally:  # the session may be shared (tests, notebooks): leave its settings as they were
        for key, value in previous.items():
            spark.conf.unset(key) if value is None else spark.conf.set(key, value)


def curate_documents(spark: SparkSession, run_dir: str, groups: dict[int, list[str]],
                     sizes: dict[str, list[tuple[int, int]]], settings: CurateSettings,
                     enabled: dict[str, bool]) -> dict:
    stats: dict = {"stages": {}, "tasks": {}}
    tasks = stats["tasks"]
    models = settings.perplexity.models
    run_cutoffs = enabled["perplexity"] and set(available_languages(models)) - set(load_cutoffs(models))
    # Nothing computed across groups: phase 2's tasks write the curated files themselves.
    direct = not settings.minhash.enabled and not run_cutoffs
    fingerprint = phase2_fingerprint(settings, enabled, direct)
    markers = {group: stored_group(run_dir, group, sources, fingerprint) for group, sources in groups.items()}
    todo = sorted(group for group, marker in markers.items() if marker is None)
    processed: dict = {}
    if todo:
        made = make_groups(spark, run_dir, {group: groups[group] for group in todo}, sizes, fingerprint, settings,
                           enabled, stats, direct)
        for group, marker in made.items():
            markers[group] = marker
            merge_stats(processed, marker["about"]["stages"])
    for group in sorted(markers):  # the counts of every document in the output, made now or before
        merge_stats(stats, {"stages": markers[group]["about"]["stages"]})
    stats["processed"] = {"groups": len(groups), "groups_made": todo, "groups_reused": len(groups) - len(todo),
                          "documents": {name: stage["in"] for name, stage in processed.items() if "in" in stage}}
    groups_dir = storage.join(run_dir, "groups")
    current = {group_directory(run_dir, group) for group in groups}
    for directory in set(storage.list_directories(groups_dir)) - current:
        storage.delete(directory)  # a group of earlier settings or inputs

    curated = storage.join(run_dir, "curated")
    if direct:  # the groups' curated files, made now or before, are the result
        storage.publish_files(curated, {file: rows for group in sorted(markers)
                                        for file, rows in curated_files(run_dir, markers[group]).items()})
        return stats
    stored = [storage.join(group_directory(run_dir, group), name) for group in sorted(markers)
              for name in markers[group]["files"]]
    frame = read_parquet(spark, groups_dir, stored, ANNOTATED_WITH_ID)
    if run_cutoffs:
        with counting_tasks(spark, "bucket_from_run", tasks):  # a Spark job only when needed
            frame, stats["cutoffs_from_run"] = bucket_from_run(frame, run_dir)
    scored: dict = {}
    checkpoints = storage.join(run_dir, "checkpoints")
    if settings.minhash.enabled:
        signatures = read_parquet(spark, groups_dir, stored, SIGNATURES)  # no text read for the clustering
        with counting_tasks(spark, "minhash", tasks):
            frame, scored = minhash_dedup(frame, settings.minhash, checkpoint_dir=checkpoints, signatures=signatures)
        stats["processed"]["documents"]["minhash"] = scored["in"]
    with counting_tasks(spark, "write", tasks):
        written = write_parquet(frame.drop(DOC_ID), curated, PARTITIONS)
    storage.delete(checkpoints)
    # The new files replace the previous result when their marker is written: readers that follow
    # the marker see the old or the new output, never a mix.
    storage.publish_files(curated, written)
    if scored:  # the signatures' seconds, spent in the groups' tasks, count as MinHash's
        signature_seconds = stats["stages"].get("minhash", {}).get("signature_seconds", 0.0)
        stats["stages"]["minhash"] = {**scored, "seconds": scored["seconds"] + signature_seconds,
                                      "signature_seconds": signature_seconds}
    return stats


def make_groups(spark: SparkSession, run_dir: str, groups: dict[int, list[str]],
                sizes: dict[str, list[tuple[int, int]]], fingerprint: str, settings: CurateSettings,
                enabled: dict[str, bool], stats: dict, direct: bool) -> dict[int, dict]:
    """Line dedup (within each group), the row-wise stages and the MinHash signatures of `groups`'
    documents, as cc_net does it: a task per group finds its duplicated lines from the stored line
    hashes, then Python tasks of at most `partitions.text_bytes` of text each (`guided_size`) read,
    annotate and write the group's documents from file to file (in RUN/groups/group=N/, or in the
    curated layout when `direct`); no text passes through the JVM or a shuffle. Each group is
    published by its marker in RUN/groups/group=N/ with its segments, the fingerprint and its counts,
    and, when `direct`, its curated files (a killed run leaves no half group). Returns {group: marker}."""
    tasks = stats["tasks"]
    context = spark.sparkContext
    counts: dict[int, dict] = {group: {"stages": {}} for group in groups}
    if settings.line_dedup.enabled:
        with counting_tasks(spark, "line_dedup", tasks):
            seconds = context.parallelize(sorted(groups.items()), len(groups)).map(
                lambda item: (item[0], write_duplicated_lines(run_dir, *item))).collect()
        for group, group_seconds in seconds:  # the hashes step's time, counted with the group's line dedup
            counts[group]["stages"]["line_dedup"] = {"seconds": group_seconds}
    input_bytes = segments_text_bytes(run_dir, groups, sizes)
    cores, smallest = context.defaultParallelism, input_bytes / (SMALLEST_TASK_SHARE * context.defaultParallelism)
    units = plan_units(run_dir, groups, sizes, lambda remaining: max(1.0, guided_size(
        remaining, cores, settings.partitions.text_bytes, min(smallest, settings.partitions.text_bytes))))
    stats["partitions"] = {"input_text_bytes": input_bytes, "annotate": len(units),
                           "shuffle": int(spark.conf.get("spark.sql.shuffle.partitions"))}
    made = uuid.uuid4().hex[:12]
    curated = storage.join(run_dir, "curated")
    with counting_tasks(spark, "annotate", tasks):
        results = context.parallelize(units, max(1, len(units))).map(
            lambda unit: annotate_unit(unit, run_dir, made, settings, enabled, curated if direct else None)).collect()
    written: dict[int, dict[str, int]] = {group: {} for group in groups}
    for result in results:
        merge_stats(counts[result["group"]], {"stages": result["stages"]})
        written[result["group"]].update(result["files"])
    markers = {}
    for group, sources in groups.items():
        about = {"segments": [segment_id(s) for s in sources], "fingerprint": fingerprint,
                 "stages": counts[group]["stages"]}
        if direct:  # its files are curated/'s, named relative to it; the group's directory keeps the marker
            about[CURATED_FILES] = storage.relative_names(curated, written[group])
        markers[group] = storage.publish_files(group_directory(run_dir, group), {} if direct else written[group],
                                               about)
    return markers


def curated_files(run_dir: str, marker: dict) -> dict[str, int]:
    """{file: rows} of the curated files a group's marker lists (made with `direct`), else {}."""
    return storage.locations(storage.join(run_dir, "curated"), marker["about"].get(CURATED_FILES, {}))


def bucket_from_run(frame, run_dir: str):
    """Buckets for languages that have a KenLM model but no cutoffs beside it: CCNet's percentiles
    computed over this run's documents (written to RUN/cutoff.csv, CCNet's format), as `make
    cutoffs` does for the models. Returns the re-bucketed frame and the languages concerned."""
    missing = frame.where((F.col("bucket") == "all") & (F.col("perplexity") >= 0))
    percentiles = [i / 100 for i in range(100)]
    rows = (missing.groupBy("language")
            .agg(F.percentile_approx("perplexity", percentiles, 10_000).alias("cutoffs")).collect())
    if not rows:
        return frame, []
    cutoffs = {row["language"]: [float(v) for v in row["cutoffs"]] for row in rows}
    write_cutoffs(storage.join(run_dir, "cutoff.csv"), cutoffs)

    @F.udf(T.StringType())
    def run_bucket(language, perplexity, current):  # the rule's one place: perplexity.bucket
        return bucket(perplexity, cutoffs[language]) if current == "all" and language in cutoffs else current

    return frame.withColumn("bucket", run_bucket("language", "perplexity", "bucket")), sorted(cutoffs)


# ---- the run -----------------------------------------------------------------------------------

def resolve_inputs(source: InputSettings) -> list[str]:
    if source.snapshot:
        paths = list_paths(source.snapshot, source.base_url, source.format, source.retries, source.backoff_seconds)
        return select_segments(paths, source.segments, source.seed)
    inputs = []
    for pattern in source.paths:
        matches = sorted(glob.glob(pattern)) if not storage.is_uri(pattern) else [pattern]
        if not matches:
            raise FileNotFoundError(f"input {pattern!r} matches no file")
        inputs.extend(matches)
    if not inputs:
        raise ValueError("no input: set input.snapshot=YYYY-WW or pass --input PATHS")
    return inputs


def run(spark: SparkSession, settings: CurateSettings, run_dir: str | Path,
        enabled: dict[str, bool] | None = None, report: bool = True) -> dict:
    """Curates the configured inputs into `run_dir` (a local path or URI, see `curation.storage`),
    resuming what an earlier run left; returns (and writes) the stats, and draws the report unless
    `report` is False (`report_while_stopping` then draws it). `enabled`: the result of
    `model_stages(settings)` when already known. Raises NotARunDirectory for a non-empty directory
    that is not a run directory."""
    started = time.time()
    enabled = enabled if enabled is not None else model_stages(settings)
    run_dir = storage.absolute(run_dir)
    storage.claim_run_directory(run_dir, "curate")
    segments_dir = storage.join(run_dir, "segments")
    remove_leftovers(run_dir)
    inputs = resolve_inputs(settings.input)
    write_json(storage.join(run_dir, "config.json"), {
        "config": as_dict(settings), "inputs": inputs, "python": sys.version.split()[0],
        "libraries": {name: version(name) for name in LIBRARIES}})

    failed_runs = previous_failed_runs(run_dir)
    skip_after = settings.run.skip_after_failures
    skipped = {s for s in inputs if skip_after and failed_runs.get(s, 0) >= skip_after and not is_done(segments_dir, s)}
    todo = [source for source in inputs if not is_done(segments_dir, source) and source not in skipped]
    # The report's matplotlib (~0.8 s of CPU to import) is imported while the Spark jobs keep the
    # cores busy, not at the end with one core busy, nor before them: the import holds the GIL.
    threading.Thread(target=pyplot, name="import-matplotlib", daemon=True).start()
    failures = {}
    if todo:
        chunks = input_chunks(todo, spark.sparkContext.defaultParallelism)
        tasks = spark.sparkContext.parallelize(chunks, len(chunks))
        failures = dict(item for item in tasks.mapPartitions(lambda part: extract_segments(
            (source for chunk in part for source in chunk), segments_dir, settings)).collect() if item[1])
    done = [s for s in inputs if is_done(segments_dir, s)]
    # Phase-1 counters survive a resume: they are stored per segment.
    segment_stats = {s: json.loads(storage.read_text(storage.join(segments_dir, f"{segment_id(s)}.json")))["stages"]
                     for s in done}
    snapshot = settings.input.snapshot
    manifest = {"snapshot": snapshot_name(snapshot) if snapshot else None,
                "segments": [segment_entry(s, s in segment_stats, s in skipped, failures.get(s),
                                           failed_runs.get(s, 0), segment_stats.get(s, {})) for s in inputs]}
    write_json(storage.join(run_dir, "manifest.json"), manifest)

    stats: dict = {}
    for source in done:
        merge_stats(stats, {"stages": segment_stats[source]})
    groups = dedup_groups(inputs, done, settings.line_dedup.group_size)
    merge_stats(stats, write_curated(spark, run_dir, groups, settings, enabled))
    failed = [seg for seg in manifest["segments"] if seg["state"] != "done"]
    result = {**stats, "inputs": len(inputs), "segments_done": len(done),
              "segments_resumed": len(inputs) - len(todo) - len(skipped),
              "failed_segments": failed, "output": storage.join(run_dir, "curated"),
              "documents_out": sum(storage.published_files(storage.join(run_dir, "curated")).values()),
              "seconds": round(time.time() - started, 2)}
    write_json(storage.join(run_dir, "stats.json"), result)
    if report:
        result["report"] = draw_report(settings, run_dir, enabled)
    return result


def draw_report(settings: CurateSettings, run_dir: str, enabled: dict[str, bool]) -> str:
    """The run's report.html with its bucket cutoffs; returns its path."""
    return str(write_report(run_dir, bucket_cutoffs(settings, run_dir, enabled)))


def report_while_stopping(spark: SparkSession, settings: CurateSettings, run_dir: str,
                          enabled: dict[str, bool]) -> str:
    """Draws the report of a run that `run(..., report=False)` made while `spark` stops (`stopping`:
    the report needs no Spark); returns its path. Spark cannot be used in this process afterwards."""
    with stopping(spark):
        return draw_report(settings, run_dir, enabled)


def previous_failed_runs(run_dir: str) -> dict[str, int]:
    """{source: runs in a row it failed in}, from the manifest the previous run left."""
    path = storage.join(run_dir, "manifest.json")
    if not storage.exists(path):
        return {}
    return {seg["source"]: seg.get("failed_runs", 0) for seg in json.loads(storage.read_text(path))["segments"]}


def segment_entry(source: str, done: bool, skipped: bool, error: str | None, failed_before: int,
                  stages: dict) -> dict:
    """A segment's line in the manifest: its state, the cause of a failure, and the runs in a row
    it failed in (a segment that fails every time is reported as such, and can be skipped)."""
    if done:
        return {"source": source, "id": segment_id(source), "state": "done", "error": None, "failed_runs": 0,
                "bad_input": bad_input(stages)}
    if skipped:
        error = f"skipped: failed in {failed_before} runs in a row (run.skip_after_failures)"
    return {"source": source, "id": segment_id(source), "state": "skipped" if skipped else "failed", "error": error,
            "failed_runs": failed_before + (not skipped), "bad_input": {}}


def bucket_cutoffs(settings: CurateSettings, run_dir: str, enabled: dict[str, bool]) -> dict:
    """{language: {"p30": …, "p60": …}} used for this run's buckets, for the report's plots."""
    if not enabled["perplexity"]:
        return {}
    cutoffs = dict(load_cutoffs(settings.perplexity.models))
    if storage.exists(storage.join(run_dir, "cutoff.csv")):
        cutoffs.update(read_cutoffs(storage.join(run_dir, "cutoff.csv")))
    return {lang: {"p30": values[HEAD_PERCENTILE], "p60": values[TAIL_PERCENTILE]} for lang, values in cutoffs.items()}


def remove_leftovers(run_dir: str) -> None:
    """What a killed run wrote and never published, so never read: its temporary files, curated files
    that no marker lists (the curated one, or a group's that wrote them), its checkpoints. One run per
    directory."""
    storage.remove_temporaries(run_dir)
    storage.remove_temporaries(storage.join(run_dir, "segments"))
    groups = storage.list_directories(storage.join(run_dir, "groups"))
    made = {file for group in groups if (marker := storage.published_marker(group))
            for file in curated_files(run_dir, marker)}
    storage.remove_unpublished(storage.join(run_dir, "curated"), keep=made)
    for group in groups:
        storage.remove_unpublished(group)
    storage.delete(storage.join(run_dir, "checkpoints"))


def write_json(location: str, value) -> None:
    # insertion order: stages in pipeline order
    storage.write_text(location, json.dumps(redact_config(value), indent=2))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="run directory (re-using one resumes it)")
    parser.add_argument("--input", nargs="+", default=[], help="WARC/WET paths, globs or URLs (sets input.paths)")
    parser.add_argument("--config", help="YAML file of settings (any subset; `--print-settings` shows them all)")
    parser.add_argument("--print-settings", action="store_true", help="print every setting, its default and "
                        "meaning, as YAML, and exit")
    parser.add_argument("--master", help="Spark master for local runs (default local[*]); ignored under spark-submit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings, e.g. langid.threshold=0.6")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    install_redaction()
    args = parse_args(argv)
    if args.print_settings:
        print(SETTINGS_HEADER + describe(CurateSettings))
        return 0
    if not args.output:
        print("error: --output DIR is required", file=sys.stderr)
        return 2
    overrides = [*args.overrides, *([f"input.paths={json.dumps(args.input)}"] if args.input else [])]
    try:
        settings = load_settings(CurateSettings, args.config, overrides)
        resolve_inputs(settings.input)  # fail fast on a bad snapshot name, an unreachable URL, no input
        enabled = model_stages(settings)  # … and on a model path that is not there
    except (SettingsError, ValueError, FileNotFoundError, ConnectionError) as error:
        print(f"error: {redact_text(str(error))}", file=sys.stderr)
        return 2
    output = storage.absolute(args.output)
    try:
        spark = claimed_session("ccurate-curate", output, "curate", args.master)
    except (NotARunDirectory, OSError) as error:
        print(f"error: --output {redact_text(str(error))}", file=sys.stderr)
        return 2
    try:
        stats = run(spark, settings, output, enabled, report=False)
    except BaseException:
        spark.stop()
        raise
    stats["report"] = report_while_stopping(spark, settings, output, enabled)
    print_summary(stats, output)
    return exit_code(stats, settings.run)


def exit_code(stats: dict, run_settings: RunSettings) -> int:
    """1 when more than `run.max_failed_share` of the segments failed or were skipped, else 0."""
    failed_share = len(stats["failed_segments"]) / max(1, stats["inputs"])
    return 1 if failed_share > run_settings.max_failed_share else 0


def print_summary(stats: dict, output: str) -> None:
    print(f"\ncurated {stats['documents_out']} documents from {stats['segments_done']}/{stats['inputs']} segments "
          f"({stats['segments_resumed']} already done) in {stats['seconds']} s")
    for name, stage in stats.get("stages", {}).items():
        dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(stage.get("dropped", {}).items()))
        print(f"  {name:<10} in {stage.get('in', 0):>8}  out {stage.get('out', 0):>8}  {dropped}")
    print(f"  output:   {stats['output']}\n  stats:    {storage.join(output, 'stats.json')}"
          f"\n  manifest: {storage.join(output, 'manifest.json')}"
          f"\n  report:   {stats['report']}")
    for failure in stats["failed_segments"]:
        print(redact_text(f"  FAILED {failure['source']}: {failure['error']}"))


if __name__ == "__main__":
    exit_now(main())
