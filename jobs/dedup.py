"""The `jobs.dedup` command: CCNet line dedup and MinHash near-duplicate removal on Spark, over the
whole input.

    python -m jobs.dedup --input DIR --output DIR [steps=[minhash]] [minhash.threshold=0.8 …]
    spark-submit jobs/dedup.py --input DIR --output DIR …                (--print-settings: them all)

Reads any Parquet with `url` and `raw_content`, writes the kept documents as Parquet (zstd) in
DIR/data and the counts in DIR/stats.json. Line dedup is here; MinHash is `jobs.minhash`'s, which
`jobs.curate` runs on its stored signatures (its line dedup runs in phase 2's tasks, from file to file).

Line dedup: the documents of each group (e.g. of `line_dedup.group_size` segments) in one Python
task, which hashes their lines into an in-memory array and rewrites them (curation.dedup_lines,
cc_net's design): one shuffle of the documents to their group, none of line hashes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from curation import storage
from curation.dedup_lines import GroupDedup, LineDedupSettings
from curation.extract import ExtractSettings
from curation.minhash import MinHashSettings
from curation.settings import exit_with_error, parse_command, section, setting
from jobs.minhash import ID, minhash_dedup, with_doc_id
from jobs.spark import master_setting
from jobs.storage_io import read_parquet, write_parquet

# ---------------------------------------------------------------------------------------------
# Line dedup


DEDUP_FIELDS = ("raw_content", "length", "nlines", "original_length", "original_nlines")
GROUP = "_dedup_group"


def _dedup_group_fn(settings: LineDedupSettings, min_length: int, out_names: list[str]):
    """One group's documents (an Arrow table) → the same rows rewritten by `GroupDedup` (the rules'
    one place), with `_lines_removed` and `_drop_reason`."""
    def fn(table: pa.Table) -> pa.Table:
        group = GroupDedup(min_length, settings.min_length_after)
        docs = table.select(list(DEDUP_FIELDS)).to_pylist()  # the text crosses into Python once, for both passes
        for doc in docs:
            group.add(doc["raw_content"])
        new = {name: [] for name in (*DEDUP_FIELDS, "_lines_removed", "_drop_reason")}
        for doc in docs:
            out, reason, removed = group.apply(doc)
            for name in DEDUP_FIELDS:
                new[name].append(out[name])
            new["_lines_removed"].append(removed)
            new["_drop_reason"].append(reason)
        cols = {name: table.column(name) for name in table.column_names}
        cols.update({name: pa.array(values, pa.string() if name in ("raw_content", "_drop_reason") else pa.int64())
                     for name, values in new.items()})
        return pa.table([cols[n] for n in out_names], names=out_names)
    return fn


def _dedup_counts(rows) -> dict:
    """Line dedup's counts from rows of (`_drop_reason`, docs, lines_in, lines_removed)."""
    stats: dict = {"in": 0, "out": 0, "dropped": {}, "lines_in": 0, "lines_removed": 0}
    for row in rows:
        stats["in"] += row["docs"]
        stats["lines_in"] += row["lines_in"] or 0
        stats["lines_removed"] += row["lines_removed"] or 0
        if row["_drop_reason"] is None:
            stats["out"] += row["docs"]
        else:
            stats["dropped"][row["_drop_reason"]] = row["docs"]
    return stats


def line_dedup(df: DataFrame, group: str | list[str] | None = None, settings: LineDedupSettings = LineDedupSettings(),
               min_length: int = 0, by_group: bool = False) -> tuple[DataFrame, dict]:
    """CCNet line dedup of `df` within each group of the `group` column(s) (e.g. a group of segments;
    None: `df` is one group; rows with a null group form one group together). Each group is
    deduplicated in ONE Spark task (`curation.dedup_lines.GroupDedup`, cc_net's in-memory set of a
    group's hashes): no shuffle of line hashes, but the task holds its group's rows, so memory is
    bounded by the size of a group (text + ~24 bytes a line). Documents shorter than `min_length` as
    read count for nothing and are dropped; after dedup, documents left with no line (or shorter than
    `settings.min_length_after`) are dropped. Updates `raw_content`, `length`, `nlines`; keeps
    `original_length`/`original_nlines` (filled from the input text when absent or null).
    Returns the kept documents (persisted, same columns, `_doc_id` added) and
    {"in", "out", "dropped": {"empty", "too_short"}, "lines_in", "lines_removed", "seconds"}; with
    `by_group` (`group` one column), also "groups": {group value: the same counts, less "seconds"}."""
    started = time.perf_counter()
    group_cols = [group] if isinstance(group, str) else list(group or [])
    df = with_doc_id(df)
    for name in ("length", "nlines", "original_length", "original_nlines"):
        df = df.withColumn(name, F.col(name).cast("long") if name in df.columns else F.lit(None).cast("long"))
    keys = group_cols or [GROUP]
    if not group_cols:
        df = df.withColumn(GROUP, F.lit(0))
    out_fields = [f for f in df.schema.fields if f.name != GROUP]
    out_fields += [T.StructField("_lines_removed", T.LongType()), T.StructField("_drop_reason", T.StringType())]
    out_schema = T.StructType(out_fields)
    result = (df.groupBy(*keys).applyInArrow(_dedup_group_fn(settings, min_length, out_schema.names), out_schema)
              .persist())

    by = [group] if by_group else []
    rows = (result.groupBy(*by, "_drop_reason")
            .agg(F.count(F.lit(1)).alias("docs"), F.sum("original_nlines").alias("lines_in"),
                 F.sum("_lines_removed").alias("lines_removed")).collect())
    stats = _dedup_counts(rows)
    if by_group:
        stats["groups"] = {key: _dedup_counts([row for row in rows if row[group] == key])
                           for key in {row[group] for row in rows}}
    stats["seconds"] = time.perf_counter() - started
    kept = result.where(F.col("_drop_reason").isNull()).drop("_lines_removed", "_drop_reason")
    return kept, stats


# ---------------------------------------------------------------------------------------------
# CLI


@dataclass(frozen=True)
class DedupSettings:
    """Settings of `jobs.dedup`: what it reads and writes, its steps, the length floor, line dedup and MinHash."""
    input: str | None = setting(None, "Parquet file or directory with url and raw_content", required=True)
    output: str | None = setting(None, "output directory (data/ Parquet + stats.json)", required=True)
    steps: list[Literal["lines", "minhash"]] = setting(["lines", "minhash"], "what runs: lines (line dedup), "
                                                       "minhash (near-duplicates), lines first")
    group: list[str] = setting([], "column(s) whose values are line dedup's groups ([]: the input is one group)")
    master: str | None = master_setting()
    extract: ExtractSettings = section(ExtractSettings)
    line_dedup: LineDedupSettings = section(LineDedupSettings)
    minhash: MinHashSettings = section(MinHashSettings)


def main(argv: list[str] | None = None) -> dict:
    settings = parse_command(DedupSettings, argv, prog="python -m jobs.dedup", description=__doc__,
                             flags={"--input": "input", "--output": "output", "--master": "master"})
    from jobs.spark import claimed_session

    output = storage.absolute(settings.output)
    try:
        spark = claimed_session("ccurate-dedup", output, "dedup", settings.master)
    except storage.NotARunDirectory as error:
        exit_with_error(f"--output {error}")
    started = time.perf_counter()
    df = read_parquet(spark, storage.absolute(settings.input))
    stats: dict = {}
    if "lines" in settings.steps:
        df, stats["line_dedup"] = line_dedup(df, settings.group or None, settings.line_dedup,
                                             min_length=settings.extract.min_length)
    if "minhash" in settings.steps:
        df, stats["minhash"] = minhash_dedup(df, settings.minhash, checkpoint_dir=storage.join(output, "checkpoints"))
    data = storage.join(output, "data")
    storage.remove_unpublished(data)  # a killed run's files
    storage.publish_files(data, write_parquet(df.drop(ID), data))
    storage.delete(storage.join(output, "checkpoints"))
    stats["seconds"] = time.perf_counter() - started
    storage.write_text(storage.join(output, "stats.json"), json.dumps(stats, indent=2))
    print(json.dumps(stats, indent=2))
    return stats


if __name__ == "__main__":
    main()
