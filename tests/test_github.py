"""LLaMA's GitHub source (curation.sources.github) on the four real repository archives of
../shared/data/github: licences (cJSON MIT and python-livereload BSD-3-Clause kept, redshift GPL-3.0
and akademiet without a licence dropped), licence headers cut, minified and vendored bundles dropped,
exact duplicates keyed alike, the same files through a zip and through exports; hostile archives
(built here) counted or failing alone. Then the job on Spark (jobs.sources.github) on the four and
cJSON's zipball: its counts, each rule on its documents, one file of each text, a rerun reading nothing."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import archives, storage
from curation.pipeline import run_stages, stage_stats
from curation.settings import load_settings
from curation.sources import content_hash
from curation.sources.github import (
    PROSE_LANGUAGES,
    SOURCE,
    GitHubSettings,
    PathFilter,
    QualityFilter,
    read_files,
    repository_licenses,
    stages,
    without_license_header,
)
from jobs.sources.engine import job_settings, run
from jobs.sources.inputs import input_id
from tests.conftest import REPO_ROOT
from tests.test_sources_engine import documents

ARCHIVES = {"cjson": "cJSON-a29814f", "livereload": "python-livereload-f953928", "redshift": "redshift-490ba2a",
            "akademiet": "akademiet.sensorplotting-21c5f40"}


def github(shared_data: Path, name: str) -> str:
    return str(shared_data / "github" / f"{ARCHIVES[name]}.tar.gz")


def curate(location: str, settings: GitHubSettings = GitHubSettings()) -> tuple[list[dict], Counter, dict]:
    """The source on one input: its documents, the reader's counts and the stages' stats."""
    counts, pipeline = Counter(), stages(settings)
    docs = list(run_stages(read_files(location, settings, counts), pipeline))
    return docs, counts, stage_stats(pipeline)


def real_members(location: str) -> dict[str, bytes]:
    return {m.name: m.data for m in archives.members(location, 1 << 20, Counter())}


def zipball(shared_data: Path, folder: Path) -> Path:
    """cJSON's archive as GitHub's zipball of it: the same members under the same top folder."""
    as_zip = folder / "cJSON-a29814f.zip"
    with zipfile.ZipFile(as_zip, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in real_members(github(shared_data, "cjson")).items():
            archive.writestr(name, data)
    return as_zip


@pytest.fixture(scope="module")
def curated(shared_data):
    return {name: curate(github(shared_data, name)) for name in ARCHIVES}


def test_only_mit_apache_bsd_repositories_are_kept(curated, shared_data):
    cjson, _, cjson_stats = curated["cjson"]
    livereload, _, _ = curated["livereload"]
    assert {(d["repository"], d["license"]) for d in cjson} == {("cJSON-a29814f", "MIT")}
    assert {(d["repository"], d["license"]) for d in livereload} == {("python-livereload-f953928", "BSD-3-Clause")}
    assert cjson_stats["license"]["dropped"] == {}
    # redshift's COPYING is detected as GPL-3.0; akademiet has no licence file: every file of both dropped.
    assert repository_licenses(github(shared_data, "redshift"), GitHubSettings()) == {
        "redshift-490ba2a": "GPL-3.0-only"}
    for name, reason in (("redshift", "license_not_allowed"), ("akademiet", "no_license")):
        docs, counts, stats = curated[name]
        assert docs == []
        assert stats["license"]["dropped"] == {reason: stats["license"]["in"]} and stats["license"]["in"] > 0
    assert curated["redshift"][1]["dropped.not_a_file"] == 2  # its two symbolic links
    # Allowing GPL-3.0 keeps redshift's files: the rule is the setting, not the repository.
    gpl = GitHubSettings(licenses=["GPL-3.0-only"])
    assert {d["license"] for d in curate(github(shared_data, "redshift"), gpl)[0]} == {"GPL-3.0-only"}


def test_a_licence_header_is_removed(curated, shared_data):
    original = real_members(github(shared_data, "cjson"))["cJSON-a29814f/cJSON.c"].decode()
    assert original.startswith("/*\n  Copyright (c) 2009-2017 Dave Gamble and cJSON contributors")
    (doc,) = [d for d in curated["cjson"][0] if d["path"] == "cJSON.c"]
    assert doc["raw_content"].startswith("/* cJSON */\n/* JSON parser in C. */")
    assert original.endswith(doc["raw_content"])  # only the header went
    sources = [d for d in curated["cjson"][0] if d["programming_language"] == "C"]
    assert not any("Permission is hereby granted" in d["raw_content"][:2000] for d in sources)
    assert curated["cjson"][2]["license_header"]["headers_removed"] >= 30
    # A Python module docstring carrying the licence goes too; the code after it stays.
    (init,) = [d for d in curated["livereload"][0] if d["path"] == "livereload/__init__.py"]
    assert init["raw_content"].startswith("__version__ = ") and ":license: BSD" not in init["raw_content"]


def test_minified_and_vendored_bundles_are_dropped(curated, shared_data):
    settings = GitHubSettings()
    # Chart.js (akademiet): a 194,340-character line. Its repository has no licence, so its line rule is
    # shown on the file itself.
    (chart,) = [d for d in read_files(github(shared_data, "akademiet"), settings, Counter())
                if d["path"] == "chart-v4.0.1.umd.js"]
    quality = QualityFilter(settings)
    assert list(quality([chart])) == [] and quality.stats["dropped.line_too_long"] == 1
    # livereload.js is a browserify bundle of compiled CoffeeScript within the line rules (longest line
    # 480): the vendored-path rule (livereload/vendors/) is what drops it.
    bundle = [d for d in read_files(github(shared_data, "livereload"), settings, Counter())
              if d["path"] == "livereload/vendors/livereload.js"]
    assert list(QualityFilter(settings)(bundle)) == bundle
    paths = PathFilter(settings)
    assert list(paths(bundle)) == [] and paths.stats["dropped.vendored"] == 1
    assert "livereload/vendors/livereload.js" not in {d["path"] for d in curated["livereload"][0]}
    # What is kept is source: whitelisted extensions, no licence file.
    kept = curated["cjson"][0] + curated["livereload"][0]
    assert {d["programming_language"] for d in kept} >= {"C", "Python", "Markdown", "CMake"}
    assert not {d["path"] for d in kept} & {"LICENSE", "COPYING"}


def test_an_exact_duplicate_file_shares_its_key(curated):
    docs = curated["cjson"][0]
    copies = [d for d in docs if d["path"].endswith("/src/ProductionCode.h")]
    assert len(copies) == 3  # Unity's examples 1-3 ship the same header
    assert len({d["content_hash"] for d in copies}) == 1
    by_key = Counter(d["content_hash"] for d in docs)
    texts = {d["content_hash"]: d["raw_content"] for d in docs}
    assert len(texts) == len(set(texts.values()))  # one key per distinct text
    assert sum(n - 1 for n in by_key.values()) == 10  # the engine keeps one of each: 10 files go


def test_a_zip_archive_and_exports_give_the_same_files(curated, shared_data, tmp_path):
    members = real_members(github(shared_data, "cjson"))
    as_zip = zipball(shared_data, tmp_path)
    expected = sorted((d["path"], d["content_hash"]) for d in curated["cjson"][0])
    assert sorted((d["path"], d["content_hash"]) for d in curate(str(as_zip))[0]) == expected
    # A BigQuery-style JSON-lines export with its own `license` field: no detection needed.
    rows = [{"repo_name": "DaveGamble/cJSON", "path": name.split("/", 1)[1], "license": "mit",
             "content": data.decode("utf-8", "replace")} for name, data in members.items()]
    export = tmp_path / "github_000.jsonl.gz"
    export.write_bytes(gzip.compress("".join(json.dumps(row) + "\n" for row in rows).encode()))
    docs, _, _ = curate(str(export))
    assert {d["license"] for d in docs} == {"MIT"} and {d["repository"] for d in docs} == {"DaveGamble/cJSON"}
    assert len(docs) == len(expected)
    # A Parquet export without licences: each repository's own LICENSE row decides.
    table = pa.Table.from_pylist([{k: v for k, v in row.items() if k != "license"} for row in rows])
    pq.write_table(table, tmp_path / "export.parquet")
    assert {d["license"] for d in curate(str(tmp_path / "export.parquet"))[0]} == {"MIT"}


def hostile_tar(path: Path, licence: bytes, source: bytes) -> None:
    """A tar whose members climb out, start at /, link out or exceed the cap, beside one good file."""
    def add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.size, info.linkname = kind, len(data), "/etc/passwd" if kind == tarfile.SYMTYPE else ""
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(path, "w:gz") as tar:
        add(tar, "evil-1/LICENSE", licence)
        add(tar, "../../x.c", source)
        add(tar, "/tmp/absolute.c", source)
        add(tar, "evil-1/../../../y.c", source)
        add(tar, "evil-1/passwd.c", kind=tarfile.SYMTYPE)
        add(tar, "evil-1/huge.c", b"x = 1;\n" * 400_000)  # 2.8 MB, over the 1 MiB cap
        add(tar, "evil-1/cJSON.c", source)


def test_hostile_archives_are_counted_or_fail_alone(curated, shared_data, tmp_path, monkeypatch):
    cjson = github(shared_data, "cjson")
    members = real_members(cjson)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # where a tar extraction would write `../../x.c`
    hostile_tar(work / "evil.tar.gz", members["cJSON-a29814f/LICENSE"], members["cJSON-a29814f/cJSON.c"])
    docs, counts, _ = curate(str(work / "evil.tar.gz"))
    assert [(d["repository"], d["path"], d["license"]) for d in docs] == [("evil-1", "cJSON.c", "MIT")]
    assert counts == Counter({"dropped.unsafe_path": 3, "dropped.not_a_file": 1, "dropped.member_too_large": 1})
    assert [p.relative_to(tmp_path) for p in tmp_path.parent.rglob("*") if p.name in ("x.c", "y.c")] == []
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["work", "work/evil.tar.gz"]
    assert not Path("/tmp/absolute.c").exists()
    # A damaged archive (a real one cut short) fails as an ArchiveError; the next input reads as before.
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(Path(cjson).read_bytes()[:60_000])
    with pytest.raises(archives.ArchiveError):
        curate(str(cut))
    assert len(curate(cjson)[0]) == len(curated["cjson"][0])


def test_the_source_declaration(shared_data):
    from curation.schema import check_document, field

    assert SOURCE.name == "github" and SOURCE.settings is GitHubSettings
    for name in SOURCE.fields:
        field(name)
    docs, _, _ = curate(github(shared_data, "livereload"))
    for doc in docs:
        check_document(doc)
        assert set(SOURCE.fields) | {"raw_content"} == set(doc)


# --- the job (jobs.sources.github) on Spark ---------------------------------------------------------

KEPT = {"cjson": 134, "livereload": 27, "redshift": 0, "akademiet": 0}  # files each archive gives the dedup


@pytest.fixture(scope="module")
def job(spark, shared_data, tmp_path_factory):
    """The job on the four archives, then cJSON's again as a zipball: every file the zip gives is an
    exact duplicate of one of the tar's, across inputs."""
    work = tmp_path_factory.mktemp("github-job")
    inputs = [github(shared_data, name) for name in ARCHIVES] + [str(zipball(shared_data, work))]
    settings = load_settings(job_settings(SOURCE), None, [f"input={json.dumps(inputs)}", f"output={work / 'run'}"])
    stats = run(spark, SOURCE, settings, str(work / "run"))
    return {"run": work / "run", "inputs": inputs, "stats": stats, "documents": documents(work / "run")}


def test_the_job_counts_documents_in_and_out_and_drops_by_reason(job, curated):
    stages = job["stats"]["stages"]
    assert {name: len(curated[name][0]) for name in ARCHIVES} == KEPT  # the same stages without Spark
    assert (stages["read"]["in"], stages["read"]["out"], stages["read"]["dropped"]) == (
        606, 600, {"binary": 4, "not_a_file": 2})
    assert stages["license"]["dropped"] == {"license_not_allowed": 118, "no_license": 10}  # redshift, akademiet
    assert stages["paths"]["dropped"] == {"extension_not_allowed": 168, "license_file": 3, "vendored": 1}
    assert stages["quality"]["dropped"] == {"empty": 3, "mean_line_too_long": 2}
    read = sum(KEPT.values()) + KEPT["cjson"]
    assert (stages["exact_dedup"]["in"], stages["exact_dedup"]["out"]) == (read, 151) == (295, 151)
    assert stages["exact_dedup"]["dropped"] == {"duplicate": KEPT["cjson"] + 10}  # the zip's, and cJSON's own 10
    assert job["stats"]["documents_out"] == len(job["documents"]) == 151
    saved = json.loads((job["run"] / "stats.json").read_text())
    assert saved["stages"] == stages and saved["failed_inputs"] == []


def test_the_documents_are_mit_apache_bsd_files_only(job):
    docs = job["documents"]
    assert {(d["repository"], d["license"]) for d in docs} == {
        ("cJSON-a29814f", "MIT"), ("python-livereload-f953928", "BSD-3-Clause")}
    assert {d["source"] for d in docs} == {"github"}
    columns = pq.read_schema(sorted(storage.published_files(str(job["run"] / "documents")))[0]).names
    assert columns == ["raw_content", "source", "repository", "path", "programming_language", "license",
                       "content_hash"]  # no `language`: that is lid.176's label of a natural language
    assert Counter(d["programming_language"] for d in docs)["C"] == 88


def test_the_documents_have_no_licence_header(job, curated):
    (doc,) = [d for d in job["documents"] if d["path"] == "cJSON.c"]
    assert doc["raw_content"].startswith("/* cJSON */\n/* JSON parser in C. */")
    # Nothing left to cut: no document opens with a comment that speaks of copyright or a licence.
    sources = [d for d in job["documents"] if d["programming_language"] not in PROSE_LANGUAGES]
    assert len(sources) == 129
    assert not [d["path"] for d in sources if without_license_header(d["raw_content"]) != d["raw_content"]]
    removed = {name: curated[name][2]["license_header"]["headers_removed"] for name in ("cjson", "livereload")}
    assert removed == {"cjson": 54, "livereload": 4}
    assert job["stats"]["stages"]["license_header"]["headers_removed"] == 2 * 54 + 4  # cJSON's read twice


def test_an_exact_duplicate_file_is_kept_once(job):
    docs = job["documents"]
    assert len({d["raw_content"] for d in docs}) == len(docs)
    assert all(d["content_hash"] == content_hash(d).hex() for d in docs)
    # Unity's three copies of one header: the first, in the archive's order, is kept.
    assert [d["path"] for d in docs if d["path"].endswith("/src/ProductionCode.h")] == [
        "tests/unity/examples/example_1/src/ProductionCode.h"]
    # The zip came last: the tar's copies are kept and the zip gives no document.
    published = storage.published_files(str(job["run"] / "documents"))
    ids = [input_id(location) for location in job["inputs"]]
    assert {name for name in published if Path(name).name.startswith(ids[-1])} == set()
    assert sorted(published.values()) == [27, 124]


def test_a_rerun_of_the_command_reads_nothing_again(job):
    done = subprocess.run([sys.executable, "-m", "jobs.sources.github", "--input", *job["inputs"], "--output",
                           str(job["run"]), "master=local[2]"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "github: 151 documents from 5/5 inputs (5 already done, 0 left out)" in done.stdout
    again = json.loads((job["run"] / "stats.json").read_text())
    assert again["inputs_resumed"] == 5 and again["tasks"] == {}  # no input read, nothing published again
    assert again["stages"] == job["stats"]["stages"]
    assert 'id="source-github"' in (job["run"] / "report.html").read_text()
