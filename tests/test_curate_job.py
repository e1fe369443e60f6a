"""The curate job through Spark local mode, end to end, output read back as Parquet."""

import json
import re
import subprocess

import pyarrow.parquet as pq

from curation.settings import load_settings
from jobs import curate

# These runs cover the stages without models (CCURATE_MODELS is empty: tests/conftest.py); the snapshot
# tests run with trained models.


def test_curate_job_writes_parquet_by_language_and_stats(spark, shared_data, tmp_path):
    inputs = [str(shared_data / "warc/CC-MAIN-2020-34-excerpt.warc.gz"),
              str(shared_data / "wet/CC-MAIN-2019-30-697-docs.warc.wet.gz")]
    config = load_settings(curate.CurateSettings, None, [f"input.paths={json.dumps(inputs)}"])
    stats = curate.run(spark, config, tmp_path / "run")

    table = pq.read_table(tmp_path / "run" / "curated").to_pandas()
    assert (tmp_path / "run" / "curated" / "language=en" / "bucket=all").is_dir()  # no KenLM model here
    assert len(table) == stats["documents_out"]
    assert set(curate.ANNOTATED.names) - {"language", "bucket"} <= set(table.columns)
    assert table["url"].is_unique
    assert (table["length"] == table["raw_content"].str.len()).all()
    # cc_net's floor is on the text as read; after line dedup only documents left with no line go.
    assert (table["length"] <= table["original_length"]).all() and (table["original_length"] >= 300).all()
    assert (table["nlines"] <= table["original_nlines"]).all() and (table["length"] < 300).any()
    assert table[table.url == "http://01spb.ru/company/"].language.tolist() == ["ru"]
    assert 180 <= (table.language == "en").sum() <= 211
    assert (table.minhash_cluster_size >= 1).all()

    written = json.loads((tmp_path / "run" / "stats.json").read_text())
    assert "***" not in (tmp_path / "run" / "stats.json").read_text()  # timings stay numbers (signature_seconds)
    assert written["stages"]["minhash"]["signature_seconds"] >= 0
    stages = written["stages"]
    assert list(stages) == ["read", "extract", "line_dedup", "langid", "c4", "minhash"]
    assert stages["read"]["out"] == 16 + 697
    assert stages["extract"]["dropped"]["too_short"] == 5 + 153
    assert stages["line_dedup"]["in"] == stages["extract"]["out"] == 11 + 544
    assert stages["line_dedup"]["lines_removed"] > 0
    assert stages["langid"]["in"] == stages["line_dedup"]["out"]
    assert stages["minhash"]["in"] == stages["langid"]["out"]
    assert stages["minhash"]["out"] == len(table)
    assert written["segments_done"] == 2 and written["failed_segments"] == []
    assert next((tmp_path / "run" / "curated" / "language=en" / "bucket=all").glob("*.zstd.parquet"), None)

    # Run again: both segments are skipped, and the result is the same.
    again = curate.run(spark, config, tmp_path / "run")
    assert again["segments_resumed"] == 2 and again["documents_out"] == stats["documents_out"]


def test_report_opens_in_headless_chromium_with_its_plots(spark, shared_data, tmp_path):
    config = load_settings(curate.CurateSettings, None,
                           [f"input.paths={json.dumps([str(shared_data / 'warc/web-pages-00000.warc.gz')])}"])
    stats = curate.run(spark, config, tmp_path / "run")
    report = tmp_path / "run" / "report.html"
    assert stats["report"] == str(report)
    chromium = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000"]
    dom = subprocess.run([*chromium, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    images = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    assert images, dom.stderr[-2000:]
    assert images[1] == images[2] and int(images[2]) >= 3  # funnel, languages, throughput at least
    shot = tmp_path / "report.png"
    subprocess.run([*chromium, "--window-size=1000,1600", f"--screenshot={shot}", report.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # a rendered page with plots, not a blank one
