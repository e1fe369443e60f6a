"""Phase 1: each input read and extracted, streaming, into RUN/segments/ID.parquet with each
document's line hashes (cc_net's first dedup pass, done while the text is at hand), published with
its counts (ID.json, written last, marks it done). A Spark task takes a few inputs (`input_chunks`)
and extracts them in turn in a child process: an input whose process dies fails alone."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import signal
import time
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from curation import storage
from curation.dedup_lines import line_hash_column
from curation.extract import ExtractStage
from curation.pipeline import nest_counters, run_stages
from curation.redact import install_redaction, redact_text
from curation.warc import ArchiveReader
from jobs.curate.layout import EXTRACTED, LINE_HASHES_FIELD, ROW_GROUP_DOCS, SEGMENT_WITH_HASHES, RunDirectory
from jobs.spark import import_pandas_before_fork

log = logging.getLogger("curate")
# Tasks are cut by guided self-scheduling (`guided_size`), down to 1/SMALLEST_TASK_SHARE of a core's share.
SMALLEST_TASK_SHARE = 16


def extract_segment(source: str, run: RunDirectory, settings) -> dict:
    """Streams one input through reading and extraction into its segment file; writes its marker last."""
    reader = ArchiveReader(settings.read.max_payload_bytes, settings.read.max_line_bytes,
                           settings.input.retries, settings.input.backoff_seconds)
    extract = ExtractStage(settings.extract)
    hashed = settings.line_dedup.enabled
    started = time.time()
    with storage.atomic_output(run.segment_file(source)) as out:
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
    storage.write_text(run.segment_marker(source), json.dumps(stats))
    return stats


def segment_table(docs: list[dict], hashed: bool) -> pa.Table:
    """Phase 1's rows: the extracted documents, and their line hashes when `hashed` (line dedup on)."""
    rows = pa.Table.from_pylist(docs, EXTRACTED)
    return rows.append_column(LINE_HASHES_FIELD, line_hash_column([doc.get("raw_content") for doc in docs])) \
        if hashed else rows


def extract_task(sources: Iterable[str], run: RunDirectory, settings) -> Iterator[tuple[str, str | None]]:
    """A Spark task's share of phase 1: (source, None or the cause of its failure); a failed input is
    reported, never fatal to the job. A retried task skips the inputs its failed attempt published."""
    install_redaction()  # this runs in a Python worker: its log goes to the console
    import_pandas_before_fork()
    todo = []
    for source in sources:
        if run.is_done(source):
            yield source, None
        else:
            todo.append(source)
    yield from extract_in_children(todo, run, settings)


def extract_in_children(sources: list[str], run: RunDirectory, settings) -> Iterator[tuple[str, str | None]]:
    """`extract_segment` of each source in turn, in a forked child process; yields (source, None or
    the cause of its failure). A segment whose process dies (the kernel's OOM killer, a segfault in a
    parser) fails alone, and a new child takes the sources after it: were it Spark's Python worker
    that died, Spark would retry the task and then abort the whole job, and every rerun would meet
    the same segment. One child takes many sources: a child per source cost 40-100 ms of CPU more
    per input (~250 ms), in the fork and the copy-on-write faults of a fresh process."""
    context = multiprocessing.get_context("fork")
    while sources:
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=extract_and_report, args=(sources, run, settings, send))
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
            error = death_cause(child.exitcode)
            log.error("%s failed: %s", redact_text(sources[reported]), error)
            reported += 1
            yield sources[reported - 1], error
        finally:
            receive.close()
            if child.exitcode is None and reported < len(sources):  # the task was cancelled
                child.kill()
            child.join()
        sources = sources[reported:]


def death_cause(exitcode: int) -> str:
    """Why a child process ended early, from its exit code (a negative one: the signal that killed it)."""
    if exitcode is not None and exitcode < 0:
        cause = signal.Signals(-exitcode).name
        return f"the process extracting it was killed by {cause}{' (out of memory?)' if cause == 'SIGKILL' else ''}"
    return f"the process extracting it exited with status {exitcode}"


def extract_and_report(sources: list[str], run: RunDirectory, settings, send) -> None:
    """The child's side of `extract_in_children`: for each source in turn, sends None or the error as text."""
    try:
        for source in sources:
            try:
                extract_segment(source, run, settings)
                send.send(None)
            except Exception as error:  # the input fails alone; its cause goes to the manifest and the summary
                cause = f"{type(error).__name__}: {error}"
                log.error("%s failed: %s", redact_text(source), cause)
                send.send(cause)
    finally:
        send.close()


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


def extract_inputs(spark, run: RunDirectory, todo: list[str], settings) -> dict[str, str]:
    """Phase 1 over `todo` on Spark; returns {source: cause} of the inputs that failed."""
    if not todo:
        return {}
    chunks = input_chunks(todo, spark.sparkContext.defaultParallelism)
    tasks = spark.sparkContext.parallelize(chunks, len(chunks))
    results = tasks.mapPartitions(lambda part: extract_task((s for chunk in part for s in chunk), run, settings))
    return {source: error for source, error in results.collect() if error}
