"""The engine that runs a source of `curation.sources` on Spark: `python -m jobs.sources.NAME --input
PATH… --output DIR [KEY=VALUE…]` (or `spark-submit jobs/sources/NAME.py …` with `make package`'s zip).

DIR is claimed (`_ccurate_run.json`: a non-empty folder without it is refused) and resumable per input:
each input is read by a Spark task (a few small ones share a task), in a forked child process, into
Parquet published file by file, then `DIR/inputs/ID.json` (its counts) is written last and marks it
done. A rerun skips the inputs done and reads the failed or missing ones again; what a killed run left
unpublished is deleted. An input that raises or kills its process fails alone, listed with its cause in
`DIR/manifest.json` (`run.skip_after_failures` stops retrying one that always fails). Then the source's
run-wide steps run over the stored keys (`jobs.sources.run_wide`), and `DIR/documents/*.zstd.parquet`
(`raw_content`, `source` and the source's own columns) are published by `DIR/documents/_PUBLISHED.json`,
written last. `DIR/stats.json`: documents in and out of every stage and its drops by reason; its
`failed_inputs`; `DIR/config.json`: the settings and inputs; `DIR/report.html`: the source's section.
The driver holds the inputs' names and records, never a document.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from importlib.metadata import version

from pyspark.sql import SparkSession

from curation import storage
from curation.pipeline import merge_stats
from curation.redact import install_redaction, redact_config, redact_text
from curation.settings import RunSettings, exit_with_error, parse_command, section, setting
from curation.sources import RunWideStep, Source
from curation.storage import NotARunDirectory
from jobs.sources.inputs import input_bytes, input_id, plan_tasks, resolve_inputs
from jobs.sources.report import write_report
from jobs.sources.run_wide import run_wide_drops, write_documents
from jobs.sources.task import DOCUMENTS, INPUTS, done_record, read_inputs
from jobs.spark import claimed_session, counting_tasks, master_setting

LIBRARIES = ["pyspark", "pyarrow", "resiliparse", "py7zr"]


def job_settings(source: Source) -> type:
    """The settings of `python -m jobs.sources.NAME`: the inputs, DIR, the source's own section (named
    after it: `stackexchange.sites=…`) and how the run ends."""
    return dataclasses.make_dataclass(f"{source.name.title()}JobSettings", [
        ("input", list[str], setting([], "local paths, globs, folders or URIs of the inputs", required=True)),
        ("output", str | None, setting(None, "the run directory: a new or empty one, or an earlier run's to resume",
                                       required=True)),
        ("master", str | None, master_setting()),
        ("documents_per_file", int, setting(100_000, "documents per Parquet file at most", minimum=1)),
        (source.name, source.settings, section(source.settings)),
        ("run", RunSettings, section(RunSettings)),
    ], frozen=True)


def run(spark: SparkSession, source: Source, settings, run_dir: str) -> dict:
    """Runs `source` over the inputs of `settings` (an instance of `job_settings(source)`) into `run_dir`,
    resuming what an earlier run left; returns (and writes) the stats."""
    started, run_dir = time.time(), storage.absolute(run_dir)
    storage.claim_run_directory(run_dir, source.name)
    options, counts = getattr(settings, source.name), {}
    steps = source.run_wide(options)
    inputs = resolve_inputs(source, settings.input)
    sizes = {location: input_bytes(location) for location in inputs}
    left_out = source.left_out(sizes, options)
    write_json(run_dir, "config.json", {"config": dataclasses.asdict(settings), "inputs": inputs,
                                        "python": sys.version.split()[0],
                                        "libraries": {name: version(name) for name in LIBRARIES}})
    failed_before = previous_failed_runs(run_dir)
    records = done_records(run_dir, inputs, steps)
    remove_leftovers(run_dir, records.values())
    skip_after = settings.run.skip_after_failures
    skipped = {location for location in inputs if skip_after and failed_before.get(location, 0) >= skip_after}
    todo = [location for location in inputs if location not in records and location not in left_out
            and location not in skipped]
    errors = read_on_spark(spark, source, options, run_dir, {loc: sizes[loc] for loc in todo},
                           settings.documents_per_file, counts)
    resumed, records = len(records), done_records(run_dir, inputs, steps)
    entries = [manifest_entry(location, sizes[location], records.get(location), left_out.get(location),
                              errors.get(location), failed_before.get(location, 0), location in skipped)
               for location in inputs]
    write_json(run_dir, "manifest.json", {"source": source.name, "inputs": entries})
    ordered = [records[location] for location in inputs if location in records]
    about = publish_documents(spark, run_dir, ordered, steps, counts)
    stages: dict = {}
    for record in ordered:
        merge_stats(stages, record["stages"])
    stages.update(about["stages"])
    stats = {"source": source.name, "inputs": len(inputs), "inputs_read": len(records), "inputs_resumed": resumed,
             "inputs_left_out": len(left_out), "failed_inputs": [e for e in entries if e["state"] in ("failed",
                                                                                                     "skipped")],
             "stages": stages, "documents_out": about["documents"], "characters_out": about["characters"],
             "output": storage.join(run_dir, DOCUMENTS), "tasks": counts, "seconds": round(time.time() - started, 2)}
    write_json(run_dir, "stats.json", stats)
    return stats


def done_records(run_dir: str, inputs: list[str], steps: list[RunWideStep]) -> dict[str, dict]:
    return {location: record for location in inputs if (record := done_record(run_dir, location, steps))}


def read_on_spark(spark: SparkSession, source: Source, options, run_dir: str, sizes: dict[str, int],
                  per_file: int, counts: dict) -> dict[str, str]:
    """Reads the inputs of `sizes` in Spark tasks; {input: the cause of its failure} of those that failed."""
    if not sizes:
        return {}
    tasks, name = plan_tasks(sizes, spark.sparkContext.defaultParallelism), source.name
    with counting_tasks(spark, "read", counts):
        results = spark.sparkContext.parallelize(tasks, len(tasks)).mapPartitions(lambda part: read_inputs(
            name, options, (location for chunk in part for location in chunk), run_dir, per_file)).collect()
    return {location: error for location, error in results if error}


def publish_documents(spark: SparkSession, run_dir: str, records: list[dict], steps: list[RunWideStep],
                      counts: dict) -> dict:
    """Runs the steps and publishes `DIR/documents/`, unless its marker says it holds the same inputs
    through the same steps; returns what the marker says of it (its steps' stats, documents, characters)."""
    documents = storage.join(run_dir, DOCUMENTS)
    # each input by the token of its reading: a rerun that read one again publishes again
    about = {"inputs": [record["reading"] for record in records], "run_wide": [step.identity for step in steps]}
    marker = storage.published_marker(documents)
    if marker and {key: marker.get("about", {}).get(key) for key in about} == about:
        return marker["about"]
    with counting_tasks(spark, "run_wide", counts):
        drops, step_stats, lost = run_wide_drops(spark, run_dir, records, steps)
        written = write_documents(spark, run_dir, records, drops, lost)
    about.update(stages=step_stats, documents=sum(rows for rows, _ in written.values()),
                 characters=sum(characters for _, characters in written.values()))
    storage.publish_files(documents, {storage.join(run_dir, name): rows for name, (rows, _) in written.items()}, about)
    return about


def remove_leftovers(run_dir: str, records) -> None:
    """What a killed run wrote and never published or recorded: temporary files, an unfinished input's
    files in `inputs/`, and files in `documents/` that neither its marker nor a done input lists."""
    storage.remove_temporaries(run_dir, recursive=True)
    recorded = {storage.join(run_dir, name) for record in records
                for name in [*record["files"], *filter(None, [record["keys_file"]])]}
    for location in storage.list_files(storage.join(run_dir, INPUTS)):
        if not location.endswith(".json") and location not in recorded:
            storage.delete(location)
    storage.remove_unpublished(storage.join(run_dir, DOCUMENTS), keep=recorded)


def previous_failed_runs(run_dir: str) -> dict[str, int]:
    """{input: runs in a row it failed in}, from the manifest the previous run left."""
    path = storage.join(run_dir, "manifest.json")
    if not storage.exists(path):
        return {}
    return {entry["source"]: entry["failed_runs"] for entry in json.loads(storage.read_text(path))["inputs"]}


def manifest_entry(location: str, size: int, record: dict | None, left_out: str | None, error: str | None,
                   failed_before: int, skipped: bool) -> dict:
    """An input's line in the manifest: its state (done, left_out, skipped, failed), the cause, the runs in a
    row it failed in, and for a done one its documents and the records its reader dropped, by reason."""
    entry = {"source": redact_text(location), "id": input_id(location), "bytes": size}
    if record is not None:
        return {**entry, "state": "done", "error": None, "failed_runs": 0, "documents": record["documents"],
                "dropped": record["stages"]["read"]["dropped"]}
    if left_out is not None:
        return {**entry, "state": "left_out", "error": left_out, "failed_runs": 0}
    if skipped:
        return {**entry, "state": "skipped", "failed_runs": failed_before,
                "error": f"skipped: failed in {failed_before} runs in a row (run.skip_after_failures)"}
    return {**entry, "state": "failed", "error": error or "not read", "failed_runs": failed_before + 1}


def write_json(run_dir: str, name: str, value) -> None:
    storage.write_text(storage.join(run_dir, name), json.dumps(redact_config(value), indent=1))


def main(source: Source, argv: list[str] | None = None, description: str = __doc__) -> int:
    """The command line of a source job; returns its exit status (1: more inputs failed than
    `run.max_failed_share` allows)."""
    install_redaction()
    settings = parse_command(job_settings(source), argv, prog=f"python -m jobs.sources.{source.name}",
                             description=description, flags={"--input": "input", "--output": "output",
                                                             "--master": "master"})
    try:
        resolve_inputs(source, settings.input)
    except (FileNotFoundError, OSError, ValueError) as error:
        exit_with_error(redact_text(str(error)))
    output = storage.absolute(settings.output)
    try:
        spark = claimed_session(f"ccurate-{source.name}", output, source.name, settings.master)
    except (NotARunDirectory, OSError) as error:
        exit_with_error(f"--output {redact_text(str(error))}")
    try:
        stats = run(spark, source, settings, output)
    finally:
        spark.stop()
    stats["report"] = write_report(output)
    print_summary(stats)
    failed_share = len(stats["failed_inputs"]) / max(1, stats["inputs"] - stats["inputs_left_out"])
    return 1 if failed_share > settings.run.max_failed_share else 0


def print_summary(stats: dict) -> None:
    print(f"\n{stats['source']}: {stats['documents_out']} documents from {stats['inputs_read']}/{stats['inputs']} "
          f"inputs ({stats['inputs_resumed']} already done, {stats['inputs_left_out']} left out) in "
          f"{stats['seconds']} s")
    for name, stage in stats["stages"].items():
        dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(stage.get("dropped", {}).items()))
        print(f"  {name:<18} in {stage.get('in', 0):>9}  out {stage.get('out', 0):>9}  {dropped}")
    print(f"  documents: {stats['output']}\n  report:    {stats['report']}")
    for failure in stats["failed_inputs"]:
        print(f"  FAILED {failure['source']}: {failure['error']}")
