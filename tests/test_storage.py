"""Run directories on object storage (a real S3 API server, moto's, on 127.0.0.1) and claimed run
directories: `make curate … OUTPUT=s3://…` end to end, runs killed in phase 1 and in phase 2 that
resume to the same documents, and the storage layer's publishing rules."""

import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
from moto.server import ThreadedMotoServer

from curation import storage
from tokenizer.shards import ShardReader
from trainer.data import find_shards

REPO_ROOT = Path(__file__).resolve().parent.parent
BUCKET = "ccurate-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, deadline_seconds: float = 30) -> None:
    """Until the server answers at all: a half-started one refuses, resets, answers empty or cuts its
    answer short (http.client's errors are not OSErrors)."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return  # it answered (an S3 error for an unsigned request is an answer)
        except (OSError, http.client.HTTPException) as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {deadline_seconds} s: {error}") from error
            time.sleep(0.1)


@pytest.fixture(scope="module")
def s3():
    """An S3 API server on 127.0.0.1 with one bucket; this process and its children reach it through
    the usual AWS_* environment. Yields that environment."""
    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        try:
            wait_for_http(env["AWS_ENDPOINT_URL"])
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            storage._store.cache_clear()  # a filesystem of an earlier server's endpoint must not be reused
            yield env
        finally:
            server.stop()
            storage._store.cache_clear()


def small_inputs(shared_data: Path) -> list[str]:
    return [str(shared_data / "warc/CC-MAIN-2024-22-one-page.warc.gz"),
            str(shared_data / "warc/CC-MAIN-2020-34-excerpt.warc.gz")]


def documents(run: str) -> list[tuple[str, str]]:
    """The curated documents of a run directory, as the marker publishes them, sorted."""
    table = storage.parquet_dataset(storage.join(run, "curated")).to_table(columns=["url", "raw_content"])
    return sorted(zip(table.column("url").to_pylist(), table.column("raw_content").to_pylist()))


@pytest.fixture(scope="module")
def s3_run(s3, shared_data):
    """`make curate` into s3://BUCKET/run, as a user runs it; (run URI, make's output)."""
    run = f"s3://{BUCKET}/run"
    inputs = " ".join(small_inputs(shared_data))
    made = subprocess.run(["make", "--no-print-directory", "curate", f"INPUT={inputs}", f"OUTPUT={run}"],
                          cwd=REPO_ROOT, env={**os.environ, **s3}, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    return run, made.stdout


def test_make_curate_writes_the_run_directory_to_s3(s3_run):
    run, output = s3_run
    names = [name[len(run) + 1:] for name in storage.list_files(run, recursive=True)]
    assert {"_ccurate_run.json", "config.json", "manifest.json", "stats.json", "report.html",
            "curated/_PUBLISHED.json"} <= set(names)
    assert sum(name.startswith("segments/") and name.endswith(".parquet") for name in names) == 2
    assert not any(storage.TEMPORARY.search(name) or name.startswith("checkpoints/") for name in names)
    # Readable from S3 by pyarrow and pandas as any Parquet, hive partitions included.
    stats = json.loads(storage.read_text(f"{run}/stats.json"))
    curated = storage.parquet_dataset(f"{run}/curated").to_table().to_pandas()
    assert len(curated) == stats["documents_out"] > 0 and curated["url"].is_unique
    assert set(curated["language"]) >= {"en"} and set(curated["bucket"]) == {"all"}
    manifest = json.loads(storage.read_text(f"{run}/manifest.json"))
    assert [s["state"] for s in manifest["segments"]] == ["done", "done"]
    segment = storage.list_files(f"{run}/segments", "*.parquet")[0]
    with storage.open_input(segment) as f:
        assert pq.ParquetFile(f).metadata.num_rows > 0
    assert "<img" in storage.read_text(f"{run}/report.html")
    assert f"output:   {run}/curated" in output


def start_curate(run: str, inputs: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.curate", "--output", run, "--master", "local[2]",
                             "--input", *inputs], cwd=REPO_ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def kill_when(process: subprocess.Popen, condition, what: str, deadline_seconds: float = 300) -> None:
    """SIGKILL to the process group (driver, JVM, Python workers) once `condition()` holds."""
    deadline = time.monotonic() + deadline_seconds
    while not condition():
        assert process.poll() is None, f"the run ended (exit {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} in {deadline_seconds} s"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def seconds_after(seconds: float, event):
    """A condition that holds `seconds` after `event()` first held."""
    seen: list[float] = []

    def condition() -> bool:
        if not seen and event():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > seconds
    return condition


def test_runs_killed_in_phase_1_and_in_phase_2_resume_to_the_same_documents(s3, s3_run, shared_data):
    inputs = small_inputs(shared_data)
    run = f"s3://{BUCKET}/killed"
    # Phase 1: killed once its first segment is published and before the manifest that ends phase 1.
    process = start_curate(run, inputs, s3)
    kill_when(process, lambda: storage.list_files(f"{run}/segments", "*.json"), "segment published")
    assert not storage.exists(f"{run}/manifest.json")
    # Phase 2: killed two seconds after the manifest that ends phase 1 (phase 2 takes tens of seconds).
    process = start_curate(run, inputs, s3)
    kill_when(process, seconds_after(2, lambda: storage.exists(f"{run}/manifest.json")), "phase 2")
    assert not storage.exists(f"{run}/stats.json")
    finished = subprocess.run([sys.executable, "-m", "jobs.curate", "--output", run, "--master", "local[2]",
                               "--input", *inputs], cwd=REPO_ROOT, env={**os.environ, **s3},
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert documents(run) == documents(s3_run[0])
    stats = json.loads(storage.read_text(f"{run}/stats.json"))
    assert stats["segments_resumed"] == 2 and stats["documents_out"] == len(documents(run))
    assert not storage.list_files(f"{run}/checkpoints", recursive=True)
    assert set(storage.list_files(f"{run}/curated", recursive=True)) == {
        *storage.published_files(f"{run}/curated"), f"{run}/curated/_PUBLISHED.json"}


def test_shards_on_s3_feed_the_trainer(s3, s3_run, shared_data, tmp_path):
    """jobs.shards reads the curated run from S3 and writes its shards there; the trainer trains on them."""
    spm.SentencePieceTrainer.train(input=str(shared_data / "text" / "botchan.en.txt"),
                                   model_prefix=str(tmp_path / "tok"), vocab_size=400, model_type="bpe", minloglevel=2)
    shards = f"s3://{BUCKET}/shards"
    env = {**os.environ, **s3, "OMP_NUM_THREADS": "1"}
    made = subprocess.run([sys.executable, "-m", "jobs.shards", "--input", f"{s3_run[0]}/curated", "--tokenizer",
                           str(tmp_path / "tok.model"), "--output", shards, "shard_tokens=20000",
                           "val_fraction=0.2", "--master", "local[2]"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    names = [name[len(shards) + 1:] for name in storage.list_files(shards, recursive=True)]
    assert {"train-00000.bin", "train-00000.idx", "val-00000.idx", "plan.json", "stats.json"} <= set(names)
    assert not any(name.startswith("parts/") or storage.TEMPORARY.search(name) for name in names)
    train = find_shards(shards, "train")
    stats = json.loads(storage.read_text(f"{shards}/stats.json"))
    assert sum(s.num_tokens for s in train) == stats["splits"]["train"]["num_tokens"] > 0
    reader = ShardReader(train[0].prefix)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok.model"))
    encoded = {(sp.bos_id(), *sp.encode(text), sp.eos_id()) for _, text in documents(s3_run[0])}
    assert tuple(reader.document(0).tolist()) in encoded
    trained = subprocess.run([sys.executable, "-m", "trainer.train", f"data_dir={shards}",
                              f"out_dir={tmp_path / 'train'}", "preset=tiny", "seq_len=16", "batch_size=8",
                              "max_steps=2", "eval_interval=0", "eval_batches=1"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "checkpoint:" in trained.stdout


def test_output_that_is_not_a_run_directory_is_refused_untouched(tmp_path, shared_data):
    folder = tmp_path / "thesis"
    (folder / "chapters").mkdir(parents=True)
    (folder / "thesis.tmp.docx").write_bytes(b"draft")
    (folder / "chapters" / "one.txt").write_text("once upon a time")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    refused = subprocess.run([sys.executable, "-m", "jobs.curate", "--output", str(folder),
                              "--input", *small_inputs(shared_data)], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2
    assert "is not empty and is not a run directory" in refused.stderr and str(folder) in refused.stderr
    assert sorted(folder.rglob("*")) == sorted([*before, folder / "chapters"])
    assert {p: p.read_bytes() for p in before} == before


def test_atomic_output_publishes_whole_files_only(s3, tmp_path):
    for directory in (str(tmp_path), f"s3://{BUCKET}/atomic"):
        target = storage.join(directory, "a", "data.bin")
        with pytest.raises(RuntimeError):
            with storage.atomic_output(target) as out:
                out.write(b"half")
                raise RuntimeError("killed")
        assert not storage.exists(target) and not storage.list_files(directory, recursive=True)
        storage.write_bytes(target, b"whole")
        assert storage.read_bytes(target) == b"whole"
        assert storage.list_files(directory, recursive=True) == [target]
        assert storage.read_range(target, 1, 3) == b"hol"


def test_published_files_and_leftovers(tmp_path):
    directory = str(tmp_path / "out")
    kept, stale = storage.join(directory, "k=1", "a.parquet"), storage.join(directory, "b.parquet")
    storage.write_bytes(kept, b"1")
    storage.write_bytes(stale, b"2")
    storage.publish_files(directory, {kept: 3})
    assert storage.published_files(directory) == {kept: 3}
    assert storage.list_files(directory, recursive=True) == [storage.join(directory, "_PUBLISHED.json"), kept]
    # Only the temporary names of `atomic_output` are removed as leftovers; a user's *.tmp* is not ours.
    ours, theirs = kept + ".tmp-" + "0" * 32, storage.join(directory, "notes.tmp.txt")
    storage.write_bytes(ours, b"")
    storage.write_bytes(theirs, b"")
    assert storage.remove_temporaries(directory, recursive=True) == [ours]
    assert storage.exists(theirs)


def test_claim_run_directory(tmp_path):
    storage.claim_run_directory(str(tmp_path / "new"), "curate")
    assert json.loads((tmp_path / "new" / storage.RUN_MARKER).read_text())["job"] == "curate"
    storage.claim_run_directory(str(tmp_path / "new"), "curate")  # a run directory: resumed
    (tmp_path / "empty").mkdir()
    storage.claim_run_directory(str(tmp_path / "empty"), "shards")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(storage.NotARunDirectory, match="not empty"):
        storage.claim_run_directory(str(tmp_path / "full"), "curate")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]


def test_partitioned_writes_gather_a_values_rows_into_row_groups_and_bound_what_waits(tmp_path):
    from jobs.storage_io import BUFFERED_ROWS, ROW_GROUP_ROWS, write_partitioned

    schema = pa.schema([("text", pa.string())])

    def batches(values_per_batch: list[str], count: int):
        for i in range(count):
            yield pa.RecordBatch.from_pydict({"language": values_per_batch,
                                              "text": [f"{i}-{j}" for j in range(len(values_per_batch))]})

    # A rare value, one row a batch, is written once, not a row group of one row per batch.
    common = tmp_path / "common"
    files = write_partitioned(batches(["en"] * 99 + ["xx"], 30), str(common), ["language"], schema, "part")
    en, xx = (str(common / f"language={lang}" / "part.zstd.parquet") for lang in ("en", "xx"))
    assert files == {en: 2970, xx: 30}
    assert pq.ParquetFile(xx).metadata.num_row_groups == 1
    assert pq.read_table(xx).column("text").to_pylist() == [f"{i}-99" for i in range(30)]
    en_groups = row_group_rows(en)
    assert sum(en_groups) == 2970 and all(rows >= ROW_GROUP_ROWS for rows in en_groups[:-1])
    assert pq.read_table(en).column("text").to_pylist() == [f"{i}-{j}" for i in range(30) for j in range(99)]

    # Many values, none reaching a row group: all are written once BUFFERED_ROWS rows wait.
    many = tmp_path / "many"
    values = [f"v{n:03d}" for n in range(100)]
    batch_count = BUFFERED_ROWS // 100 + 10
    files = write_partitioned(batches(values, batch_count), str(many), ["language"], schema, "part")
    assert len(files) == 100 and set(files.values()) == {batch_count}
    for file in files:
        assert row_group_rows(file) == [BUFFERED_ROWS // 100, 10]


def row_group_rows(file: str) -> list[int]:
    metadata = pq.ParquetFile(file).metadata
    return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
