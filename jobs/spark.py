"""One place that builds the SparkSession for every job and for the tests."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyspark.sql import SparkSession

REPO_ROOT = Path(__file__).resolve().parent.parent
LOG4J_CONFIG = Path(__file__).resolve().parent / "log4j2.properties"


def launched_by_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands its gateway to Python."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def spark_session(app_name: str, master: str | None = None, log_file: str | os.PathLike | None = None,
                  conf: dict[str, str] | None = None) -> SparkSession:
    """The session for a job: under spark-submit, the one it configured; from `python -m jobs.X`,
    local mode (`master`, default local[*]) with Spark's log in `log_file` and its progress bar on."""
    builder = SparkSession.builder.appName(app_name)
    if not launched_by_spark_submit():
        # Local Python workers must import this checkout's packages with this interpreter.
        os.environ["PYSPARK_PYTHON"] = sys.executable
        os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
        paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        log_file = Path(log_file or "spark.log").resolve()
        log_file.parent.mkdir(parents=True, exist_ok=True)
        builder = (builder.master(master or "local[*]")
                   .config("spark.driver.extraJavaOptions",
                           f"-Dlog4j2.configurationFile=file:{LOG4J_CONFIG} -Dccurate.log.file={log_file}")
                   .config("spark.ui.showConsoleProgress", "true")
                   .config("spark.sql.shuffle.partitions", str(2 * (os.cpu_count() or 1)))
                   .config("spark.driver.memory", os.environ.get("SPARK_DRIVER_MEMORY", "4g")))
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


@contextmanager
def counting_tasks(spark: SparkSession, name: str, counts: dict) -> Iterator[None]:
    """Runs the block's Spark jobs in their own job group, then records in counts[name] how many jobs,
    stages and tasks ran (skipped stages, whose shuffle output was reused, count for nothing)."""
    sc = spark.sparkContext
    group = f"{name}-{uuid.uuid4().hex[:8]}"
    sc.setJobGroup(group, name)
    try:
        yield
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)
        tracker = sc.statusTracker()
        jobs = tracker.getJobIdsForGroup(group)
        deadline = time.monotonic() + 10  # the status store hears of finished jobs through an async bus
        while time.monotonic() < deadline and any(
                (info := tracker.getJobInfo(job)) is None or info.status == "RUNNING" for job in jobs):
            time.sleep(0.05)
        stage_ids = [stage for job in jobs if (info := tracker.getJobInfo(job)) for stage in info.stageIds]
        ran = [info.numCompletedTasks for stage in stage_ids
               if (info := tracker.getStageInfo(stage)) and info.numCompletedTasks]
        counts[name] = {"jobs": len(jobs), "stages": len(ran), "tasks": sum(ran), "widest_stage": max(ran, default=0)}
