"""One place that builds the SparkSession for every job and for the tests."""

from __future__ import annotations

import os
import sys
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
