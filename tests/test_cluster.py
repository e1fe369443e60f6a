"""`spark-submit` of the curate and shard jobs to a Spark standalone master and two workers on
127.0.0.1, with the code from `make package` as --py-files and the models as --archives (executors
see no checkout); a curate run that loses an executor in phase 2; and every job's script form, which
is what spark-submit runs."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pyspark
import pytest

from bench.corpus import make_corpus
from curation.settings import load_settings
from jobs import curate
from tokenizer import train
from tokenizer.shards import ShardReader

from .conftest import REPO_ROOT
from .listening_sockets import is_loopback, sockets_of_tree
from .test_bad_input import page, response_member
from .test_tokenizer import COVERAGE, VOCAB, write_curated

BIN = REPO_ROOT / ".venv" / "bin"
SPARK_HOME = Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout=120, what="condition", poll=0.5):
    """Polls `condition` until it is true; any error counts as not yet (a half-started server
    refuses, answers nothing or half an answer)."""
    deadline = time.time() + timeout
    last_error = None
    while time.time() < deadline:
        try:
            if condition():
                return
        except Exception as error:  # retried until the deadline, reported then
            last_error = error
        time.sleep(poll)
    raise TimeoutError(f"timed out waiting for {what} (last error: {last_error!r})")


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster")
    # Executors must import the project from --py-files only, never from this checkout.
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "PYSPARK_PYTHON"}}
    # Master, worker, their web UIs, and the drivers and executors they start: on loopback only.
    env.update(SPARK_HOME=str(SPARK_HOME), SPARK_LOCAL_IP="127.0.0.1", SPARK_LOG_DIR=str(work))
    port, master_ui = free_port(), free_port()
    spark_class = SPARK_HOME / "bin" / "spark-class"
    master = subprocess.Popen([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(master_ui)], cwd=work, env=env,
                              stdout=open(work / "master.log", "w"), stderr=subprocess.STDOUT)
    # Two workers of one core each: a job's executors live on both, and one can be lost.
    workers = [subprocess.Popen([spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                 "--cores", "1", "--memory", "1536m", "--webui-port", str(free_port()),
                                 "--work-dir", str(work / f"worker-{i}"), f"spark://127.0.0.1:{port}"],
                                cwd=work, env=env, stdout=open(work / f"worker-{i}.log", "w"), stderr=subprocess.STDOUT)
               for i in range(2)]
    try:
        def worker_registered():
            with urllib.request.urlopen(f"http://127.0.0.1:{master_ui}/json/", timeout=5) as answer:
                return json.load(answer).get("aliveworkers", 0) >= 2
        wait_for(worker_registered, what="the workers to register with the master")
        held = sockets_of_tree(master.pid).union(*(sockets_of_tree(worker.pid) for worker in workers))
        assert len(held) >= 4 and all(is_loopback(address) for _, address, _ in held), held
        yield f"spark://127.0.0.1:{port}", env, work
    finally:
        for process in (*workers, master):
            process.terminate()
            process.wait(timeout=60)


@pytest.mark.parametrize("job", ["curate", "dedup", "cutoffs", "train_lm", "train_wikiref", "shards"])
def test_every_job_runs_as_a_script(job):
    # Run as a script, jobs/ comes first on sys.path, where jobs/shards.py would shadow the standard library's.
    result = subprocess.run([sys.executable, f"jobs/{job}.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "usage:" in result.stdout, result.stderr[-2000:]


def test_shard_job_on_the_standalone_cluster(standalone_cluster, shared_data, tmp_path):
    master, env, work = standalone_cluster
    subprocess.run(["make", "-s", "package"], cwd=REPO_ROOT, check=True, capture_output=True)
    docs = write_curated(shared_data, tmp_path / "curated")
    train.train(tmp_path / "curated", tmp_path / "tokenizer", vocab_size=VOCAB, character_coverage=COVERAGE, threads=2)
    submit = subprocess.run(
        [SPARK_HOME / "bin" / "spark-submit", "--master", master, "--executor-memory", "1g",
         "--conf", f"spark.pyspark.python={BIN / 'python'}", "--py-files", str(REPO_ROOT / "dist/ccurate.zip"),
         str(REPO_ROOT / "jobs/shards.py"), "--input", str(tmp_path / "curated"),
         "--tokenizer", str(tmp_path / "tokenizer"), "--output", str(tmp_path / "shards"), "shard_tokens=200000"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    stats = json.loads((tmp_path / "shards" / "stats.json").read_text())
    assert stats["splits"]["train"]["shards"] > 1
    readers = [ShardReader(idx.with_suffix("")) for idx in sorted((tmp_path / "shards").glob("*.idx"))]
    assert sum(len(r) for r in readers) == sum(map(len, docs.values())) == sum(
        s["num_docs"] for s in stats["splits"].values())


def submit_curate(master: str, env: dict, work: Path, output: Path, inputs: list[str], log: Path,
                  settings: list[str]) -> subprocess.Popen:
    """spark-submit of the curate job, its console to `log` (a pipe nobody reads would fill and stop it)."""
    subprocess.run(["make", "-s", "package"], cwd=REPO_ROOT, check=True, capture_output=True)
    return subprocess.Popen(
        [SPARK_HOME / "bin" / "spark-submit", "--master", master, "--executor-memory", "1g",
         "--conf", f"spark.pyspark.python={BIN / 'python'}", "--py-files", str(REPO_ROOT / "dist/ccurate.zip"),
         "--archives", f"{REPO_ROOT / 'dist/models.tar.gz'}#models", str(REPO_ROOT / "jobs/curate.py"),
         "--output", str(output), "langid.model=models/lid.176.ftz", *settings, "--input", *inputs],
        cwd=work, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def executors_of(worker_dir: Path) -> list[psutil.Process]:
    """The executor JVMs a worker started (each runs in a folder under the worker's --work-dir)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "org.apache.spark.executor.CoarseGrainedExecutorBackend" in (process.info["cmdline"] or []) and \
                    Path(process.cwd()).is_relative_to(worker_dir):
                found.append(process)
        except psutil.Error:  # gone, or not ours
            continue
    return found


def test_spark_submit_with_packaged_code_survives_an_executor_killed_during_connected_components(
        standalone_cluster, shared_data, spark, tmp_path):
    master, env, work = standalone_cluster
    # Near-duplicates, so that connected components have edges to write (line dedup off: it would
    # empty the copies first), and a real CommonCrawl excerpt (zh, ru, de, nl pages).
    near_duplicates = tmp_path / "near-duplicates.warc.gz"
    near_duplicates.write_bytes(b"".join(response_member(doc["url"], page(doc["url"], doc["raw_content"]))
                                         for doc in make_corpus(shared_data, originals=30)))
    inputs = [str(near_duplicates), str(shared_data / "warc/CC-MAIN-2020-34-excerpt.warc.gz")]
    settings = ["line_dedup.enabled=false"]
    output = tmp_path / "run"
    console = tmp_path / "console.log"
    # LSH on Spark and connected components by Spark rounds (not in one process, as a run this small would be).
    job = submit_curate(master, env, work, output, inputs, console,
                        [*settings, "minhash.local_max_documents=0", "minhash.cc_local_max_edges=0"])
    try:
        # Connected components have started once a round's edges are being written.
        wait_for(lambda: list(output.glob("checkpoints/cc-*/round-*")) or job.poll() is not None,
                 timeout=600, poll=0.1, what="connected components to start")
        victims = executors_of(work / "worker-0")
        assert job.poll() is None and victims, "the run ended before an executor could be killed"
        for executor in victims:
            executor.send_signal(signal.SIGKILL)
        job.wait(timeout=600)
    finally:
        job.kill()
    log = console.read_text()
    assert job.returncode == 0, log[-5000:]
    assert "Lost executor" in log and "Shuffle files lost for executor" in log
    assert re.search(r"curated (\d+) documents from 2/2 segments", log), log[-3000:]
    # The executors ran the packaged code: their Python workers imported it from the zip.
    assert list(work.glob("worker-*/*/*/ccurate.zip"))
    # The same run in local mode, no executor lost, components found in one process: the same documents.
    local_settings = load_settings(curate.CurateSettings, None, [f"input.paths={json.dumps(inputs)}", *settings])
    curate.run(spark, local_settings, tmp_path / "local", curate.model_stages(local_settings))
    columns = ["url", "raw_content", "language", "bucket"]
    cluster_docs = pq.read_table(output / "curated", columns=columns).to_pandas().sort_values("url")
    local_docs = pq.read_table(tmp_path / "local" / "curated", columns=columns).to_pandas().sort_values("url")
    assert len(cluster_docs) > 40 and set(cluster_docs.language) >= {"en", "zh", "ru"}
    assert cluster_docs.reset_index(drop=True).equals(local_docs.reset_index(drop=True))
    # The counts are those of the rows written, though some of phase 2's tasks ran twice.
    stats = json.loads((output / "stats.json").read_text())
    assert stats["stages"]["minhash"]["out"] == stats["documents_out"] == len(cluster_docs)
    assert stats["stages"]["minhash"]["dropped"]["near_duplicate"] > 50
    assert stats["stages"]["langid"]["in"] == stats["stages"]["extract"]["out"]
