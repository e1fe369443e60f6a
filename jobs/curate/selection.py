"""After phase 2, what is computed across groups and the publishing of the result: groups that an
earlier run stored from the same segments and fingerprint are reused, the others made (`phase2`);
then, over every group's stored documents, the buckets of languages whose cutoffs are not with their
models (this run's own percentiles) and MinHash near-duplicate removal (over the stored signatures,
no text read), written to RUN/curated/ and published by its marker. When nothing is computed across
groups (MinHash off, the cutoffs with the models), the groups' own curated files are the result.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pyarrow as pa
from pyspark.sql import functions as F
from pyspark.sql import types as T

from curation import storage
from curation.perplexity import PerplexityStage, available_languages, bucket, load_cutoffs, write_cutoffs
from curation.pipeline import merge_stats
from jobs.curate.layout import ANNOTATED_WITH_ID, PARTITIONS
from jobs.curate.phase2 import fingerprint, make_groups
from jobs.curate.units import RowGroupSizes, row_group_sizes, text_bytes
from jobs.minhash import ID as DOC_ID
from jobs.minhash import SIGNATURES, minhash_dedup
from jobs.spark import counting_tasks
from jobs.storage_io import read_parquet, write_parquet

if TYPE_CHECKING:
    from jobs.curate.run import Run

# The columns MinHash's choice of the kept document reads (jobs.minhash.keep_order).
MINHASH_KEYS = pa.schema([ANNOTATED_WITH_ID.field(name) for name in (DOC_ID, "url", "perplexity")])

# Shuffles start with one partition per `partitions.text_bytes` of input (at least one per core) and
# AQE coalesces them towards that size without going below the cores (its parallelism-first default).
SHUFFLE_CONF = ("spark.sql.shuffle.partitions", "spark.sql.adaptive.enabled",
                "spark.sql.adaptive.coalescePartitions.enabled", "spark.sql.adaptive.advisoryPartitionSizeInBytes")


def curate_groups(run: Run, groups: dict[int, list[str]]) -> dict:
    """Phase 2 over `groups` ({dedup group: its done segments}) and the selection into RUN/curated,
    with the session's shuffle settings sized to the text; returns the stats."""
    sizes = row_group_sizes([run.directory.segment_file(source) for sources in groups.values() for source in sources])
    spark, partition_bytes = run.spark, run.settings.partitions.text_bytes
    shuffle_partitions = max(spark.sparkContext.defaultParallelism,
                             math.ceil(text_bytes(run.directory, groups, sizes) / partition_bytes))
    previous = {key: spark.conf.get(key, None) for key in SHUFFLE_CONF}
    for key, value in zip(SHUFFLE_CONF, (shuffle_partitions, "true", "true", partition_bytes)):
        spark.conf.set(key, str(value))
    try:
        return select(run, groups, sizes)
    finally:  # the session may be shared (tests, notebooks): leave its settings as they were
        for key, value in previous.items():
            spark.conf.unset(key) if value is None else spark.conf.set(key, value)


def select(run: Run, groups: dict[int, list[str]], sizes: RowGroupSizes) -> dict:
    stats: dict = {"stages": {}, "tasks": {}}
    cutoffs_from_run = PerplexityStage in run.stages and bool(languages_without_cutoffs(run.settings))
    direct = not run.settings.minhash.enabled and not cutoffs_from_run  # nothing computed across groups
    markers = stored_and_made_groups(run, groups, sizes, fingerprint(run.settings, run.stages, direct), direct, stats)
    curated = run.directory.curated
    if direct:  # the groups' curated files, made now or before, are the result
        storage.publish_files(curated, {file: rows for group in sorted(markers)
                                        for file, rows in run.directory.curated_files(markers[group]).items()})
        return stats
    stored = [storage.join(run.directory.group(group), name) for group in sorted(markers)
              for name in markers[group]["files"]]
    frame = read_parquet(run.spark, run.directory.groups, stored, ANNOTATED_WITH_ID)
    if cutoffs_from_run:
        with counting_tasks(run.spark, "bucket_from_run", stats["tasks"]):
            frame, stats["cutoffs_from_run"] = bucket_from_run(frame, run.directory.path("cutoff.csv"))
    if run.settings.minhash.enabled:
        documents = sum(markers[group]["rows"] for group in markers)
        frame = remove_near_duplicates(run, frame, stored, documents, stats)
    with counting_tasks(run.spark, "write", stats["tasks"]):
        written = write_parquet(frame.drop(DOC_ID), curated, PARTITIONS)
    storage.delete(run.directory.checkpoints)
    # The new files replace the previous result when their marker is written: readers that follow
    # the marker see the old or the new output, never a mix.
    storage.publish_files(curated, written)
    return stats


def languages_without_cutoffs(settings) -> set[str]:
    models = settings.perplexity.models
    return set(available_languages(models)) - set(load_cutoffs(models))


def stored_and_made_groups(run: Run, groups: dict[int, list[str]], sizes: RowGroupSizes, made_by: str,
                           direct: bool, stats: dict) -> dict[int, dict]:
    """{group: marker} of every group, reused when stored from the same segments and fingerprint
    `made_by`, else made now; stats get every group's counts and `processed` (what this run made).
    The folders of groups no longer in the run are removed."""
    markers = {group: run.directory.stored_group(group, sources, made_by) for group, sources in groups.items()}
    todo = sorted(group for group, marker in markers.items() if marker is None)
    processed: dict = {}
    if todo:
        made = make_groups(run, {group: groups[group] for group in todo}, sizes, made_by, direct, stats)
        for group, marker in made.items():
            markers[group] = marker
            merge_stats(processed, marker["about"]["stages"])
    for group in sorted(markers):  # the counts of every document in the output, made now or before
        merge_stats(stats, {"stages": markers[group]["about"]["stages"]})
    stats["processed"] = {"groups": len(groups), "groups_made": todo, "groups_reused": len(groups) - len(todo),
                          "documents": {name: stage["in"] for name, stage in processed.items() if "in" in stage}}
    current = {run.directory.group(group) for group in groups}
    for folder in set(storage.list_directories(run.directory.groups)) - current:
        storage.delete(folder)  # a group of earlier settings or inputs
    return markers


def remove_near_duplicates(run: Run, frame, stored: list[str], documents: int, stats: dict):
    """MinHash over every group's stored signatures (no text read for the clustering) of `documents`
    documents; the signatures' seconds, spent in the groups' tasks, count as MinHash's."""
    signatures = read_parquet(run.spark, run.directory.groups, stored, SIGNATURES)
    keys = read_parquet(run.spark, run.directory.groups, stored, MINHASH_KEYS)  # what decides, without the text
    with counting_tasks(run.spark, "minhash", stats["tasks"]):
        frame, scored = minhash_dedup(frame, run.settings.minhash, checkpoint_dir=run.directory.checkpoints,
                                      signatures=signatures, documents=documents, keys=keys)
    stats["processed"]["documents"]["minhash"] = scored["in"]
    signature_seconds = stats["stages"].get("minhash", {}).get("signature_seconds", 0.0)
    stats["stages"]["minhash"] = {**scored, "seconds": scored["seconds"] + signature_seconds,
                                  "signature_seconds": signature_seconds}
    return frame


def bucket_from_run(frame, cutoffs_file: str):
    """Buckets for languages that have a KenLM model but no cutoffs beside it: CCNet's percentiles
    computed over this run's documents (written to `cutoffs_file`, CCNet's format), as `make
    cutoffs` does for the models. Returns the re-bucketed frame and the languages concerned."""
    missing = frame.where((F.col("bucket") == "all") & (F.col("perplexity") >= 0))
    percentiles = [i / 100 for i in range(100)]
    rows = (missing.groupBy("language")
            .agg(F.percentile_approx("perplexity", percentiles, 10_000).alias("cutoffs")).collect())
    if not rows:
        return frame, []
    cutoffs = {row["language"]: [float(v) for v in row["cutoffs"]] for row in rows}
    write_cutoffs(cutoffs_file, cutoffs)

    @F.udf(T.StringType())
    def run_bucket(language, perplexity, current):  # the rule's one place: perplexity.bucket
        return bucket(perplexity, cutoffs[language]) if current == "all" and language in cutoffs else current

    return frame.withColumn("bucket", run_bucket("language", "perplexity", "bucket")), sorted(cutoffs)
