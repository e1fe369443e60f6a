"""The curation job: CommonCrawl WARC/WET → text → line dedup → language ID → KenLM perplexity
→ Wikipedia-reference score → MinHash near-duplicate removal → Parquet by language and bucket.

    python -m jobs.curate --output DIR input.snapshot=2020-05 input.segments=2     (local mode)
    python -m jobs.curate --output DIR --input FILE_OR_URL…
    spark-submit jobs/curate.py --output DIR …                                      (any cluster)

Settings: config/curate.yaml, overridden by KEY=VALUE arguments.

The run directory is resumable. Phase 1 reads and extracts each input (one Spark task each,
streaming) into DIR/segments/ID.parquet, published atomically with its stats (ID.json, written
last, marks it done); a re-run skips done segments and redoes failed or missing ones. Phase 2
reads every done segment and runs the run-wide stages, then replaces DIR/curated/ atomically
(language=xx/bucket=yy/*.parquet, zstd). A stage whose model is not there (no `make lm`, no
`make classifier`) is left out with a note, and its columns stay empty (bucket `all`). DIR/manifest.json lists the segments and their state, DIR/stats.json
the counts per stage and reason; DIR/config.json the effective settings and library versions.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # `spark-submit jobs/curate.py` runs this file as a script: before any
    # other import, put the repository root on the path instead of jobs/ (its tokenize.py would
    # shadow the standard library's).
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import glob
import hashlib
import json
import logging
import shutil
import time
import uuid
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyspark import AccumulatorParam
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from curation.commoncrawl import list_paths, select_segments, snapshot_name
from curation.extract import ExtractStage
from curation.langid import LanguageIdStage
from curation.perplexity import (HEAD_PERCENTILE, TAIL_PERCENTILE, PerplexityStage, available_languages,
                                 load_cutoffs, read_cutoffs, write_cutoffs)
from curation.wikiref import WikirefStage
from curation.pipeline import merge_stats, nest_counters, run_stages, stage_stats
from curation.report import write_report
from curation.warc import ArchiveReader, cc_segment
from jobs.config import CONFIG_DIR, load_config
from jobs.dedup import ID as DOC_ID
from jobs.dedup import line_dedup, minhash_dedup
from jobs.spark import spark_session

log = logging.getLogger("curate")

EXTRACTED_SCHEMA = pa.schema([
    ("url", pa.string()), ("date_download", pa.string()), ("digest", pa.string()),
    ("length", pa.int64()), ("nlines", pa.int64()), ("source_domain", pa.string()),
    ("title", pa.string()), ("raw_content", pa.string()), ("original_nlines", pa.int64()),
    ("original_length", pa.int64()), ("cc_segment", pa.string()),
])
CURATED_SCHEMA = T.StructType([
    *(T.StructField(f.name, T.LongType() if pa.types.is_int64(f.type) else T.StringType())
      for f in EXTRACTED_SCHEMA),
    T.StructField("language", T.StringType()),
    T.StructField("language_score", T.DoubleType()),
    T.StructField("perplexity", T.DoubleType()),
    T.StructField("bucket", T.StringType()),
    T.StructField("wikiref_score", T.DoubleType()),
    T.StructField("wikiref_keep", T.BooleanType()),
])
ROW_GROUP_DOCS = 1000
LIBRARIES = ["pyspark", "fasttext", "warcio", "resiliparse", "pyarrow", "numpy"]


class StatsAccumulator(AccumulatorParam):
    """Nested counters from every task, merged on the driver."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, value1: dict, value2: dict) -> dict:
        return merge_stats(value1, value2)


def segment_id(source: str) -> str:
    """A file name for an input's output: readable, unique per input, and the same for a CommonCrawl
    path whichever mirror serves it (so a run resumes after a change of base URL)."""
    key = cc_segment(source) if "crawl-data/" in source else source
    name = os.path.basename(source.rstrip("/")).split("?")[0]
    for suffix in (".gz", ".warc", ".wet"):
        name = name.removesuffix(suffix)
    return f"{name[:80]}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


# ---- phase 1: one task per input, each published atomically -------------------------------------

def extract_segment(source: str, segments_dir: str, config: dict) -> dict:
    """Streams one input through reading and extraction into ID.parquet; writes ID.json last."""
    seg = segment_id(source)
    final = os.path.join(segments_dir, seg + ".parquet")
    tmp = f"{final}.tmp-{uuid.uuid4().hex}"
    reader = ArchiveReader(config["read"]["max_payload_bytes"], config["read"]["max_line_bytes"],
                           config["input"]["retries"], config["input"]["backoff_seconds"])
    extract = ExtractStage(config["extract"]["min_length"], config["extract"]["max_nesting"],
                           config["extract"]["max_garbage_share"])
    started = time.time()
    try:
        with pq.ParquetWriter(tmp, EXTRACTED_SCHEMA, compression="zstd") as writer:
            batch: list[dict] = []
            for doc in run_stages(reader.read(source), [extract]):
                batch.append(doc)
                if len(batch) == ROW_GROUP_DOCS:
                    writer.write_table(pa.Table.from_pylist(batch, EXTRACTED_SCHEMA))
                    batch.clear()
            writer.write_table(pa.Table.from_pylist(batch, EXTRACTED_SCHEMA))
        if reader.stats["dropped.corrupt_record"] and not reader.stats["out"]:
            raise ValueError("no page could be read: corrupt, or not a WARC/WET file")
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    stats = {"source": source, "seconds": round(time.time() - started, 3),
             "stages": {"read": nest_counters(reader.stats), "extract": nest_counters(extract.stats)}}
    tmp_json = f"{final[:-8]}.json.tmp-{uuid.uuid4().hex}"
    with open(tmp_json, "w") as f:
        json.dump(stats, f)
    os.replace(tmp_json, os.path.join(segments_dir, seg + ".json"))
    return stats


def extract_segments(sources, segments_dir: str, config: dict):
    """A task's share of phase 1; a failed input is reported, never fatal to the job."""
    for source in sources:
        try:
            extract_segment(source, segments_dir, config)
            yield source, None
        except Exception as error:
            log.exception("%s failed", source)
            yield source, f"{type(error).__name__}: {error}"


def bad_input(stages: dict) -> dict:
    """A segment's counts of bad input (damaged records, oversized or non-text pages), by reason."""
    reasons = {*ArchiveReader.bad_input_reasons, *ExtractStage.bad_input_reasons}
    return {reason: n for stage in stages.values() for reason, n in stage["dropped"].items() if reason in reasons}


def is_done(segments_dir: Path, source: str) -> bool:
    return (segments_dir / f"{segment_id(source)}.json").exists()


# ---- phase 2: run-wide stages over every done segment ------------------------------------------

def model_stages(config: dict) -> dict[str, bool]:
    """Which model-backed stages run: those whose models exist. A path that the user set and that
    does not exist is an error; a missing default only leaves the stage out, with a note."""
    defaults = load_config(CONFIG_DIR / "curate.yaml")
    found = {"perplexity": bool(Path(config["perplexity"]["models"]).is_dir()
                                and available_languages(config["perplexity"]["models"])),
             "wikiref": Path(config["wikiref"]["model"]).is_file()}
    hints = {"perplexity": ("perplexity.models", "make lm"), "wikiref": ("wikiref.model", "make classifier")}
    for stage, present in found.items():
        key, target = hints[stage]
        section, name = key.split(".")
        if not present and config[section][name] != defaults[section][name]:
            raise FileNotFoundError(f"{key}={config[section][name]}: no model there (train one with `{target}`)")
        if not present:
            print(f"note: no {stage} model at {config[section][name]}: stage skipped (`{target}` trains one)")
    return found


def annotate(rows, stats, config: dict, enabled: dict[str, bool]):
    """Row-wise stages of phase 2, streamed per partition; counters go to the accumulator."""
    stages = [LanguageIdStage(config["langid"]["model"], config["langid"]["threshold"])]
    if enabled["perplexity"]:
        stages.append(PerplexityStage(config["perplexity"]["models"], config["perplexity"]["per_line"],
                                      max_chars=config["perplexity"]["max_chars"]))
    if enabled["wikiref"]:
        stages.append(WikirefStage(config["wikiref"]["model"], config["wikiref"]["threshold"]))
    names = [f.name for f in CURATED_SCHEMA.fields]
    below_wikiref = 0
    for doc in run_stages((row.asDict() for row in rows), stages):
        if config["wikiref"]["drop"] and doc.get("wikiref_keep") is False:
            below_wikiref += 1
            continue
        doc.setdefault("bucket", "all")
        yield tuple(doc.get(name) for name in names) + (doc[DOC_ID],)
    task_stats = stage_stats(stages)
    if below_wikiref:
        task_stats["wikiref"]["dropped"]["below_threshold"] = below_wikiref
    stats.add({"stages": task_stats})


def write_curated(spark: SparkSession, run_dir: Path, done_files: list[str], config: dict,
                  enabled: dict[str, bool]) -> dict:
    accumulated = spark.sparkContext.accumulator({}, StatsAccumulator())
    stats: dict = {"stages": {}}
    curated, tmp = run_dir / "curated", run_dir / f"curated.tmp-{uuid.uuid4().hex}"
    extracted_schema = T.StructType([f for f in CURATED_SCHEMA.fields if f.name in EXTRACTED_SCHEMA.names])
    documents = spark.read.schema(extracted_schema).parquet(*done_files) if done_files else \
        spark.createDataFrame([], extracted_schema)
    if config["line_dedup"]["enabled"]:
        documents, stats["stages"]["line_dedup"] = line_dedup(documents, min_length=config["extract"]["min_length"])
    else:
        documents = documents.withColumn(DOC_ID, F.xxhash64("url", "raw_content"))
    columns = [*(f.name for f in extracted_schema.fields), DOC_ID]
    rows = documents.select(*columns).rdd.mapPartitions(lambda part: annotate(part, accumulated, config, enabled))
    frame = spark.createDataFrame(rows, T.StructType([*CURATED_SCHEMA.fields, T.StructField(DOC_ID, T.LongType())]))
    frame = frame.persist()  # the row-wise stages run once, not once per later pass
    if enabled["perplexity"]:
        frame, stats["cutoffs_from_run"] = bucket_from_run(frame, run_dir)
    scored: dict = {}
    if config["minhash"]["enabled"]:
        minhash = config["minhash"]
        frame, scored = minhash_dedup(frame, minhash["ngram"], minhash["num_perm"], minhash["threshold"],
                                      keep=minhash["keep"], max_chars=minhash["max_chars"])
    (frame.drop(DOC_ID).write.mode("overwrite").option("compression", "zstd")
     .partitionBy("language", "bucket").parquet(str(tmp)))
    # Replace the previous result whole: readers see the old or the new output, never a mix.
    old = run_dir / f"curated.old-{uuid.uuid4().hex}"
    if curated.exists():
        curated.rename(old)
    tmp.rename(curated)
    shutil.rmtree(old, ignore_errors=True)
    merge_stats(stats, accumulated.value)
    if scored:
        stats["stages"]["minhash"] = scored
    return stats


def bucket_from_run(frame, run_dir: Path):
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
    write_cutoffs(run_dir / "cutoff.csv", cutoffs)
    table = frame.sparkSession.createDataFrame(
        [(lang, values[HEAD_PERCENTILE], values[TAIL_PERCENTILE]) for lang, values in cutoffs.items()],
        "language string, _head double, _tail double")
    rebucketed = (frame.join(F.broadcast(table), "language", "left")
                  .withColumn("bucket", F.when(F.col("_head").isNull() | (F.col("bucket") != "all"), F.col("bucket"))
                              .when(F.col("perplexity") < F.col("_head"), "head")
                              .when(F.col("perplexity") < F.col("_tail"), "middle").otherwise("tail"))
                  .drop("_head", "_tail"))
    return rebucketed, sorted(cutoffs)


# ---- the run -----------------------------------------------------------------------------------

def resolve_inputs(config: dict) -> list[str]:
    source = config["input"]
    if source["snapshot"]:
        paths = list_paths(source["snapshot"], source["base_url"], source["format"],
                           source["retries"], source["backoff_seconds"])
        return select_segments(paths, source["segments"], source["seed"])
    inputs = []
    for pattern in source["paths"]:
        matches = sorted(glob.glob(pattern)) if "://" not in pattern else [pattern]
        if not matches:
            raise FileNotFoundError(f"input {pattern!r} matches no file")
        inputs.extend(matches)
    if not inputs:
        raise ValueError("no input: set input.snapshot=YYYY-WW or pass --input PATHS")
    return inputs


def run(spark: SparkSession, config: dict, run_dir: str | Path, enabled: dict[str, bool] | None = None) -> dict:
    """Curates the configured inputs into `run_dir`, resuming what an earlier run left; returns
    (and writes) the stats. `enabled`: the result of `model_stages(config)` when already known."""
    started = time.time()
    enabled = enabled if enabled is not None else model_stages(config)
    run_dir = Path(run_dir)
    segments_dir = run_dir / "segments"
    segments_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(run_dir)
    inputs = resolve_inputs(config)
    write_json(run_dir / "config.json", {
        "config": config, "inputs": inputs, "python": sys.version.split()[0],
        "libraries": {name: version(name) for name in LIBRARIES}})

    todo = [source for source in inputs if not is_done(segments_dir, source)]
    failures = {}
    if todo:
        tasks = spark.sparkContext.parallelize(todo, len(todo))
        failures = dict(item for item in tasks.mapPartitions(
            lambda part: extract_segments(part, str(segments_dir), config)).collect() if item[1])
    done = [s for s in inputs if is_done(segments_dir, s)]
    # Phase-1 counters survive a resume: they are stored per segment.
    segment_stats = {s: json.loads((segments_dir / f"{segment_id(s)}.json").read_text())["stages"] for s in done}
    manifest = {"snapshot": snapshot_name(config["input"]["snapshot"]) if config["input"]["snapshot"] else None,
                "segments": [{"source": s, "id": segment_id(s), "state": "done" if s in segment_stats else "failed",
                              "error": failures.get(s), "bad_input": bad_input(segment_stats.get(s, {}))}
                             for s in inputs]}
    write_json(run_dir / "manifest.json", manifest)

    stats: dict = {}
    for source in done:
        merge_stats(stats, {"stages": segment_stats[source]})
    done_files = [str(segments_dir / f"{segment_id(s)}.parquet") for s in done]
    merge_stats(stats, write_curated(spark, run_dir, done_files, config, enabled))
    failed = [seg for seg in manifest["segments"] if seg["state"] == "failed"]
    result = {**stats, "inputs": len(inputs), "segments_done": len(done), "segments_resumed": len(inputs) - len(todo),
              "failed_segments": failed, "output": str(run_dir / "curated"),
              "documents_out": ds.dataset(run_dir / "curated", format="parquet").count_rows(),
              "seconds": round(time.time() - started, 2)}
    write_json(run_dir / "stats.json", result)
    result["report"] = str(write_report(run_dir, bucket_cutoffs(config, run_dir, enabled)))
    return result


def bucket_cutoffs(config: dict, run_dir: Path, enabled: dict[str, bool]) -> dict:
    """{language: {"p30": …, "p60": …}} used for this run's buckets, for the report's plots."""
    if not enabled["perplexity"]:
        return {}
    cutoffs = dict(load_cutoffs(config["perplexity"]["models"]))
    if (run_dir / "cutoff.csv").exists():
        cutoffs.update(read_cutoffs(run_dir / "cutoff.csv"))
    return {lang: {"p30": values[HEAD_PERCENTILE], "p60": values[TAIL_PERCENTILE]} for lang, values in cutoffs.items()}


def remove_leftovers(run_dir: Path) -> None:
    """Temporary files of a killed run: never published, so never read; one run per directory."""
    for leftover in [*run_dir.glob("segments/*.tmp-*"), *run_dir.glob("curated.tmp-*"), *run_dir.glob("curated.old-*")]:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


def write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2))  # insertion order: stages in pipeline order
    tmp.replace(path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="run directory (re-using one resumes it)")
    parser.add_argument("--input", nargs="+", default=[], help="WARC/WET paths, globs or URLs (sets input.paths)")
    parser.add_argument("--config", default=str(CONFIG_DIR / "curate.yaml"))
    parser.add_argument("--master", help="Spark master for local runs (default local[*]); ignored under spark-submit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings, e.g. langid.threshold=0.6")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = [*args.overrides, *([f"input.paths={json.dumps(args.input)}"] if args.input else [])]
    try:
        config = load_config(args.config, overrides)
        resolve_inputs(config)  # fail fast on a bad snapshot name, an unreachable URL, no input
        enabled = model_stages(config)  # … and on a model path that is not there
    except (ValueError, KeyError, FileNotFoundError, ConnectionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output = Path(args.output)
    spark = spark_session("ccurate-curate", master=args.master, log_file=output / "logs" / "spark.log")
    try:
        stats = run(spark, config, output, enabled)
    finally:
        spark.stop()
    print_summary(stats, output)
    failed_share = len(stats["failed_segments"]) / max(1, stats["inputs"])
    return 1 if failed_share > config["run"]["max_failed_share"] else 0


def print_summary(stats: dict, output: Path) -> None:
    print(f"\ncurated {stats['documents_out']} documents from {stats['segments_done']}/{stats['inputs']} segments "
          f"({stats['segments_resumed']} already done) in {stats['seconds']} s")
    for name, stage in stats.get("stages", {}).items():
        dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(stage.get("dropped", {}).items()))
        print(f"  {name:<10} in {stage.get('in', 0):>8}  out {stage.get('out', 0):>8}  {dropped}")
    print(f"  output:   {stats['output']}\n  stats:    {output / 'stats.json'}\n  manifest: {output / 'manifest.json'}"
          f"\n  report:   {stats['report']}")
    for failure in stats["failed_segments"]:
        print(f"  FAILED {failure['source']}: {failure['error']}")


if __name__ == "__main__":
    sys.exit(main())
