"""The end of a source job: its run-wide steps over the stored keys of every input (`RunWideStep` in
`curation.sources`), then `DIR/documents/` published by its marker.

The keys of all inputs are read as one RDD of (`input`: the input's position in the run's order, `row`:
the document's position in the input, {step: key}); each step's kind, a function of KINDS, takes the
documents still kept as (`input`, `row`, `key`) and returns the (`input`, `row`) of those it drops. Then
each input that lost documents, or whose files are not in `documents/` yet (a source with steps writes
them in `inputs/`), is written into `documents/` by a task that receives only its own inputs' dropped
rows (a shuffle by input): a file with no drop is copied (hard-linked on a local disk), the others are
filtered. The driver holds the inputs' records and counts, never a key or a row. RDDs, not DataFrames:
the rest of the job runs none, and a session's first SQL query costs seconds of the JVM's compiling.
A new kind (books' near-duplicates) takes the same RDD and returns (`input`, `row`), registered in KINDS
under the name its `RunWideStep.kind` gives.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from operator import add

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pyspark import RDD
from pyspark.sql import SparkSession

from curation import storage
from curation.sources import RunWideStep
from jobs.sources.task import DOCUMENTS, key_column, parquet_writer

COPY_BYTES = 16 << 20
_NO_KEY = object()


def key_hash(key: bytes | str) -> int:
    """A key's partition: the same in every Python worker (`hash` of bytes and text is salted per process)."""
    return xxhash.xxh64_intdigest(key.encode() if isinstance(key, str) else key)


def exact_duplicates(keys: RDD) -> RDD:
    """(input, row) of every document whose key an earlier one has (by input, then row): the documents
    sorted by key, input and row (Spark's external sort: a key's documents are never all in memory),
    all but the first of each key. A key of None is no one's duplicate."""
    def all_but_the_first(ordered):
        previous = _NO_KEY
        for (key, place), _ in ordered:
            if key == previous:
                yield place
            previous = key

    return (keys.filter(lambda doc: doc[2] is not None).map(lambda doc: ((doc[2], (doc[0], doc[1])), None))
            .repartitionAndSortWithinPartitions(keys.getNumPartitions(), lambda pair: key_hash(pair[0]))
            .mapPartitions(all_but_the_first))


KINDS = {"exact_duplicates": exact_duplicates}


def stored_keys(spark: SparkSession, run_dir: str, key_files: list[str], steps: list[RunWideStep]) -> RDD:
    """(input, row, {step: key}) of the inputs' key files, `input` the file's position in `key_files`."""
    columns = [key_column(step) for step in steps]

    def read(indexes):
        for index in indexes:
            with storage.open_input(storage.join(run_dir, key_files[index])) as file:
                for part in pq.ParquetFile(file).iter_batches(columns=["row", *columns]):
                    rows, *keys = (part.column(name).to_pylist() for name in ["row", *columns])
                    for row, *values in zip(rows, *keys):
                        yield index, row, dict(zip(columns, values))

    tasks = max(1, min(len(key_files), 2 * spark.sparkContext.defaultParallelism))  # keys are small
    return spark.sparkContext.parallelize(range(len(key_files)), tasks).mapPartitions(read)


def run_wide_drops(spark: SparkSession, run_dir: str, records: list[dict],
                   steps: list[RunWideStep]) -> tuple[RDD | None, dict, set[int]]:
    """The (input, row) of the documents the steps drop, each step over those the previous kept; each
    step's counts for stats.json; the inputs that lost documents. One Spark job per step (its drops are
    cached for the next step and the writing)."""
    if not steps:
        return None, {}, set()
    alive = stored_keys(spark, run_dir, [record["keys_file"] for record in records], steps)
    remaining, drops, stats, lost = sum(record["documents"] for record in records), None, {}, set()
    for step in steps:
        started, column = time.perf_counter(), key_column(step)
        dropped = KINDS[step.kind](alive.map(lambda doc, column=column: (doc[0], doc[1], doc[2][column]))).cache()
        per_input = dict(dropped.map(lambda place: (place[0], 1)).reduceByKey(add).collect())
        count = sum(per_input.values())
        stats[step.name] = {"in": remaining, "out": remaining - count, "dropped": {step.reason: count},
                            "seconds": round(time.perf_counter() - started, 3)}
        remaining, lost = remaining - count, lost | set(per_input)
        if step is not steps[-1]:
            alive = (alive.map(lambda doc: ((doc[0], doc[1]), doc))
                     .subtractByKey(dropped.map(lambda place: (place, None))).values())
        drops = dropped if drops is None else drops.union(dropped)
    return drops, stats, lost


def write_documents(spark: SparkSession, run_dir: str, records: list[dict], drops: RDD | None,
                    lost: set[int]) -> dict[str, tuple[int, int]]:
    """{file under `documents/`: (rows, characters)} of every kept document, each input that `lost`
    documents or whose files lie elsewhere written there by a task of its own."""
    todo = [i for i, record in enumerate(records)
            if i in lost or any(not name.startswith(f"{DOCUMENTS}/") for name in record["files"])]
    as_they_are = [record for i, record in enumerate(records) if i not in set(todo)]
    written = {name: (rows, record["characters"][name]) for record in as_they_are
               for name, rows in record["files"].items()}
    if not todo:
        return written
    sc, position = spark.sparkContext, {i: k for k, i in enumerate(todo)}
    tasks = min(len(todo), 2 * sc.defaultParallelism)  # a few inputs a task: most are copied, not rewritten
    tagged = sc.parallelize([(i, records[i]) for i in todo], tasks)
    if drops is not None:
        tagged = tagged.union(drops)

    def write_inputs(rows):
        mine, dropped = {}, defaultdict(set)
        for i, value in rows:
            if isinstance(value, dict):
                mine[i] = value
            else:
                dropped[i].add(value)
        for i, record in mine.items():
            yield from rewrite_input(run_dir, record, dropped[i])

    by_input = tagged.partitionBy(tasks, lambda i: position[i]).mapPartitions(write_inputs)
    written.update({name: (rows, characters) for name, rows, characters in by_input.collect()})
    return written


def rewrite_input(run_dir: str, record: dict, dropped: set[int]):
    """An input's files into `documents/` less its `dropped` rows: (name, rows, characters) of each."""
    first = 0
    for name, rows in record["files"].items():
        target = f"{DOCUMENTS}/{name.rsplit('/', 1)[-1]}"
        mine = {row - first for row in dropped if first <= row < first + rows}
        first += rows
        if not mine and name != target:
            copy(storage.join(run_dir, name), storage.join(run_dir, target))
        if not mine:
            yield target, rows, record["characters"][name]
        elif len(mine) < rows:  # named by what it lacks: a file listed by a marker never changes
            lacks = xxhash.xxh64_hexdigest(repr(sorted(mine)).encode())[:8]
            target = target.replace(".zstd.parquet", f"-{lacks}.zstd.parquet")
            yield target, rows - len(mine), filtered(run_dir, name, target, mine)


def copy(source: str, target: str) -> None:
    """`target`, a copy of the file `source` (a hard link when both are on this machine's disk)."""
    paths = storage.local_path(source), storage.local_path(target)
    if all(paths):
        temporary = f"{paths[1]}.tmp-{uuid.uuid4().hex}"
        try:
            os.link(paths[0], temporary)
            os.replace(temporary, paths[1])
            return
        except OSError:  # another file system, or one without hard links
            storage.delete(temporary)
    with storage.open_input(source) as data, storage.atomic_output(target) as out:
        while chunk := data.read(COPY_BYTES):
            out.write(chunk)


def filtered(run_dir: str, name: str, target: str, dropped: set[int]) -> int:
    """Writes the rows of `name` not in `dropped` to `target`; returns their characters."""
    characters, offset = 0, 0
    with storage.open_input(storage.join(run_dir, name)) as data, ExitStack() as stack:
        documents = pq.ParquetFile(data)
        writer = parquet_writer(stack, run_dir, target, documents.schema_arrow)
        for batch in documents.iter_batches():
            keep = pa.array([offset + k not in dropped for k in range(batch.num_rows)])
            offset += batch.num_rows
            kept = batch.filter(keep)
            characters += pc.sum(pc.utf8_length(kept.column("raw_content"))).as_py() or 0
            writer.write_batch(kept)
    return characters
