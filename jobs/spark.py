"""One place that builds the SparkSession for every job and for the tests."""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyspark import SparkContext
from pyspark.sql import SparkSession

from curation import storage
from curation.redact import SPARK_REDACTION_REGEX, install_redaction
from curation.settings import setting

REPO_ROOT = Path(__file__).resolve().parent.parent
LOG4J_CONFIG = Path(__file__).resolve().parent / "log4j2.properties"
LOOPBACK = "127.0.0.1"
UI_SETTING = "CCURATE_SPARK_UI"  # environment variable: 1 turns Spark's web UI on for a local run
# Environment variable: speed devices of a local run to leave off (comma-separated names of DEVICES, or
# `all`): how the benchmarks measure what each one is worth, and how to rule one out.
DEVICES_OFF_SETTING = "CCURATE_DEVICES_OFF"
DEVICES = ("lean_jvm", "class_archive", "pandas_before_fork")
# A class-data sharing archive of a local run's JVM (`make setup` writes it: write_class_archive).
CLASS_ARCHIVE = REPO_ROOT / "build" / "spark-driver.jsa"
JVM_EXIT_SECONDS = 120  # how long end_jvm waits for the JVM to run its shutdown hooks and exit


def master_setting():
    """The `master` setting of every Spark job's settings (one meaning, written once)."""
    return setting(None, "Spark master of a local run (null: local[*]); under spark-submit, the cluster's")


def device_on(name: str) -> bool:
    """Whether the speed device `name` (one of DEVICES) is on: unless CCURATE_DEVICES_OFF names it."""
    off = {item.strip() for item in os.environ.get(DEVICES_OFF_SETTING, "").split(",")}
    return name not in off and "all" not in off


def launched_by_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands its gateway to Python."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes", "on"}


def class_archive_size_file(archive: Path) -> Path:
    return archive.with_name(archive.name + ".size")


def whole_class_archive(archive: Path) -> bool:
    """Whether `archive` is as write_class_archive left it: it records the size of an archive that the JVM
    accepted. JDK 17 crashes on a truncated archive; a stale or corrupt one of the right size the JVM
    itself leaves unused (another JDK or Spark's jars: its checks; changed bytes: VerifySharedSpaces)."""
    try:
        return archive.stat().st_size == int(class_archive_size_file(archive).read_text())
    except (OSError, ValueError):
        return False


def jvm_log_file(log_file: Path) -> Path:
    return log_file.with_suffix(".jvm.log")


def local_conf(log_file: Path, dump_class_archive: Path | None = None) -> dict[str, str]:
    """Spark settings of a local run: its log in `log_file`, and nothing reachable from another
    machine. The driver's RPC server and its block manager (local mode has no other) listen on
    127.0.0.1; the web UI is off unless CCURATE_SPARK_UI=1, and then on 127.0.0.1 without its
    kill links. With `dump_class_archive`, the JVM writes there, when it exits, the classes it loaded
    (`write_class_archive`). The speed devices: `lean_jvm_options`, `class_archive_options`."""
    java_options = [f"-Dlog4j2.configurationFile=file:{LOG4J_CONFIG}", f"-Dccurate.log.file={log_file}",
                    *lean_jvm_options(), *class_archive_options(log_file, dump_class_archive)]
    ui = env_flag(UI_SETTING)
    return {
        "spark.driver.extraJavaOptions": " ".join(java_options),
        "spark.ui.showConsoleProgress": "true",
        "spark.sql.shuffle.partitions": str(2 * (os.cpu_count() or 1)),
        "spark.driver.memory": os.environ.get("SPARK_DRIVER_MEMORY", "4g"),
        "spark.driver.host": LOOPBACK,
        "spark.driver.bindAddress": LOOPBACK,
        "spark.ui.enabled": str(ui).lower(),
        "spark.ui.killEnabled": "false",
        "spark.redaction.regex": SPARK_REDACTION_REGEX,
        # Hadoop's local file system sets the mode of the files it writes from its own umask (022
        # by default), not the process's: give it the user's.
        "spark.hadoop.fs.permissions.umask-mode": f"{process_umask():03o}",
    }


# ---- the speed devices of a local run: each measured, each switchable (CCURATE_DEVICES_OFF) --------

def lean_jvm_options() -> list[str]:
    """The JVM compiles with C1 only and collects with the serial GC: it moves Arrow batches and
    Parquet pages while Python does the work, and C2's compiler threads and G1's concurrent ones cost
    more than they save on a few cores. Measured (bench.ccnet --devices, 41,820 WET documents, local[2],
    means of alternating runs): 35.2 s with, 37.4 s without (5.9 %; line dedup on: 18.1 / 20.6 s, 12 %)."""
    return ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"] if device_on("lean_jvm") else []


def class_archive_options(log_file: Path, dump: Path | None = None) -> list[str]:
    """The JVM maps the classes of the jobs' path from `CLASS_ARCHIVE` (`make setup` dumps it from a
    small real session) instead of loading and verifying them from Spark's jars; a stale or damaged
    archive the JVM merely leaves unused (its CDS messages go to `jvm_log_file`). Measured (bench.ccnet
    --devices, 41,820 WET documents, local[2], means of alternating runs): 33.7 s with, 35.3 s without
    (4.5 %: the JVM's start-up; line dedup on: 18.1 / 22.8 s, 21 %)."""
    if dump:
        options = f"-XX:ArchiveClassesAtExit={dump}"
    elif device_on("class_archive") and whole_class_archive(CLASS_ARCHIVE):
        options = f"-XX:SharedArchiveFile={CLASS_ARCHIVE} -XX:+VerifySharedSpaces"
    else:
        return []
    # The JVM's own log file (it empties the file when it opens it): quoted for -Xlog (a ':' or ',' in the
    # path), and the quotes escaped for Spark's launcher, which strips them.
    return [options, f'-Xlog:cds*=off -Xlog:cds*=warning:file=\\"{jvm_log_file(log_file)}\\"::filecount=0']


def import_pandas_before_fork() -> None:
    """pyarrow imports pandas at its first array made from Python objects (0.6 s of CPU): a phase-1
    task imports it before it forks its child, instead of every child importing it again. Measured
    (bench.ccnet --devices, 41,820 WET documents in 60 inputs, local[2], means of alternating runs):
    33.7 s with, 35.9 s without (6.1 %; line dedup on: 18.1 / 18.9 s, 4.4 %)."""
    if device_on("pandas_before_fork"):
        import pandas  # noqa: F401


def run_log_file(output: str, job: str) -> str:
    """Where a local run's Spark log goes: OUTPUT/logs/spark.log, or a local file in the temporary
    directory when OUTPUT is a URI (log4j writes local files only)."""
    if "://" not in output:
        return os.path.join(output, "logs", "spark.log")
    return os.path.join(tempfile.gettempdir(), f"ccurate-{job}-{hashlib.sha1(output.encode()).hexdigest()[:10]}.log")


def claimed_session(app_name: str, output: str, job: str, master: str | None = None) -> SparkSession:
    """Claims the job's `output` (raises storage.NotARunDirectory for a non-empty folder that is not
    one), then starts its session, logging to `run_log_file`. The claim comes first: the log would
    make a new folder non-empty."""
    storage.claim_run_directory(output, job)
    return spark_session(app_name, master=master, log_file=run_log_file(output, job))


def spark_session(app_name: str, master: str | None = None, log_file: str | os.PathLike | None = None,
                  conf: dict[str, str] | None = None) -> SparkSession:
    """The session for a job: under spark-submit, the one it configured (the cluster's addresses, UI
    and redaction settings stand); from `python -m jobs.X`, local mode (`master`, default local[*])
    with `local_conf`. Either way, what this process logs or prints when it fails is redacted."""
    install_redaction()
    builder = SparkSession.builder.appName(app_name)
    if not launched_by_spark_submit():
        # Local Python workers must import this checkout's packages with this interpreter.
        os.environ["PYSPARK_PYTHON"] = sys.executable
        os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
        paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        # Read by the JVM that PySpark launches: its default address, and the only address other
        # than every interface that Spark's web UI binds to.
        os.environ["SPARK_LOCAL_IP"] = LOOPBACK
        log_file = Path(log_file or "spark.log").resolve()
        log_file.parent.mkdir(parents=True, exist_ok=True)
        builder = builder.master(master or "local[*]")
        conf = {**local_conf(log_file), **(conf or {})}
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def end_jvm(timeout: float = JVM_EXIT_SECONDS) -> int:
    """Closes the stdin of pyspark's JVM after its Spark stopped (it exits, running its shutdown hooks:
    the class archive's dump) and waits for it, killing it after `timeout` seconds; returns its exit
    status."""
    jvm = SparkContext._gateway.proc
    jvm.stdin.close()
    try:
        return jvm.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"warning: Spark's JVM did not exit in {timeout} s: killed", file=sys.stderr)
        jvm.kill()
        return jvm.wait()


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
        counts[name] = {"jobs": len(jobs), "stages": len(ran), "tasks": sum(ran), "widest_stage": max(ran, default=0),
                        "stage_tasks": ran}


def write_class_archive(archive: Path = CLASS_ARCHIVE) -> None:
    """Writes the class-data sharing archive that local_conf maps: a local session runs a small job of
    each kind the jobs run (Parquet, a shuffle, mapInArrow, Python UDFs) and its JVM, at exit, dumps
    the classes it loaded. The archive is checked by a JVM started as that one was, then published
    (renamed into place, its size recorded): a session never sees a half-written one."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    part = archive.with_name(archive.name + ".part")
    part.unlink(missing_ok=True)
    log_file = archive.with_suffix(".log")
    spark = spark_session("ccurate-class-archive", master="local[2]", log_file=log_file, conf={
        "spark.driver.extraJavaOptions": local_conf(log_file, dump_class_archive=part)["spark.driver.extraJavaOptions"],
        "spark.ui.showConsoleProgress": "false", "spark.sql.shuffle.partitions": "2"})
    jvm = spark.sparkContext._jvm
    runtime = jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    java = [str(Path(jvm.java.lang.System.getProperty("java.home"), "bin", "java")), "-cp", runtime.getClassPath(),
            *(arg for arg in runtime.getInputArguments() if not arg.startswith(("-XX:ArchiveClassesAtExit", "-Xlog")))]
    with tempfile.TemporaryDirectory() as work:
        docs = spark.range(0, 2000, numPartitions=2).selectExpr(
            "id", "cast(id % 7 as string) as lang", "repeat('word ', cast(id % 50 as int)) as raw_content")
        docs.write.parquet(f"{work}/docs")
        docs = spark.read.parquet(f"{work}/docs")
        docs.groupBy("lang").count().collect()
        docs.mapInArrow(lambda batches: batches, docs.schema).count()
        docs.select(spark.udf.register("words", lambda text: len(text.split()), "int")("raw_content")).collect()
        docs.rdd.map(lambda row: row.id).sum()
    spark.stop()
    status = end_jvm(timeout=900)  # the JVM dumps the archive on its way out
    if status != 0 or not part.is_file():
        raise RuntimeError(f"the driver JVM wrote no class archive (exit status {status}): see {log_file}")
    check = subprocess.run([*java, f"-XX:SharedArchiveFile={part}", "-Xshare:on", "-XX:+VerifySharedSpaces",
                            "-version"], capture_output=True, text=True, timeout=300)
    if check.returncode != 0:
        part.unlink()
        raise RuntimeError(f"the JVM refuses the class archive it wrote:\n{check.stdout}{check.stderr}")
    os.replace(part, archive)
    class_archive_size_file(archive).write_text(str(archive.stat().st_size))


if __name__ == "__main__":
    argparse.ArgumentParser(description=write_class_archive.__doc__).parse_args()
    write_class_archive()
    print(f"class archive: {CLASS_ARCHIVE} ({CLASS_ARCHIVE.stat().st_size >> 20} MiB)")
