"""The source engine on Spark (`jobs.sources`), through the Stack Exchange job, on the real Posts.xml of
beer and coffee (../shared/data/stackexchange), as files and packed in archives, beside hostile inputs
the tests build: archives whose members are named `../../x` or by an absolute path, a billion-laughs
and an external-entity Posts.xml, a row over the size cap, a cut 7z. One run per fixture, reruns after."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation import storage
from curation.settings import load_settings
from curation.sources.stackexchange import SOURCE
from jobs.sources.engine import job_settings, run
from tests.conftest import REPO_ROOT
from tests.test_stackexchange import BILLION_LAUGHS, HTML_TAG, SITES, hostile_posts, posts_xml, seven_zip

BEER_QUESTIONS, COFFEE_QUESTIONS = 663, 225  # PostTypeId 1 rows of each file (test_stackexchange checks them)
OWN_TITLE = (b'Title="How should I store whole bean coffee?"', b'Title="How should I keep whole bean coffee?"')
KEPT = BEER_QUESTIONS + COFFEE_QUESTIONS + 1  # each site once, and the question retitled


def settings_for(inputs: list[str], output: Path, *overrides: str):
    return load_settings(job_settings(SOURCE), None, [f"input={json.dumps(inputs)}", f"output={output}", *overrides])


def tar_gz(members: dict[str, bytes], links: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def snapshot(root: Path, but: Path) -> set[Path]:
    return {path for path in root.rglob("*") if but not in path.parents and path != but}


def hostile_inputs(shared_data: Path, folder: Path, outside: Path) -> list[str]:
    """The real sites and the hostile inputs, in the order the run reads them."""
    beer, coffee = (posts_xml(shared_data, site).read_bytes() for site in SITES)
    absolute = str(outside / "abs")
    files = {
        "coffee.stackexchange.com.7z": seven_zip(
            {"Posts.xml": coffee, "zz/zz/Posts.xml": beer, "A" * len(absolute): b"abs"},
            {"zz/zz/Posts.xml": "../../Posts.xml", "A" * len(absolute): absolute}),
        "alcohol.stackexchange.com.tar.gz": tar_gz({"../../Posts.xml": beer, absolute: coffee},
                                                   {"x/Posts.xml": "/etc/passwd"}),
        "evil.stackexchange.com.zip": zip_bytes({"../../x": beer, absolute: coffee}),
        # coffee with a row over the size cap, and one question of its own (the others: duplicates)
        "big.stackexchange.com/Posts.xml": coffee.replace(b"<posts>", b'<posts>\n  <row Id="99999" PostTypeId="1" '
                                                          b'Score="1" Title="big" Body="' + b"x" * (5 << 20)
                                                          + b'" />', 1).replace(OWN_TITLE[0], OWN_TITLE[1], 1),
        "broken.stackexchange.com.7z": seven_zip({"Posts.xml": coffee})[:40_000],
        "laughs.stackexchange.com/Posts.xml": hostile_posts(shared_data, BILLION_LAUGHS, "&lol9;"),
        "xxe.stackexchange.com/Posts.xml": hostile_posts(
            shared_data, '<!DOCTYPE posts [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', "&xxe;"),
        "coffee.stackexchange.com-Comments.7z": seven_zip({"Comments.xml": coffee}),
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return [str(posts_xml(shared_data, SITES[0])), *(str(folder / name) for name in files)]


@pytest.fixture(scope="module")
def hostile_run(spark, shared_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("sources")
    outside, run_dir = work / "outside", work / "run"
    inputs = hostile_inputs(shared_data, work / "in", outside)
    before = snapshot(work, run_dir)
    stats = run(spark, SOURCE, settings_for(inputs, run_dir), str(run_dir))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {"work": work, "run": run_dir, "inputs": inputs, "before": before, "stats": stats,
            "entries": {Path(e["source"]).name if "/Posts.xml" not in e["source"] else Path(e["source"]).parent.name:
                        e for e in manifest["inputs"]}}


def documents(run_dir: Path):
    files = storage.published_files(str(run_dir / "documents"))
    return pq.read_table([path for path in sorted(files)]).to_pylist()


def test_documents_in_and_out_and_drops_by_reason(hostile_run):
    stats, stages = hostile_run["stats"], hostile_run["stats"]["stages"]
    counted = (stats["inputs"], stats["inputs_read"], stats["inputs_left_out"], len(stats["failed_inputs"]))
    assert counted == (9, 5, 1, 3)
    # beer and coffee once each, as files and as archives: the copies are exact duplicates
    read = 2 * (BEER_QUESTIONS + COFFEE_QUESTIONS)
    assert stages["answers_by_score"]["out"] == read
    assert stages["exact_dedup"] == {"in": read, "out": KEPT, "dropped": {"duplicate": read - KEPT},
                                     "seconds": stages["exact_dedup"]["seconds"]}
    assert stats["documents_out"] == KEPT == len(documents(hostile_run["run"]))
    published = storage.published_files(str(hostile_run["run"] / "documents"))
    big = {Path(name).name: rows for name, rows in published.items() if "big.stackexchange.com" in name}
    [(name, rows)] = big.items()  # its file, filtered, named by the rows it lacks
    assert rows == 1 and re.search(r"-00000-[0-9a-f]{8}\.zstd\.parquet$", name)
    shared_data = Path(hostile_run["inputs"][0]).parents[2]
    rows = sum(posts_xml(shared_data, site).read_bytes().count(b"<row ") for site in SITES)
    # each site twice, the big row, and the zip without a Posts.xml (an input with nothing read counts as one)
    assert stages["read"]["in"] == 2 * rows + 2
    assert stages["read"]["dropped"]["record_too_large"] == 1
    saved = json.loads((hostile_run["run"] / "stats.json").read_text())
    assert saved["stages"] == stages and saved["documents_out"] == stats["documents_out"]


def test_answers_in_score_order_and_no_html_tag(hostile_run):
    docs = documents(hostile_run["run"])
    assert {doc["source"] for doc in docs} == {"stackexchange"}
    assert [doc["title"] for doc in docs if doc["site"] not in SITES] == ["How should I keep whole bean coffee?"]
    assert all(doc["answer_scores"] == sorted(doc["answer_scores"], reverse=True) for doc in docs)
    assert sum(len(doc["answer_scores"]) > 1 for doc in docs) > 300
    assert not [doc["url"] for doc in docs if HTML_TAG.search(doc["raw_content"])]


def test_each_refusal_is_counted_with_its_reason(hostile_run):
    entries = hostile_run["entries"]
    tag_wikis = {"other_post_type": 40}  # coffee's rows that are neither questions nor answers
    # ../../Posts.xml: py7zr unpacks no such member (a tar's or a zip's is read as data: not a path)
    assert entries["coffee.stackexchange.com.7z"]["dropped"] == {**tag_wikis, "unsafe_member_name": 1}
    assert entries["coffee.stackexchange.com.7z"]["documents"] == COFFEE_QUESTIONS
    assert entries["alcohol.stackexchange.com.tar.gz"]["dropped"] == {"other_post_type": 119, "not_a_file": 1}
    assert entries["evil.stackexchange.com.zip"]["dropped"] == {"no_posts_table": 1}
    assert entries["big.stackexchange.com"]["dropped"] == {**tag_wikis, "record_too_large": 1}
    assert entries["coffee.stackexchange.com-Comments.7z"]["state"] == "left_out"


def test_a_bad_input_fails_alone_with_its_cause(hostile_run):
    entries = hostile_run["entries"]
    failed = {name: entry["error"] for name, entry in entries.items() if entry["state"] == "failed"}
    assert set(failed) == {"broken.stackexchange.com.7z", "laughs.stackexchange.com", "xxe.stackexchange.com"}
    assert failed["broken.stackexchange.com.7z"].startswith("ArchiveError: ")
    assert re.match(r"UnsafeXML: the XML declares the entity 'lol'", failed["laughs.stackexchange.com"])
    assert "external entity 'xxe' (SYSTEM 'file:///etc/passwd')" in failed["xxe.stackexchange.com"]
    assert "root:" not in failed["xxe.stackexchange.com"]
    assert [f["id"] for f in hostile_run["stats"]["failed_inputs"]] == [
        entries[name]["id"] for name in ("broken.stackexchange.com.7z", "laughs.stackexchange.com",
                                         "xxe.stackexchange.com")]


def test_nothing_is_written_outside_the_output(hostile_run):
    work, run_dir = hostile_run["work"], hostile_run["run"]
    assert snapshot(work, run_dir) == hostile_run["before"]
    assert not (work / "outside").exists()
    for base in (Path.cwd(), run_dir, work / "in", REPO_ROOT):
        assert not (base / ".." / ".." / "x").exists() and not (base / ".." / ".." / "Posts.xml").exists()
    report = (run_dir / "report.html").read_text() if (run_dir / "report.html").exists() else ""
    assert report == ""  # run() leaves the report to main(); test_the_report draws it


def test_the_report(hostile_run):
    from jobs.sources.report import write_report

    page = Path(write_report(str(hostile_run["run"]))).read_text()
    assert 'id="source-stackexchange"' in page and "exact_dedup" in page and "xxe.stackexchange.com" in page
    images = re.findall(r'src="(report/[^"]+)"', page)
    assert len(images) == 3 and all((hostile_run["run"] / image).stat().st_size > 1000 for image in images)


def test_a_rerun_resumes_and_a_killed_run_leaves_nothing_half_published(hostile_run, spark):
    run_dir, inputs = hostile_run["run"], hostile_run["inputs"]
    first = sorted((d["site"], d["question_id"], d["raw_content"]) for d in documents(run_dir))
    marker = (run_dir / "documents" / storage.PUBLISHED).read_text()
    again = run(spark, SOURCE, settings_for(inputs, run_dir), str(run_dir))
    assert again["inputs_resumed"] == 5 and "run_wide" not in again["tasks"]  # nothing new to publish
    assert (run_dir / "documents" / storage.PUBLISHED).read_text() == marker
    manifest = json.loads((run_dir / "manifest.json").read_text())["inputs"]
    assert sorted(e["failed_runs"] for e in manifest if e["state"] == "failed") == [2, 2, 2]
    # As a run killed while it read coffee's archive: its record never written, a file half written.
    coffee = hostile_run["entries"]["coffee.stackexchange.com.7z"]["id"]
    (run_dir / "inputs" / f"{coffee}.json").unlink()
    (run_dir / "documents" / f"{coffee}-00000.zstd.parquet.tmp-{'0' * 32}").write_bytes(b"half")
    (run_dir / "inputs" / f"{coffee}-00001.zstd.parquet").write_bytes(b"an unfinished file")
    resumed = run(spark, SOURCE, settings_for(inputs, run_dir), str(run_dir))
    assert resumed["inputs_resumed"] == 4 and resumed["documents_out"] == len(first)
    assert sorted((d["site"], d["question_id"], d["raw_content"]) for d in documents(run_dir)) == first
    assert not [p for p in run_dir.rglob("*") if ".tmp-" in p.name or p.name == f"{coffee}-00001.zstd.parquet"]
    listed = set(json.loads((run_dir / "documents" / storage.PUBLISHED).read_text())["files"])
    assert {p.name for p in (run_dir / "documents").glob("*.parquet")} == listed


def test_without_a_run_wide_step_the_inputs_files_are_the_documents(spark, shared_data, tmp_path):
    inputs = [str(posts_xml(shared_data, site)) for site in SITES]
    broken = tmp_path / "broken.stackexchange.com.7z"
    broken.write_bytes(seven_zip({"Posts.xml": posts_xml(shared_data, SITES[1]).read_bytes()})[:40_000])
    settings = settings_for([*inputs, str(broken)], tmp_path / "run", "stackexchange.dedup=false",
                            "documents_per_file=300", "run.skip_after_failures=1")
    stats = run(spark, SOURCE, settings, str(tmp_path / "run"))
    files = storage.published_files(str(tmp_path / "run" / "documents"))
    assert sorted(files.values()) == [63, 225, 300, 300] and stats["documents_out"] == BEER_QUESTIONS + COFFEE_QUESTIONS
    assert not list((tmp_path / "run" / "inputs").glob("*.parquet")) and "exact_dedup" not in stats["stages"]
    again = run(spark, SOURCE, settings, str(tmp_path / "run"))
    assert [f["state"] for f in again["failed_inputs"]] == ["skipped"] and "read" not in again["tasks"]


@pytest.mark.parametrize("arguments, says", [
    (["--input", "X"], "--output (output) is required"),
    (["--input", "X", "--output", "Y", "stackexchange.largest_sites=0"], "stackexchange.largest_sites=0"),
    (["--input", "/no/such/file", "--output", "Y"], "input '/no/such/file' matches no file"),
])
def test_the_command_refuses_bad_settings_before_spark(arguments, says, tmp_path):
    done = subprocess.run([sys.executable, "-m", "jobs.sources.stackexchange", *arguments], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and says in done.stderr and not done.stdout


def test_the_command_refuses_a_folder_that_is_not_a_run(shared_data, tmp_path):
    (tmp_path / "precious.txt").write_text("mine")
    done = subprocess.run([sys.executable, "-m", "jobs.sources.stackexchange", "--input",
                           str(posts_xml(shared_data, SITES[1])), "--output", str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not a run directory" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]
