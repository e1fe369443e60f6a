"""One curate run from start to end: the run directory claimed and cleared of what a killed run left,
the inputs resolved, phase 1 on the inputs not yet done, the manifest, phase 2 and the selection,
stats.json and the report. `Run` holds what the steps share."""

from __future__ import annotations

import dataclasses
import glob
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from pyspark.sql import SparkSession

from curation import storage
from curation.commoncrawl import list_paths, select_segments, snapshot_name
from curation.perplexity import HEAD_PERCENTILE, TAIL_PERCENTILE, PerplexityStage, load_cutoffs, read_cutoffs
from curation.pipeline import Stage, merge_stats
from curation.report import write_report
from curation.settings import InputSettings, as_dict
from curation.stages import ROW_STAGES
from jobs.curate import manifest
from jobs.curate.layout import RunDirectory
from jobs.curate.phase1 import extract_inputs
from jobs.curate.selection import curate_groups
from jobs.curate.units import dedup_groups
from jobs.spark import launched_by_spark_submit

LIBRARIES = ["pyspark", "fasttext", "warcio", "resiliparse", "pyarrow", "numpy"]


@dataclass(frozen=True)
class Run:
    """What one curate run holds; `run` builds it, the phases use it (their Spark tasks get its parts)."""
    spark: SparkSession
    settings: object  # jobs.curate.settings.CurateSettings
    directory: RunDirectory
    stages: tuple[type[Stage], ...]  # the registered row-wise stages that run (their models are there)
    inputs: list[str]  # every input, in order: a CommonCrawl listing's selection, or the given paths


def model_stages(settings) -> tuple[type[Stage], ...]:
    """The registered stages that run: those whose models are there. A model path that the user set
    and that is empty is an error, as is a missing model that no make target trains; a missing
    default of a trainable one leaves its stage out, with a note (its columns stay empty). Under
    spark-submit, a path the user set that the driver does not see is the executors' to find (a
    model shipped with --archives is unpacked beside them only)."""
    running = []
    for stage in ROW_STAGES:
        section = getattr(settings, stage.name)
        missing = [model for model in stage.models if not model.files(getattr(section, model.setting))]
        for model in list(missing):
            location = getattr(section, model.setting)
            user_set = location != getattr(stage.settings_class(), model.setting)
            if user_set and launched_by_spark_submit():
                print(f"note: {stage.name}.{model.setting}={location} is not on the driver: the executors read it")
                missing.remove(model)
            elif user_set or model.train is None:
                how = f" (train one with `{model.train}`)" if model.train else ""
                raise FileNotFoundError(f"{stage.name}.{model.setting}={location}: no model there{how}")
            else:
                print(f"note: no {stage.name} model at {location}: stage skipped (`{model.train}` trains one)")
        if not missing:
            running.append(stage)
    return tuple(running)


def resolve_inputs(source: InputSettings) -> list[str]:
    """The inputs in order: a snapshot's selected segments, or the paths (globs expanded) and URIs."""
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


def run(spark: SparkSession, settings, run_dir: str | Path | None = None,
        stages: tuple[type[Stage], ...] | None = None) -> dict:
    """Curates the configured inputs into the run directory (`run_dir`, else `settings.output`: a
    local path or URI), resuming what an earlier run left; returns (and writes) the stats, and draws
    the report. `stages`: `model_stages(settings)` when already known. Raises
    storage.NotARunDirectory for a non-empty directory that is not a run directory."""
    started = time.time()
    settings = dataclasses.replace(settings, output=str(run_dir)) if run_dir is not None else settings
    directory = RunDirectory(storage.absolute(settings.output))
    storage.claim_run_directory(directory.root, "curate")
    directory.remove_leftovers()
    stages = model_stages(settings) if stages is None else stages
    current = Run(spark, settings, directory, stages, resolve_inputs(settings.input))
    directory.write_json("config.json", {
        "config": as_dict(settings), "inputs": current.inputs, "python": sys.version.split()[0],
        "libraries": {name: version(name) for name in LIBRARIES}})
    segments, resumed = run_phase1(current)
    stats: dict = {}
    done = [seg["source"] for seg in segments if seg["state"] == "done"]
    for source in done:  # phase-1 counters survive a resume: they are stored per segment
        merge_stats(stats, {"stages": directory.segment_stats(source)})
    merge_stats(stats, curate_groups(current, dedup_groups(current.inputs, done, settings.line_dedup.group_size)))
    result = {**stats, "inputs": len(current.inputs), "segments_done": len(done), "segments_resumed": resumed,
              "failed_segments": [seg for seg in segments if seg["state"] != "done"], "output": directory.curated,
              "documents_out": sum(storage.published_files(directory.curated).values()),
              "seconds": round(time.time() - started, 2)}
    directory.write_json("stats.json", result)
    result["report"] = write_report(directory.root, bucket_cutoffs(current))
    return result


def run_phase1(run: Run) -> tuple[list[dict], int]:
    """Phase 1 on the inputs neither done nor skipped, then RUN/manifest.json; returns its segment
    entries and how many inputs an earlier run had done."""
    failed_runs = manifest.previous_failed_runs(run.directory)
    done = run.directory.done(run.inputs)
    skipped = manifest.skipped_inputs(run.inputs, done, failed_runs, run.settings.run.skip_after_failures)
    todo = [source for source in run.inputs if source not in done and source not in skipped]
    failures = extract_inputs(run.spark, run.directory, todo, run.settings)
    done = run.directory.done(run.inputs)
    segments = [manifest.segment_entry(source, run.directory.segment_stats(source) if source in done else None,
                                       source in skipped, failures.get(source), failed_runs.get(source, 0))
                for source in run.inputs]
    snapshot = run.settings.input.snapshot
    run.directory.write_json("manifest.json", {"snapshot": snapshot_name(snapshot) if snapshot else None,
                                               "segments": segments})
    return segments, len(run.inputs) - len(todo) - len(skipped)


def bucket_cutoffs(run: Run) -> dict:
    """{language: {"p30": …, "p60": …}} used for this run's buckets, for the report's plots."""
    if PerplexityStage not in run.stages:
        return {}
    cutoffs = dict(load_cutoffs(run.settings.perplexity.models))
    if storage.exists(run.directory.path("cutoff.csv")):
        cutoffs.update(read_cutoffs(run.directory.path("cutoff.csv")))
    return {lang: {"p30": values[HEAD_PERCENTILE], "p60": values[TAIL_PERCENTILE]} for lang, values in cutoffs.items()}
