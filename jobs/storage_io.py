"""Spark DataFrames from and to Parquet files on any store of `curation.storage`, through Python tasks.

Spark's own readers and writers go through Hadoop filesystems, which need the store's connector in
the cluster's JVM (hadoop-aws for s3a://, the GCS connector…). These do the I/O in Python tasks with
pyarrow instead: a cluster needs only pyarrow (with the store's support) on its executors, and the run
directory is the same URI for the driver and every task.
- `read_parquet`: one task per file, streaming its batches (a task holds one batch at a time).
- `write_parquet`: each task writes its rows under its own file names (one file per partition value
  it meets, hive layout `col=value/`), each published whole, and returns (file, rows); the driver
  gets the files of the successful task attempts only, so a retried or speculative attempt's files
  are never listed (`curation.storage.publish_files` then deletes them).
- `write_partitioned`: that layout from Arrow batches in any Python task (`jobs.curate`'s phase 2
  writes its curated files with it when nothing is computed across its groups).
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from curation import storage

BATCH_ROWS = 1000  # rows per batch read: a few MB of text
ROW_GROUP_ROWS = 1000  # rows per row group written, for each partition value
BUFFERED_ROWS = 8 * ROW_GROUP_ROWS  # rows a writing task holds at most, all partition values together
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # how Spark and pyarrow name a null partition value
WRITTEN = "path string, rows long"


def read_parquet(spark: SparkSession, location: str, files: list[str] | None = None,
                 schema: pa.Schema | None = None) -> DataFrame:
    """The rows of the Parquet `files` under `location` (default: `curation.storage.parquet_files`) as a
    DataFrame of `schema` (default: the files', with their hive partition columns), one task per file;
    only `schema`'s columns are read."""
    files = storage.parquet_files(location) if files is None else files
    dataset = storage.parquet_dataset(location, files)
    schema = schema or dataset.schema
    partitioning, names = dataset.partitioning, schema.names

    def read(batches):
        for batch in batches:
            for index in batch.column(0).to_pylist():
                for part in storage.parquet_dataset(location, [files[index]], partitioning).to_batches(
                        columns=names, batch_size=BATCH_ROWS):
                    columns = [part.column(n).cast(schema.field(n).type) for n in names]
                    yield pa.RecordBatch.from_arrays(columns, schema=schema)

    return spark.range(len(files), numPartitions=max(1, len(files))).mapInArrow(read, from_arrow_schema(schema))


def partition_directory(columns: list[str], values: tuple) -> str:
    return "/".join(f"{c}={NULL_PARTITION if v is None else quote(str(v), safe='')}" for c, v in zip(columns, values))


def write_parquet(df: DataFrame, directory: str, partition_by: list[str] = ()) -> dict[str, int]:
    """Writes `df` as zstd Parquet files under `directory` (hive directories by `partition_by`, whose
    columns leave the files); returns {file: rows} of what was written. Nothing is published: the
    caller lists the result with `curation.storage.publish_files` (or reads it back)."""
    partition_by = list(partition_by)
    file_schema = to_arrow_schema(df.select(*[c for c in df.columns if c not in partition_by]).schema)

    def write(batches):
        rows = write_partitioned(batches, directory, partition_by, file_schema,
                                 f"part-{TaskContext.get().partitionId():05d}-{uuid.uuid4().hex[:12]}")
        yield pa.RecordBatch.from_pydict({"path": list(rows), "rows": list(rows.values())})

    return {row["path"]: row["rows"] for row in df.mapInArrow(write, WRITTEN).collect()}


def write_partitioned(batches, directory: str, partition_by: list[str], file_schema: pa.Schema,
                      name: str) -> dict[str, int]:
    """Writes `batches` under `directory`, one file `name`.zstd.parquet per value of `partition_by`
    (hive directories; those columns leave the files), each published whole. Returns {file: rows}.
    A value's rows wait for `ROW_GROUP_ROWS` of them before they are written as one row group (a value
    met a few rows per batch, a rare language, would make row groups of a few rows, each a write),
    `BUFFERED_ROWS` at most waiting in all."""
    writers: dict[tuple, tuple[pq.ParquetWriter, str]] = {}
    rows: dict[str, int] = {}
    waiting: dict[tuple, list[pa.Table]] = {}
    with ExitStack() as files:
        def write(values: tuple) -> None:
            if values not in writers:
                location = storage.join(directory, *filter(None, [partition_directory(partition_by, values)]),
                                        f"{name}.zstd.parquet")
                out = files.enter_context(storage.atomic_output(location))
                writers[values] = files.enter_context(pq.ParquetWriter(out, file_schema, compression="zstd")), \
                    location
            writer, location = writers[values]
            table = pa.concat_tables(waiting.pop(values))
            writer.write_table(table)
            rows[location] = rows.get(location, 0) + table.num_rows

        for batch in batches:
            for values, part in split_by_values(pa.Table.from_batches([batch]), partition_by):
                waiting.setdefault(values, []).append(part.select(file_schema.names).cast(file_schema))
                if sum(len(t) for t in waiting[values]) >= ROW_GROUP_ROWS:
                    write(values)
            if sum(len(t) for parts in waiting.values() for t in parts) >= BUFFERED_ROWS:
                for values in list(waiting):
                    write(values)
        for values in list(waiting):
            write(values)
    return rows


def split_by_values(table: pa.Table, columns: list[str]):
    """(values of `columns`, the rows of `table` that have them) for each combination met, in order."""
    if not columns:
        yield (), table
        return
    positions: dict[tuple, list[int]] = {}
    for row, values in enumerate(zip(*(table.column(c).to_pylist() for c in columns))):
        positions.setdefault(values, []).append(row)
    for values, rows in positions.items():
        yield values, table.take(rows)
