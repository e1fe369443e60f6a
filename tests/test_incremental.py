"""Incremental phase 2: a rerun that adds a segment makes only that segment's dedup group; MinHash
clusters every group's stored signatures (without MinHash, the groups' tasks write the curated files
themselves); the result equals a run from scratch."""

import dataclasses
import json

import pyarrow.parquet as pq

from curation.settings import load_settings
from curation.stages import ROW_STAGES
from jobs import curate

# Two segments per dedup group: the first two inputs make group 0, the third group 1.
FILES = ["warc/wget-academic-pages.warc.gz", "warc/wget-org-pages.warc.gz", "warc/CC-MAIN-2020-34-excerpt.warc.gz"]


def settings_for(shared_data, files, *overrides):
    inputs = [str(shared_data / name) for name in files]
    return load_settings(curate.CurateSettings, None, [f"input.paths={json.dumps(inputs)}", "line_dedup.group_size=2",
                                                       *overrides])


def curated_rows(run_dir) -> list[dict]:
    table = pq.read_table(run_dir / "curated").to_pylist()
    return sorted(table, key=lambda row: row["url"])


def without_seconds(value):
    if isinstance(value, dict):
        return {key: without_seconds(v) for key, v in value.items() if not key.endswith("seconds")}
    return value


def test_a_rerun_that_adds_a_segment_makes_only_its_group_and_equals_a_run_from_scratch(spark, shared_data, tmp_path):
    run_dir = tmp_path / "incremental"
    first = curate.run(spark, settings_for(shared_data, FILES[:2]), run_dir)
    assert first["processed"]["groups_made"] == [0]

    added = curate.run(spark, settings_for(shared_data, FILES), run_dir)
    group_1 = json.loads((run_dir / "groups" / "group=1" / "_PUBLISHED.json").read_text())["about"]
    assert group_1["segments"] == [curate.segment_id(str(shared_data / FILES[2]))]
    assert added["processed"]["groups_made"] == [1] and added["processed"]["groups_reused"] == 1
    # Line dedup, language ID and C4 saw only the new segment's documents; MinHash saw all of them.
    documents = added["processed"]["documents"]
    assert documents["line_dedup"] == group_1["stages"]["line_dedup"]["in"] \
        == added["stages"]["extract"]["out"] - first["stages"]["extract"]["out"] > 0
    assert documents["langid"] == group_1["stages"]["langid"]["in"] < added["stages"]["langid"]["in"]
    assert documents["minhash"] == added["stages"]["minhash"]["in"] == added["stages"]["c4"]["out"]

    scratch = curate.run(spark, settings_for(shared_data, FILES), tmp_path / "scratch")
    assert scratch["processed"]["groups_made"] == [0, 1]
    assert curated_rows(run_dir) == curated_rows(tmp_path / "scratch")
    assert without_seconds(added["stages"]) == without_seconds(scratch["stages"])
    assert added["documents_out"] == scratch["documents_out"] > 0

    # Nothing new: no group is made again; a changed setting of a stage makes every group again.
    again = curate.run(spark, settings_for(shared_data, FILES), run_dir)
    assert again["processed"]["groups_made"] == [] and again["processed"]["documents"] == {
        "minhash": added["stages"]["minhash"]["in"]}
    assert curated_rows(run_dir) == curated_rows(tmp_path / "scratch")
    changed = load_settings(curate.CurateSettings, None, [
        f"input.paths={json.dumps([str(shared_data / name) for name in FILES])}", "line_dedup.group_size=2",
        "langid.threshold=0.9"])
    before = {group: set(json.loads((run_dir / "groups" / f"group={group}" / "_PUBLISHED.json").read_text())["files"])
              for group in (0, 1)}
    stricter = curate.run(spark, changed, run_dir)
    assert stricter["processed"]["groups_made"] == [0, 1]
    for group, names in before.items():  # remade under new names: an old marker never lists new content
        marker = json.loads((run_dir / "groups" / f"group={group}" / "_PUBLISHED.json").read_text())
        assert names and not names & set(marker["files"])
    assert stricter["stages"]["langid"]["out"] < added["stages"]["langid"]["out"]


def test_without_minhash_the_groups_write_the_curated_files_and_reruns_reuse_them(spark, shared_data, tmp_path):
    run_dir, scratch_dir = tmp_path / "incremental", tmp_path / "scratch"
    marker = run_dir / "curated" / "_PUBLISHED.json"
    first = curate.run(spark, settings_for(shared_data, FILES[:2], "minhash.enabled=false"), run_dir)
    group_0 = json.loads((run_dir / "groups" / "group=0" / "_PUBLISHED.json").read_text())
    # Nothing is computed across groups: the group's marker lists its files in curated/, none in groups/.
    assert group_0["files"] == {} and not list((run_dir / "groups").rglob("*.parquet"))
    assert json.loads(marker.read_text())["files"] == group_0["about"]["curated_files"]
    assert "write" not in first["tasks"] and first["documents_out"] > 0
    first_marker = marker.read_text()

    added = curate.run(spark, settings_for(shared_data, FILES, "minhash.enabled=false"), run_dir)
    scratch = curate.run(spark, settings_for(shared_data, FILES, "minhash.enabled=false"), scratch_dir)
    assert added["processed"]["groups_made"] == [1] and added["processed"]["groups_reused"] == 1
    assert curated_rows(run_dir) == curated_rows(scratch_dir)
    assert added["documents_out"] == scratch["documents_out"] > first["documents_out"]

    # Killed after publishing group 1, before curated/'s marker: the next run keeps group 1's files and
    # publishes them, making no group.
    marker.write_text(first_marker)
    resumed = curate.run(spark, settings_for(shared_data, FILES, "minhash.enabled=false"), run_dir)
    assert resumed["processed"]["groups_made"] == []
    assert curated_rows(run_dir) == curated_rows(scratch_dir) and resumed["documents_out"] == scratch["documents_out"]

    # MinHash on: every group is made again into groups/, and the curated files made by the groups go.
    direct_files = set(json.loads(marker.read_text())["files"])
    with_minhash = curate.run(spark, settings_for(shared_data, FILES), run_dir)
    assert with_minhash["processed"]["groups_made"] == [0, 1]
    on_disk = {str(path.relative_to(run_dir / "curated")) for path in (run_dir / "curated").rglob("*.parquet")}
    assert on_disk == set(json.loads(marker.read_text())["files"]) and not on_disk & direct_files


def changed_setting(stage) -> str:
    """KEY=VALUE that changes the first boolean or numeric setting of a registered stage's section."""
    section = stage.settings_class()
    for field in dataclasses.fields(section):
        value, low, high = getattr(section, field.name), field.metadata["minimum"], field.metadata["maximum"]
        if isinstance(value, bool):
            return f"{stage.name}.{field.name}={str(not value).lower()}"
        if isinstance(value, int | float):
            new = value + 1 if high is None or value + 1 <= high else value - 1
            new = (value + high) / 2 if isinstance(value, float) and high is not None and value < high else new
            assert low is None or new >= low
            return f"{stage.name}.{field.name}={new}"
    raise AssertionError(f"{stage.name}: no boolean or numeric setting to change")


def test_a_changed_setting_of_each_registered_stage_remakes_the_groups(spark, shared_data, tmp_path):
    run_dir = tmp_path / "run"
    files = ["wet/CC-MAIN-2024-22-one-page.warc.wet.gz"]  # one page: what is tested is the groups' making
    assert curate.run(spark, settings_for(shared_data, files), run_dir)["processed"]["groups_made"] == [0]
    assert curate.run(spark, settings_for(shared_data, files), run_dir)["processed"]["groups_made"] == []
    changes = []
    for stage in ROW_STAGES:  # one more stage's setting changed each run: only it can make the run remake
        changes.append(changed_setting(stage))
        stats = curate.run(spark, settings_for(shared_data, files, *changes), run_dir)
        assert stats["processed"]["groups_made"] == [0], changes[-1]
