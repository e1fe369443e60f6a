"""A local run's driver JVM maps the class-data sharing archive that `make setup` writes (jobs.spark.CLASS_ARCHIVE);
a damaged archive costs only the speed-up. Each session runs in its own process: it needs its own JVM."""

import json
import shutil
import subprocess
import sys

import jobs.spark
from jobs.spark import CLASS_ARCHIVE, REPO_ROOT, class_archive_size_file, jvm_log_file, local_conf, whole_class_archive

# Starts a session whose JVM is given the archive argv[1] and logs to argv[2]; prints its options, whether the
# archive is mapped into the JVM's memory, and the result of a job.
SESSION = """
import json, sys
from pathlib import Path
import jobs.spark
jobs.spark.CLASS_ARCHIVE = Path(sys.argv[1])
spark = jobs.spark.spark_session("class-archive-test", master="local[1]", log_file=sys.argv[2],
                                 conf={"spark.ui.showConsoleProgress": "false"})
jvm = spark.sparkContext._jvm
maps = Path(f"/proc/{jvm.java.lang.ProcessHandle.current().pid()}/maps").read_text()
print(json.dumps({"options": list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()),
                  "mapped": sys.argv[1] in maps, "rows": spark.range(5).count()}))
spark.stop()
"""


def start_session(archive, log_file) -> tuple[dict, str]:
    run = subprocess.run([sys.executable, "-c", SESSION, str(archive), str(log_file)], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1]), run.stdout + run.stderr


def test_driver_jvm_maps_the_class_archive(tmp_path):
    assert whole_class_archive(CLASS_ARCHIVE), f"no class archive at {CLASS_ARCHIVE}: run `make setup`"
    session, console = start_session(CLASS_ARCHIVE, tmp_path / "spark.log")
    assert f"-XX:SharedArchiveFile={CLASS_ARCHIVE}" in session["options"]
    assert session["mapped"] and session["rows"] == 5
    assert "Unable to use shared archive" not in jvm_log_file(tmp_path / "spark.log").read_text()
    assert "[cds" not in console


def test_corrupt_class_archive_leaves_the_session_working(tmp_path):
    # Changed bytes, size kept: the JVM checks the archive's checksums and starts without it, saying so in its
    # log only.
    corrupt = tmp_path / "spark-driver.jsa"
    shutil.copyfile(CLASS_ARCHIVE, corrupt)
    size = corrupt.stat().st_size
    with corrupt.open("r+b") as archive:
        archive.seek(size // 2)
        archive.write(b"\xff" * 4096)
    class_archive_size_file(corrupt).write_text(str(size))
    session, console = start_session(corrupt, tmp_path / "spark.log")
    assert f"-XX:SharedArchiveFile={corrupt}" in session["options"]
    assert not session["mapped"] and session["rows"] == 5
    assert "Unable to use shared archive" in jvm_log_file(tmp_path / "spark.log").read_text()
    assert "[cds" not in console


def test_truncated_class_archive_is_not_given_to_the_jvm(tmp_path, monkeypatch):
    # JDK 17 crashes on a truncated archive: one whose size is not the recorded one is left out.
    truncated = tmp_path / "spark-driver.jsa"
    with CLASS_ARCHIVE.open("rb") as archive:
        truncated.write_bytes(archive.read(100_000))
    class_archive_size_file(truncated).write_text(class_archive_size_file(CLASS_ARCHIVE).read_text())
    monkeypatch.setattr(jobs.spark, "CLASS_ARCHIVE", truncated)
    assert "SharedArchiveFile" not in local_conf(tmp_path / "spark.log")["spark.driver.extraJavaOptions"]
    class_archive_size_file(truncated).unlink()
    assert "SharedArchiveFile" not in local_conf(tmp_path / "spark.log")["spark.driver.extraJavaOptions"]
