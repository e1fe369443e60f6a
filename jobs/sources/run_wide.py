"""The end of a source job: its run-wide steps over the stored keys of every input (`RunWideStep` in
`curation.sources`), then `DIR/documents/` published by its marker.

The keys of all inputs are read as one RDD of (`input`: the input's position in the run's order, `row`:
the document's position in the input, {step: key}); each step's kind, a function of KINDS, takes the
documents still kept as (`input`, `row`, `key`) and the step, and returns (`input`, `row`, `kept`) of
those it drops: `kept` is None, or names the document kept in its place (a dict with its `input` and
`row`, and what the kind tells of the pair), listed in stats.json under the step (`duplicate_of`, the
inputs by name): only a kind that drops few documents names them (books'). Then each input that lost
documents, or whose files are not in `documents/` yet (a source with steps writes them in `inputs/`),
is written into `documents/` by a task that receives only its own inputs' dropped rows (a shuffle by
input): a file with no drop is copied (hard-linked on a local disk), the others are filtered. The driver
holds the inputs' records and counts, never a key: at most the pairs a kind must join (books' LSH
candidates) and the drops it names. RDDs, not DataFrames:
the rest of the job runs none, and a session's first SQL query costs seconds of the JVM's compiling.
A new kind takes the same RDD and step and returns the same triples, registered in KINDS under the
name its `RunWideStep.kind` gives.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pyspark import RDD
from pyspark.sql import SparkSession

from curation import storage
from curation.lsh import band_keys
from curation.minhash import optimal_bands_rows
from curation.sources import RunWideStep, books
from jobs.sources.task import DOCUMENTS, key_column, parquet_writer

COPY_BYTES = 16 << 20
_NO_KEY = object()


def key_hash(key: bytes | str) -> int:
    """A key's partition: the same in every Python worker (`hash` of bytes and text is salted per process)."""
    return xxhash.xxh64_intdigest(key.encode() if isinstance(key, str) else key)


def exact_duplicates(keys: RDD, step: RunWideStep) -> RDD:
    """(input, row, None) of every document whose key an earlier one has (by input, then row): the documents
    sorted by key, input and row (Spark's external sort: a key's documents are never all in memory),
    all but the first of each key. A key of None is no one's duplicate."""
    def all_but_the_first(ordered):
        previous = _NO_KEY
        for (key, place), _ in ordered:
            if key == previous:
                yield (*place, None)
            previous = key

    return (keys.filter(lambda doc: doc[2] is not None).map(lambda doc: ((doc[2], (doc[0], doc[1])), None))
            .repartitionAndSortWithinPartitions(keys.getNumPartitions(), lambda pair: key_hash(pair[0]))
            .mapPartitions(all_but_the_first))


def near_duplicate_books(keys: RDD, step: RunWideStep) -> RDD:
    """Books' near-duplicates (`curation.sources.books.near_duplicates` with the step's settings) over
    their stored summaries, a Spark task per group of books that share an LSH band, directly or through
    others: the rule compares a book only with books sharing a band with it, so a group's answer is the
    whole run's. Only the groups' edges (pairs of places) reach the driver, and only books with a
    candidate are held together, a group at a time."""
    settings, context = step.settings, keys.context
    bands, rows = optimal_bands_rows(settings.candidate_threshold, settings.num_perm)
    edges = (keys.flatMap(lambda doc: [(band, (doc[0], doc[1])) for band in book_bands(doc[2], bands, rows)])
             .groupByKey().flatMap(lambda bucket: star(sorted(bucket[1]))).collect())
    groups = components(set(edges))  # a pair in several bands comes once per band
    if not groups:
        return context.emptyRDD()
    group = context.broadcast(groups)
    return (keys.filter(lambda doc: (doc[0], doc[1]) in group.value)
            .map(lambda doc: (group.value[(doc[0], doc[1])], doc)).groupByKey()
            .flatMap(lambda members: group_drops(list(members[1]), settings)))


def book_bands(key: dict, bands: int, rows: int) -> list[tuple[int, bytes]]:
    """The LSH buckets of a book's summary (none for a book without n-grams)."""
    if not key["ngrams"]:
        return []
    return list(enumerate(band_keys(np.asarray(key["signature"], np.uint32), bands, rows)))


def star(places: list) -> list[tuple]:
    """Edges that join the places of one bucket: the first with each other."""
    return [(places[0], place) for place in places[1:]]


def components(edges: set[tuple]) -> dict:
    """{place: its group, the smallest place joined to it} of the places the edges join (union-find)."""
    parent: dict = {}

    def root(place):
        while parent.setdefault(place, place) != place:
            parent[place] = parent[parent[place]]
            place = parent[place]
        return place

    for a, b in edges:
        first, second = sorted((root(a), root(b)))
        parent[second] = first
    return {place: root(place) for place in list(parent)}


def group_drops(docs: list[tuple], settings) -> list[tuple]:
    """(input, row, kept) of the books of one group that `near_duplicates` drops. Each book is named by its
    place in the run (file names may repeat), so ties go to the earlier in the run's order."""
    named = {f"{i:09d}/{row:012d}": (i, row, key) for i, row, key in docs}
    summaries = {name: books.from_key(key, name) for name, (_, _, key) in named.items()}
    drops = []
    for dropped, kept in sorted(books.near_duplicates(list(summaries.values()), settings).items()):
        (i, row, key), (kept_input, kept_row, kept_key) = named[dropped], named[kept]
        drops.append((i, row, {"book_id": key["book_id"], "kept": {"input": kept_input, "row": kept_row,
                                                                   "book_id": kept_key["book_id"]},
                               "overlap": round(books.share(summaries[dropped], summaries[kept]), 4)}))
    return drops


KINDS = {"exact_duplicates": exact_duplicates, "near_duplicate_books": near_duplicate_books}


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
    step's counts for stats.json (and the documents kept in place of those it drops, where its kind names
    them); the inputs that lost documents. A Spark job or two per step (its drops are cached for the next
    step and the writing)."""
    if not steps:
        return None, {}, set()
    alive = stored_keys(spark, run_dir, [record["keys_file"] for record in records], steps)
    remaining, drops, stats, lost = sum(record["documents"] for record in records), None, {}, set()
    for step in steps:
        started, column = time.perf_counter(), key_column(step)
        kind = KINDS[step.kind]
        dropped = kind(alive.map(lambda doc, column=column: (doc[0], doc[1], doc[2][column])), step).cache()
        # per input: its drops, and those whose kept document the kind names (few: books')
        per_input = dict(dropped.map(lambda drop: (drop[0], (1, [drop] if drop[2] is not None else [])))
                         .reduceByKey(lambda a, b: (a[0] + b[0], a[1] + b[1])).collect())
        count, named = sum(n for n, _ in per_input.values()), sorted(d for _, ds in per_input.values() for d in ds)
        stats[step.name] = {"in": remaining, "out": remaining - count, "dropped": {step.reason: count},
                            "seconds": round(time.perf_counter() - started, 3)}
        if named:
            stats[step.name]["duplicate_of"] = [name_inputs(records, drop) for drop in named]
        dropped = dropped.map(lambda drop: (drop[0], drop[1]))
        remaining, lost = remaining - count, lost | set(per_input)
        if step is not steps[-1]:
            alive = (alive.map(lambda doc: ((doc[0], doc[1]), doc))
                     .subtractByKey(dropped.map(lambda place: (place, None))).values())
        drops = dropped if drops is None else drops.union(dropped)
    return drops, stats, lost


def name_inputs(records: list[dict], drop: tuple) -> dict:
    """A dropped document and the one kept in its place, their inputs by name: stats.json's line."""
    i, row, note = drop
    kept = {**note["kept"], "input": records[note["kept"]["input"]]["source"]}
    return {"input": records[i]["source"], "row": row, **note, "kept": kept}


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
