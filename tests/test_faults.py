"""Faults a long run meets (issue 13): a segment whose process dies fails alone, with its cause, and
is reported (and can be skipped) when it keeps failing; phase 2's counts equal the rows written.
The process dies as the OOM killer would kill it: from outside, by the test's HTTP server, when it
asks for the dying input (the job's code knows nothing of the test)."""

import json
import os

import pyarrow.parquet as pq
import pytest

from curation.settings import RunSettings, load_settings
from jobs import curate
from jobs.curate import phase1
from jobs.curate.cli import exit_code
from jobs.curate.layout import RunDirectory

from .commoncrawl_mirror import Mirror

INPUTS = ("warc/CC-MAIN-2020-34-excerpt.warc.gz", "warc/wget-org-pages.warc.gz",
          "wet/CC-MAIN-2024-22-one-page.warc.wet.gz")
DYING = "wget-org-pages"


@pytest.fixture(scope="module")
def mirror(shared_data):
    """The shared data over HTTP; whoever asks for the DYING file is killed with SIGKILL."""
    with Mirror(shared_data, killing={f"{DYING}.warc.gz"}) as server:
        yield server


def location(shared_data, mirror, name: str) -> str:
    return f"{mirror.url}/{name}" if DYING in name else str(shared_data / name)


def settings_for(shared_data, mirror, names=INPUTS, *overrides):
    paths = [location(shared_data, mirror, name) for name in names]
    return load_settings(curate.CurateSettings, None, [f"input.paths={json.dumps(paths)}",
                                                       "input.backoff_seconds=0.01", *overrides])


def test_one_child_extracts_a_tasks_inputs_in_turn_and_a_new_one_takes_those_after_a_death(shared_data, mirror,
                                                                                             tmp_path, monkeypatch):
    names = ["wet/CC-MAIN-2024-22-one-page.warc.wet.gz", "warc/CC-MAIN-2020-34-excerpt.warc.gz",
             "warc/wget-org-pages.warc.gz", "warc/wget-academic-pages.warc.gz"]
    sources = [location(shared_data, mirror, name) for name in names]
    extract_segment = phase1.extract_segment

    def extract_recording_the_process(source, run, settings):
        (tmp_path / f"pid-{names[sources.index(source)].split('/')[-1]}").write_text(str(os.getpid()))
        return extract_segment(source, run, settings)

    monkeypatch.setattr(phase1, "extract_segment", extract_recording_the_process)  # the forked children see it
    run = RunDirectory(str(tmp_path / "run"))
    results = list(phase1.extract_in_children(sources, run, settings_for(shared_data, mirror, names)))

    assert [source for source, _ in results] == sources
    errors = [error for _, error in results]
    assert errors[0] is None and errors[1] is None and errors[3] is None
    assert "killed by SIGKILL" in errors[2]
    assert [run.is_done(source) for source in sources] == [True, True, False, True]
    pids = {path.name.removeprefix("pid-"): int(path.read_text()) for path in tmp_path.glob("pid-*")}
    assert len(pids) == 4 and os.getpid() not in pids.values()
    assert pids["CC-MAIN-2024-22-one-page.warc.wet.gz"] == pids["CC-MAIN-2020-34-excerpt.warc.gz"] \
        == pids["wget-org-pages.warc.gz"]  # one child took the inputs in turn, until it was killed
    assert pids["wget-academic-pages.warc.gz"] != pids["wget-org-pages.warc.gz"]


def test_a_segment_whose_process_is_killed_fails_alone_and_is_skipped_once_it_keeps_failing(spark, shared_data,
                                                                                            mirror, tmp_path):
    run_dir = tmp_path / "run"
    stats = curate.run(spark, settings_for(shared_data, mirror, INPUTS, "run.skip_after_failures=1"), run_dir)
    segments = {seg["source"].split("/")[-1]: seg for seg in json.loads((run_dir / "manifest.json").read_text())
                ["segments"]}
    dying = segments["wget-org-pages.warc.gz"]
    assert dying["state"] == "failed" and "killed by SIGKILL" in dying["error"] and dying["failed_runs"] == 1
    assert [seg["state"] for name, seg in segments.items() if DYING not in name] == ["done", "done"]
    # Nothing of it published: its process died while it wrote, and the next run removes what it left.
    assert not [path for path in (run_dir / "segments").glob(f"{DYING}*") if ".tmp-" not in path.name]
    curated = pq.read_table(run_dir / "curated")
    assert curated.num_rows == stats["documents_out"] > 0
    assert not any(DYING in url for url in curated.column("url").to_pylist())
    assert exit_code(stats, RunSettings()) == 1
    assert exit_code(stats, RunSettings(max_failed_share=0.5)) == 0
    # Counts from the rows the stages wrote: each stage's output is the next one's input, and the
    # last one's is what the curated Parquet holds.
    stages = stats["stages"]
    assert stages["line_dedup"]["out"] == stages["langid"]["in"]
    assert stages["langid"]["out"] == stages["c4"]["in"]
    assert stages["c4"]["out"] == stages["minhash"]["in"]
    assert stages["minhash"]["out"] == curated.num_rows

    # The next run does not retry it: it failed in 1 run in a row.
    stats = curate.run(spark, settings_for(shared_data, mirror, INPUTS, "run.skip_after_failures=1"), run_dir)
    dying = {seg["source"].split("/")[-1]: seg for seg in json.loads((run_dir / "manifest.json").read_text())
             ["segments"]}["wget-org-pages.warc.gz"]
    assert dying["state"] == "skipped" and "failed in 1 runs in a row" in dying["error"]
    assert stats["segments_resumed"] == 2 and stats["failed_segments"] == [dying]
    assert not list((run_dir / "segments").glob(f"{DYING}*"))
