"""What a source job's Spark task does with each of its inputs (no Spark here): reads it through the
source's reader and stages, in a forked child process, into Parquet files published one by one, with
the run-wide steps' keys beside them, then writes `DIR/inputs/ID.json` last: that file marks the input
done and holds its counts. An input whose child raises or dies fails alone, with the cause.

Where the files go: `DIR/documents/` when the source has no run-wide step (they are the result, once
listed by the run's marker); else `DIR/inputs/`, and the run-wide steps write `DIR/documents/`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack

import pyarrow as pa
import pyarrow.parquet as pq

from curation import schema, storage
from curation.pipeline import nest_counters, run_stages, stage_stats
from curation.redact import install_redaction, redact_text
from curation.sources import RunWideStep, Source, load
from jobs.sources.inputs import input_id
from jobs.spark import import_pandas_before_fork

log = logging.getLogger("sources")
ROW_GROUP_DOCUMENTS = 1000
DOCUMENTS, INPUTS = "documents", "inputs"


def document_schema(source: Source) -> pa.Schema:
    return schema.arrow_schema(["raw_content", "source", *source.fields])


def key_column(step: RunWideStep) -> str:
    return f"key_{step.name}"


def keys_schema(steps: list[RunWideStep]) -> pa.Schema:
    return pa.schema([("row", pa.int64()), *((key_column(step), step.key_type) for step in steps)])


def record_file(run_dir: str, location: str) -> str:
    """`DIR/inputs/ID.json`: the input's record, written last."""
    return storage.join(run_dir, INPUTS, f"{input_id(location)}.json")


def done_record(run_dir: str, location: str, steps: list[RunWideStep]) -> dict | None:
    """The record of an input read with keys for every one of `steps`, made with their settings; None
    when it must be read."""
    path = record_file(run_dir, location)
    if not storage.exists(path):
        return None
    record = json.loads(storage.read_text(path))
    return record if {step.identity for step in steps} <= set(record["keys"]) else None


def counted_reading(docs: Iterator[dict], counts: Counter) -> Iterator[dict]:
    """The reader's documents, `out` and the seconds spent in the reader counted."""
    while True:
        started = time.perf_counter()
        doc = next(docs, None)
        counts["seconds"] += time.perf_counter() - started
        if doc is None:
            return
        counts["out"] += 1
        yield doc


class InputFiles:
    """An input's documents in Parquet files (zstd) of at most `per_file` documents, each published
    whole, and its keys in one file; `files` and `characters` say what was written, by name relative
    to the run directory."""

    def __init__(self, run_dir: str, location: str, source: Source, steps: list[RunWideStep], per_file: int):
        self.run_dir, self.stem, self.per_file = run_dir, input_id(location), per_file
        self.directory = INPUTS if steps else DOCUMENTS
        self.schema, self.steps = document_schema(source), steps
        self.files: dict[str, int] = {}
        self.characters: dict[str, int] = {}
        self.keys_file = f"{INPUTS}/{self.stem}.keys.parquet" if steps else None
        self._batch: list[dict] = []
        self._stack = ExitStack()  # the keys' writer, for the whole input
        self._file: ExitStack | None = None  # the documents' file being written
        self._name = ""

    def __enter__(self) -> InputFiles:
        self._stack.__enter__()
        if self.keys_file:
            self._keys = parquet_writer(self._stack, self.run_dir, self.keys_file, keys_schema(self.steps))
        return self

    def add(self, doc: dict) -> None:
        self._batch.append(doc)
        room = self.per_file - (self.files[self._name] if self._file is not None else 0)  # in the file being written
        if len(self._batch) >= min(ROW_GROUP_DOCUMENTS, room):
            self._write()

    def _write(self) -> None:
        if self._file is None:
            self._file, self._name = ExitStack(), f"{self.directory}/{self.stem}-{len(self.files):05d}.zstd.parquet"
            self._documents = parquet_writer(self._file, self.run_dir, self._name, self.schema)
            self.files[self._name] = self.characters[self._name] = 0
        self._documents.write_table(pa.Table.from_pylist(self._batch, self.schema))
        if self.keys_file:
            first = sum(self.files.values())
            keys = {"row": list(range(first, first + len(self._batch)))}
            keys.update({key_column(step): [step.key(doc) for doc in self._batch] for step in self.steps})
            self._keys.write_table(pa.Table.from_pydict(keys, keys_schema(self.steps)))
        self.files[self._name] += len(self._batch)
        self.characters[self._name] += sum(len(doc["raw_content"]) for doc in self._batch)
        self._batch.clear()
        if self.files[self._name] >= self.per_file:
            self._file.close()  # the file is whole: published
            self._file = None

    def __exit__(self, kind, error, trace) -> None:
        if kind is None and self._batch:
            self._write()
        if self._file is not None:
            self._file.__exit__(kind, error, trace)
        self._stack.__exit__(kind, error, trace)


def parquet_writer(stack: ExitStack, run_dir: str, name: str, file_schema: pa.Schema) -> pq.ParquetWriter:
    """A zstd Parquet writer of `DIR/name`, published when `stack` closes (nothing when it fails)."""
    out = stack.enter_context(storage.atomic_output(storage.join(run_dir, name)))
    return stack.enter_context(pq.ParquetWriter(out, file_schema, compression="zstd"))


def read_input(source: Source, settings, location: str, run_dir: str, per_file: int) -> dict:
    """Reads one input into its files, then writes its record (the mark that it is done); returns it."""
    started, cpu, counts = time.time(), time.process_time(), Counter()
    stages, steps = source.stages(settings), source.run_wide(settings)
    with InputFiles(run_dir, location, source, steps, per_file) as files:
        for doc in run_stages(counted_reading(source.read(location, settings, counts), counts), stages):
            doc["source"] = source.name
            files.add(doc)
    read = nest_counters(counts)
    read["in"] = read["in"] or read["out"] + sum(read["dropped"].values())
    record = {"source": redact_text(location), "id": input_id(location),
              "reading": uuid.uuid4().hex,  # this reading's token: the documents' marker names the readings it holds
              "files": files.files, "characters": files.characters, "documents": sum(files.files.values()),
              "keys": [step.identity for step in steps], "keys_file": files.keys_file,
              "seconds": round(time.time() - started, 3), "cpu_seconds": round(time.process_time() - cpu, 3),
              "stages": {"read": read, **stage_stats(stages)}}
    storage.write_text(record_file(run_dir, location), json.dumps(record))
    return record


def read_inputs(source_name: str, settings, locations: Iterable[str], run_dir: str,
                per_file: int) -> Iterator[tuple[str, str | None]]:
    """A Spark task's inputs, each read in a forked child: (location, None or the cause of its failure).
    An input a failed attempt of this task already finished is not read again."""
    install_redaction()  # this runs in a Python worker: its log goes to the console
    import_pandas_before_fork()
    source = load(source_name)
    steps = source.run_wide(settings)
    for location in locations:
        if done_record(run_dir, location, steps) is not None:
            yield location, None
        else:
            yield location, in_child(location, read_input, source, settings, location, run_dir, per_file)


def in_child(what: str, work, *args) -> str | None:
    """Runs `work(*args)` (about `what`, for the log) in a forked child process: None when it returned,
    else the cause of its failure, its exception or the signal that killed it (the kernel's OOM killer,
    a crash in a parser), so that an input that kills its process fails alone and the task goes on."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_report, args=(send, what, work, args), daemon=True)
    child.start()
    send.close()
    try:
        return receive.recv()
    except EOFError:  # the child died before it could answer
        child.join()
        if child.exitcode is not None and child.exitcode < 0:
            cause = signal.Signals(-child.exitcode).name
            return f"the process reading it was killed by {cause}{' (out of memory?)' if cause == 'SIGKILL' else ''}"
        return f"the process reading it exited with status {child.exitcode}"
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
        child.join()


def _report(send, what: str, work, args) -> None:
    try:
        work(*args)
        send.send(None)
    except Exception as error:
        log.exception("%s failed", redact_text(what))
        send.send(redact_text(f"{type(error).__name__}: {error}"))
    finally:
        send.close()
