"""Phase 2 sized to the data: tasks follow the text, MinHash clusters never land on one task."""

import json
import math

import pytest

from curation.lsh import MinHashDedupStage
from curation.minhash import MinHashSettings
from curation.settings import load_settings
from jobs import curate
from jobs.curate.layout import RunDirectory
from jobs.curate.phase1 import guided_size, input_chunks
from jobs.curate.units import plan_units


def test_tiny_partition_size_runs_annotate_on_several_tasks(spark, shared_data, tmp_path):
    inputs = [str(shared_data / "wet/CC-MAIN-2019-30-697-docs.warc.wet.gz")]
    config = load_settings(curate.CurateSettings, None, [f"input.paths={json.dumps(inputs)}",
                                                         "partitions.text_bytes=200000", "minhash.enabled=false"])
    stats = curate.run(spark, config, tmp_path / "run")

    written = json.loads((tmp_path / "run" / "stats.json").read_text())
    partitions, tasks = written["partitions"], written["tasks"]
    # ~1.5 MB of text in one file of one row group: tasks of 200 kB at most, smaller towards the end.
    text = partitions["input_text_bytes"]
    assert text > 5 * 200_000
    assert partitions["annotate"] > math.ceil(text / 200_000) >= 5
    assert tasks["annotate"]["stage_tasks"] == [partitions["annotate"]]
    # MinHash off: each task writes its documents' curated files itself, named after its first piece.
    names = {path.name for path in (tmp_path / "run" / "curated").rglob("*.parquet")}
    assert len(names) == partitions["annotate"] and "write" not in tasks
    assert tasks["line_dedup"]["tasks"] >= 1
    assert written["stages"]["langid"]["in"] == written["stages"]["line_dedup"]["out"]
    assert written["stages"]["langid"]["out"] == stats["documents_out"]
    assert spark.conf.get("spark.sql.shuffle.partitions") == "4"  # the shared session's settings restored


def test_inputs_with_no_document_left_make_an_empty_result(spark, shared_data, tmp_path):
    inputs = [str(shared_data / "wet/CC-MAIN-2019-30-697-docs.warc.wet.gz")]
    config = load_settings(curate.CurateSettings, None, [f"input.paths={json.dumps(inputs)}",
                                                         "extract.min_length=1000000000", "minhash.enabled=false"])
    stats = curate.run(spark, config, tmp_path / "run")
    assert stats["documents_out"] == 0 and stats["partitions"]["annotate"] == 0
    assert stats["stages"]["extract"]["dropped"]["too_short"] == 697


def test_units_cover_every_row_once_in_order_within_groups():
    run = RunDirectory("/run")
    groups = {0: ["a", "b"], 3: ["c"]}
    files = {source: run.segment_file(source) for source in "abc"}
    sizes = {files["a"]: [(1000, 1_000_000), (500, 250_000)], files["b"]: [(0, 0), (10, 10)],
             files["c"]: [(3, 900_000)]}
    units = plan_units(run, groups, sizes, lambda remaining: 400_000)
    # Group 0: 1,250,010 bytes in units of 400 kB (rows of 1 kB, then 0.5 kB); group 3 in whole rows,
    # a unit closed by the row that takes it past 400 kB.
    assert [group for group, _ in units] == [0, 0, 0, 0, 3, 3]
    for group, sources in groups.items():
        rows = [(path, row_group, row) for unit_group, pieces in units if unit_group == group
                for path, row_group, first, stop in pieces for row in range(first, stop)]
        assert rows == [(files[s], row_group, row) for s in sources
                        for row_group, (n, _) in enumerate(sizes[files[s]]) for row in range(n)]
    assert units[0] == (0, [(files["a"], 0, 0, 400)])
    assert units[2] == (0, [(files["a"], 0, 800, 1000), (files["a"], 1, 0, 400)])
    assert units[3] == (0, [(files["a"], 1, 400, 500), (files["b"], 1, 0, 10)])
    assert units[4:] == [(3, [(files["c"], 0, 0, 2)]), (3, [(files["c"], 0, 2, 3)])]


def test_tasks_shrink_towards_the_end_of_a_stage_and_cover_its_work():
    # Phase 1: 60 inputs on 2 cores, a quarter of what is left per task, down to 60/32 inputs.
    inputs = [f"input-{i}" for i in range(60)]
    chunks = input_chunks(inputs, cores=2)
    assert [len(chunk) for chunk in chunks] == [15, 12, 9, 6, 5, 4, 3, 2, 2, 2]
    assert [source for chunk in chunks for source in chunk] == inputs
    assert input_chunks(inputs[:3], cores=2) == [[source] for source in inputs[:3]]
    # Phase 2: 64 MB of text in rows of 1 kB, at most 10 MB a unit, at least 1 MB.
    run = RunDirectory("/run")
    sizes = {run.segment_file("a"): [(64_000, 64_000_000)]}
    units = plan_units(run, {0: ["a"]}, sizes, lambda remaining: guided_size(remaining, 2, 10_000_000, 1_000_000))
    rows = [stop - first for _, pieces in units for _, _, first, stop in pieces]
    assert sum(rows) == 64_000 and rows == sorted(rows, reverse=True)
    assert rows[:4] == [10_000, 10_000, 10_000, 8_500]  # 10 MB at most, then a quarter of the 34 MB left
    assert rows[-4:] == [1_000, 1_000, 1_000, 402]  # 1 MB at least, and what is left


def test_cluster_of_identical_pages_kept_once(spark, shared_data, tmp_path):
    from jobs.minhash import minhash_dedup

    book = (shared_data / "text" / "botchan.en.txt").read_text(encoding="utf-8")
    page, others = book[:3000], [book[3000 * k:3000 * (k + 1)] for k in range(1, 6)]
    docs = [{"url": f"https://copy.example/{i:04d}", "raw_content": page, "perplexity": 100.0} for i in range(300)]
    docs[123]["perplexity"] = 50.0  # the lowest perplexity wins over the smallest url
    docs += [{"url": f"https://other.example/{i}", "raw_content": text, "perplexity": 10.0}
             for i, text in enumerate(others)]
    settings = MinHashSettings(local_max_documents=0)  # Spark's jobs: no cluster lands on one task
    kept, stats = minhash_dedup(spark.createDataFrame(docs).repartition(4), settings,
                                checkpoint_dir=str(tmp_path / "checkpoints"))
    rows = sorted((r["url"], r["minhash_cluster_size"]) for r in kept.collect())
    assert rows == [("https://copy.example/0123", 300), *((f"https://other.example/{i}", 1) for i in range(5))]
    assert stats["cluster_sizes"] == {"1": 5, "300": 1} and stats["dropped"]["near_duplicate"] == 299
    local = list(MinHashDedupStage(settings)(docs))
    assert sorted((d["url"], d["minhash_cluster_size"]) for d in local) == rows
    assert list((tmp_path / "checkpoints").glob("cc-*/round-*")) != []  # the last round, read by `kept`


def test_connected_components_fail_clearly_at_the_bound(spark, tmp_path):
    from jobs.minhash import connected_components

    chain = spark.createDataFrame([(i, i + 1) for i in range(64)], "src long, dst long")
    with pytest.raises(RuntimeError, match="did not converge in 1 rounds"):
        connected_components(chain, max_iterations=1, checkpoint_dir=str(tmp_path))
