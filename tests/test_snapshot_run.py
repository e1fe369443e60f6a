"""`make curate SNAPSHOT=… CC_BASE_URL=…` against a CommonCrawl mirror on 127.0.0.1: listing,
503 retries, streaming, a missing segment listed as failed, kill -9 and resume, clear errors."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from curation.commoncrawl import SnapshotError, list_paths, snapshot_name
from jobs.train_lm import train_language
from tests.commoncrawl_mirror import Mirror, build_mirror

from .conftest import REPO_ROOT

WARCS = ["CC-MAIN-2020-34-excerpt.warc.gz", "web-pages-00000.warc.gz", "web-pages-00001.warc.gz",
         "wget-academic-pages.warc.gz", "wget-org-pages.warc.gz"]
FAST_RETRIES = "input.backoff_seconds=0.05"


@pytest.fixture(scope="module")
def mirror_root(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("mirror")
    build_mirror(root, [shared_data / "warc" / name for name in WARCS], listed_but_missing=["gone.warc.gz"],
                 corrupt=["corrupt.warc.gz"])
    return root


def make_curate(mirror_url, output, *args, wait=True):
    command = ["make", "-s", "curate", "SNAPSHOT=2020-05", f"CC_BASE_URL={mirror_url}", "SEGMENTS=all",
               f"OUTPUT={output}", f"ARGS={FAST_RETRIES} run.max_failed_share=0.5 {' '.join(args)}"]
    if not wait:
        return subprocess.Popen(command, cwd=REPO_ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def settled_count(segments, quiet: float = 3.0) -> int:
    """Segments published by a killed run. Spark's Python daemon has a process group of its own: it
    outlives the kill until it sees the JVM gone, and one of its workers can still publish a segment
    meanwhile. Counted once nothing has changed for `quiet` seconds."""
    count, since = -1, time.time()
    while True:
        now = len(list(segments.glob("*.json")))
        if now != count:
            count, since = now, time.time()
        elif time.time() - since >= quiet:
            return count
        time.sleep(0.1)


def documents(run_dir):
    table = pq.read_table(run_dir / "curated").to_pandas()
    return sorted(zip(table.url, table.raw_content, table.language.astype(str), table.bucket.astype(str),
                      table.perplexity, table.wikiref_score, table.minhash_cluster))


@pytest.fixture(scope="module")
def models(shared_data, tmp_path_factory):
    """Small real models, so that runs go through every stage: an en/de KenLM (perplexity) and
    the wikiref classifier (Wikipedia text as positives: the shared pages hold no cited page)."""
    out = tmp_path_factory.mktemp("models")
    wiki = shared_data / "wikipedia"
    train_language("en", [str(wiki / "en" / "wikitext2-valid.tokens.txt")], out / "lm", vocab_size=4000, memory="64M")
    de_articles = sorted(glob.glob(str(wiki / "wikitext" / "*BBDO*.txt"))
                         + glob.glob(str(wiki / "wikitext" / "*Mozilla*.txt")))
    train_language("de", de_articles,
                   out / "lm", vocab_size=2000, memory="64M")
    articles = sorted(glob.glob(str(wiki / "wikitext" / "*.txt")))[:30]
    subprocess.run([sys.executable, "-m", "jobs.train_wikiref", "--wikipedia", *articles,
                    "--pages", str(shared_data / "wet/CC-MAIN-2019-30-697-docs.warc.wet.gz"),
                    "--allow-wikipedia-fallback", "--output", str(out / "wikiref")],
                   cwd=REPO_ROOT, check=True, capture_output=True)
    return [f"perplexity.models={out / 'lm'}", f"wikiref.model={out / 'wikiref' / 'wikiref.bin'}"]


@pytest.fixture(scope="module")
def reference_run(mirror_root, models, tmp_path_factory):
    """One uninterrupted run over the whole mirror, through every stage."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    with Mirror(mirror_root) as mirror:
        assert len(list_paths("2020-05", mirror.url, retries=2, backoff=0.01)) == 7
        done = make_curate(mirror.url, run_dir, *models)
        assert mirror.requests_seen["/crawl-data/CC-MAIN-2020-05/warc.paths.gz"] >= 2  # 503 first
    return run_dir, done


def test_snapshot_end_to_end_with_503s_and_failed_segments_listed(reference_run):
    run_dir, done = reference_run
    assert done.returncode == 0, done.stdout + done.stderr
    stats = json.loads((run_dir / "stats.json").read_text())
    assert list(stats["stages"]) == ["read", "extract", "line_dedup", "langid", "c4", "perplexity", "wikiref",
                                     "minhash"]
    table = pq.read_table(run_dir / "curated").to_pandas()
    english = table[table.language == "en"]
    assert set(english.bucket) == {"head", "middle", "tail"}  # cutoffs computed over this run
    assert (english.perplexity > 0).all() and (table[table.language == "zh"].bucket == "all").all()
    assert table.wikiref_score.between(0, 1).all() and table.wikiref_keep.any()
    assert (run_dir / "cutoff.csv").exists() and stats["cutoffs_from_run"] == ["de", "en"]
    assert "FAILED" in done.stdout and "gone.warc.gz" in done.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    states = {seg["source"].rsplit("/", 1)[1]: seg["state"] for seg in manifest["segments"]}
    assert states == {**{name: "done" for name in WARCS}, "gone.warc.gz": "failed", "corrupt.warc.gz": "failed"}
    errors = {seg["source"].rsplit("/", 1)[1]: seg["error"] for seg in manifest["segments"]}
    assert "404" in errors["gone.warc.gz"] and "not a WARC/WET file" in errors["corrupt.warc.gz"]
    assert stats["stages"]["read"]["out"] == 16 + 99 + 37
    docs = documents(run_dir)
    assert len(docs) == stats["documents_out"] > 100
    assert {doc[2] for doc in docs} >= {"en", "de", "zh", "ru"}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["input"]["snapshot"] == "2020-05" and len(config["inputs"]) == 7
    assert "pyspark" in config["libraries"]


def test_killed_run_resumes_to_the_same_documents(mirror_root, models, reference_run, tmp_path):
    # The same run, killed with SIGKILL while one segment is still downloading, then started again.
    with Mirror(mirror_root, slow={"wget-org-pages.warc.gz"}) as mirror:
        run = make_curate(mirror.url, tmp_path / "run", *models, wait=False)
        segments = tmp_path / "run" / "segments"
        deadline = time.time() + 300
        while not (segments.is_dir() and len(list(segments.glob("*.json"))) >= 3) and time.time() < deadline:
            time.sleep(0.2)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        assert not (tmp_path / "run" / "curated").exists(), "the run finished before it could be killed"
        killed_done = settled_count(segments)
        assert 3 <= killed_done < len(WARCS)
    with Mirror(mirror_root) as mirror:
        resumed = make_curate(mirror.url, tmp_path / "run", *models)
    assert resumed.returncode == 0, resumed.stderr
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert stats["segments_resumed"] == killed_done
    assert documents(tmp_path / "run") == documents(reference_run[0])
    assert not list(segments.glob("*.tmp-*"))


def test_bad_snapshot_unreachable_base_url_missing_model_give_clear_errors(tmp_path):
    with pytest.raises(SnapshotError, match="not a CommonCrawl snapshot"):
        snapshot_name("2020-5x")
    bad = subprocess.run([sys.executable, "-m", "jobs.curate", "--output", str(tmp_path / "x"),
                          "input.snapshot=2020-5x"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "not a CommonCrawl snapshot" in bad.stderr
    unreachable = subprocess.run([sys.executable, "-m", "jobs.curate", "--output", str(tmp_path / "y"),
                                  "input.snapshot=2020-05", "input.base_url=http://127.0.0.1:9",
                                  "input.retries=1", "input.backoff_seconds=0.01"],
                                 cwd=REPO_ROOT, capture_output=True, text=True)
    assert unreachable.returncode == 2 and "gave up after 2 tries" in unreachable.stderr
    missing_model = subprocess.run([sys.executable, "-m", "jobs.curate", "--output", str(tmp_path / "w"),
                                    "perplexity.models=/nonexistent/lm", "--input", __file__],
                                   cwd=REPO_ROOT, capture_output=True, text=True)
    assert missing_model.returncode == 2
    assert "perplexity.models=/nonexistent/lm: no model there (train one with `make lm`)" in missing_model.stderr
    unknown = subprocess.run([sys.executable, "-m", "jobs.curate", "--output", str(tmp_path / "z"),
                              "langid.treshold=0.6"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown setting" in unknown.stderr
