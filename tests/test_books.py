"""Books on the shared Project Gutenberg files: The Devil's Dictionary in its 2008/2015 release (modern
header and licence footer) and its 1997 release (old "Small Print!" header), a real near-duplicate
pair, and Botchan (another PG book). Reading .txt, .txt.gz and .zip; the boilerplate gone; the pair
kept once, naming the kept book; hostile archives counted without a crash or a write; the job on Spark
(jobs.sources.books): its documents, its counts, the kept book named in stats.json, a rerun."""

import gzip
import io
import json
import re
import subprocess
import sys
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation import archives, schema, storage
from curation.pipeline import run_stages, stage_stats
from curation.settings import load_settings
from curation.sources import books
from jobs.sources.engine import job_settings, run
from jobs.sources.report import write_report
from tests.conftest import REPO_ROOT

SETTINGS = books.BooksSettings()
NEW, OLD = "pg972-devils-dictionary", "pg972-devils-dictionary-1997-dvldc10"


@pytest.fixture(scope="module")
def book_files(shared_data) -> list[Path]:
    return [shared_data / "books" / f"{NEW}.txt", shared_data / "books" / f"{OLD}.txt",
            shared_data / "text" / "botchan.en.txt"]


@pytest.fixture(scope="module")
def cleaned(book_files):
    """The three books after the boilerplate stage, and the stage's stats."""
    counts = Counter()
    docs = [doc for path in book_files for doc in books.read_books(str(path), SETTINGS, counts)]
    assert counts == Counter()
    stages = books.stages(SETTINGS)
    return list(run_stages(docs, stages)), stage_stats(stages)


@pytest.fixture(scope="module")
def summaries(cleaned):
    return [books.summarize(doc, SETTINGS) for doc in cleaned[0]]


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def read(location, settings=SETTINGS):
    counts = Counter()
    return list(books.read_books(str(location), settings, counts)), counts


def test_txt_txt_gz_and_zip_give_the_same_books(book_files, tmp_path):
    new, old = book_files[0].read_bytes(), book_files[1].read_bytes()
    (plain,), counts = read(book_files[0])
    assert plain["book_id"] == NEW and "\r" not in plain["raw_content"] and counts == Counter()
    gzipped = tmp_path / f"{NEW}.txt.gz"
    gzipped.write_bytes(gzip.compress(new))
    assert read(gzipped)[0] == [plain]
    zipped = tmp_path / "972.zip"
    zipped.write_bytes(zip_bytes({f"972/{NEW}.txt": new, f"{OLD}.txt": old, "972/972-h.htm": b"<html></html>"}))
    docs, counts = read(zipped)
    assert [d["book_id"] for d in docs] == [NEW, OLD] and docs[0] == plain
    assert counts == Counter({"dropped.not_text": 1})


def test_the_gutenberg_boilerplate_is_gone(cleaned, book_files):
    docs, stats = cleaned
    assert (stats["books_boilerplate"]["in"], stats["books_boilerplate"]["out"]) == (3, 3)
    assert stats["books_boilerplate"]["no_header_marker"] == stats["books_boilerplate"]["no_footer_marker"] == 0
    assert [(d["book_id"], d["gutenberg_id"], d["gutenberg_release_year"]) for d in docs] == [
        (NEW, 972, 2015), (OLD, 972, 2007), ("botchan.en", 8868, 2012)]  # the latest of the header's dates
    for doc in docs:
        schema.check_document(doc)
        assert set(books.SOURCE.fields) < doc.keys()
    boilerplate = re.compile(r"Gutenberg|small print|\*\*\* ?(START|END)|licen[cs]e|\betexts?\b|donation", re.I)
    assert [(d["book_id"], m.group()) for d in docs for m in boilerplate.finditer(d["raw_content"])] == []
    assert all(boilerplate.search(path.read_text(encoding="latin-1")) for path in book_files)
    ending = "the domestic cow sheds its horn every two years.\n"
    assert docs[0]["raw_content"].endswith(ending) and docs[1]["raw_content"].endswith(ending)
    assert docs[0]["raw_content"].startswith("Produced by Aloysius\n")
    assert docs[1]["raw_content"].startswith("The Internet Wiretap 1st Online Edition of\n")


def test_a_text_without_gutenberg_markers_is_kept_whole_and_counted(shared_data):
    wikitext = sorted((shared_data / "wikipedia" / "wikitext").glob("*.txt"))[0]
    docs = read(wikitext)[0]
    stage = books.BoilerplateStage()
    (doc,) = stage(docs)
    assert doc["raw_content"] == docs[0]["raw_content"].strip() + "\n" and doc["gutenberg_id"] is None
    assert (stage.stats["no_header_marker"], stage.stats["no_footer_marker"]) == (1, 1)


def test_the_near_duplicate_pair_is_kept_once_and_named(summaries):
    new, old, botchan = summaries
    assert books.overlap(new, old) > 0.95 and books.overlap(new, botchan) < 0.01
    # The 1997 release has the more n-grams (spaced dashes, typos), but each is found in the other over the
    # threshold: the same text, and its latest release (2015, corrected) is kept; the 1997 one names it.
    assert len(old.ngrams) > len(new.ngrams) and books.share(old, new) > 0.9
    assert books.found_in_larger(summaries, SETTINGS) == {NEW: OLD}
    assert books.near_duplicates(summaries, SETTINGS) == {OLD: NEW}
    assert books.near_duplicates(summaries[::-1], SETTINGS) == {OLD: NEW}


def test_a_book_inside_a_longer_one_is_its_near_duplicate(cleaned, summaries):
    """A compilation (The Devil's Dictionary + Botchan): Jaccard ~0.56 with the dictionary, which it
    holds whole; LSH from 0.4 finds the pair, the overlap drops the dictionary, though its release is
    the later: the compilation is not found in it, and keeping it loses no text."""
    new, _, botchan = cleaned[0]
    compilation = {"book_id": "compilation", "raw_content": new["raw_content"] + botchan["raw_content"]}
    together = [summaries[0], books.summarize(compilation, SETTINGS)]
    assert books.overlap(*together) > 0.99 and together[1].release_year is None
    assert books.near_duplicates(together, SETTINGS) == {NEW: "compilation"}


def test_a_sampled_summary_estimates_the_overlap(cleaned, summaries):
    """The default summary keeps 1 in 16 n-gram hashes; the exact one all of them."""
    exact = [books.summarize(doc, replace(SETTINGS, ngram_sample=1)) for doc in cleaned[0][:2]]
    assert SETTINGS.ngram_sample == 16 and len(summaries[0].ngrams) < len(exact[0].ngrams) / 10
    assert abs(books.overlap(*summaries[:2]) - books.overlap(*exact)) < 0.01
    assert books.near_duplicates(exact, SETTINGS) == {OLD: NEW}


def test_hostile_archives_are_counted_and_write_nothing(book_files, tmp_path, monkeypatch):
    new = book_files[0].read_bytes()
    hostile = tmp_path / "hostile.zip"
    hostile.write_bytes(zip_bytes({"../../evil.txt": new, "/tmp/absolute.txt": new, "big.txt": new * 2}))
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = set(tmp_path.rglob("*"))
    docs, counts = read(hostile, replace(SETTINGS, max_member_bytes=len(new)))
    assert set(tmp_path.rglob("*")) == before and not Path("/tmp/absolute.txt").exists()
    assert [d["book_id"] for d in docs] == ["evil", "absolute"] and counts == Counter({"dropped.member_too_large": 1})
    corrupt = tmp_path / "972.txt.gz"
    corrupt.write_bytes(gzip.compress(new)[:5000])
    with pytest.raises(archives.ArchiveError):
        read(corrupt)
    assert read(book_files[1])[0][0]["book_id"] == OLD  # the next input reads on


# ---- the job (jobs.sources.books) on Spark: one run, then reruns ------------------------------------

def job_settings_for(inputs: list[str], output: Path, *overrides: str):
    return load_settings(job_settings(books.SOURCE), None,
                         [f"input={json.dumps(inputs)}", f"output={output}", *overrides])


def published(run_dir: Path) -> list[dict]:
    return pq.read_table(sorted(storage.published_files(str(run_dir / "documents")))).to_pylist()


@pytest.fixture(scope="module")
def job_run(spark, book_files, tmp_path_factory):
    """Both releases of The Devil's Dictionary, the 2015 one again inside a .zip (beside its HTML), and
    Botchan, through the job."""
    work = tmp_path_factory.mktemp("books-job")
    zipped = work / "972.zip"
    zipped.write_bytes(zip_bytes({f"972/{NEW}.txt": book_files[0].read_bytes(), "972/972-h.htm": b"<html></html>"}))
    inputs = [str(book_files[1]), str(book_files[0]), str(zipped), str(book_files[2])]
    stats = run(spark, books.SOURCE, job_settings_for(inputs, work / "run"), str(work / "run"))
    return {"run": work / "run", "inputs": inputs, "stats": stats}


def test_the_job_drops_the_boilerplate_and_keeps_the_pair_once(job_run):
    docs = published(job_run["run"])
    assert [(d["book_id"], d["source"], d["gutenberg_release_year"]) for d in docs] == [
        (NEW, "books", 2015), ("botchan.en", "books", 2012)]
    assert set(docs[0]) == {"raw_content", "source", *books.SOURCE.fields}
    boilerplate = re.compile(r"Gutenberg|small print|\*\*\* ?(START|END)|licen[cs]e|\betexts?\b", re.I)
    assert [m.group() for d in docs for m in boilerplate.finditer(d["raw_content"])] == []
    assert docs[0]["raw_content"].startswith("Produced by Aloysius\n")


def test_the_counts_and_the_kept_book_named_in_stats(job_run):
    stats, (old, new, zipped, _) = job_run["stats"], job_run["inputs"]
    stages = stats["stages"]
    assert (stages["read"]["in"], stages["read"]["out"], stages["read"]["dropped"]) == (5, 4, {"not_text": 1})
    assert (stages["books_boilerplate"]["in"], stages["books_boilerplate"]["out"]) == (4, 4)
    near = stages["near_dedup"]
    assert (near["in"], near["out"], near["dropped"]) == (4, 2, {"near_duplicate": 2})
    kept = {"input": new, "row": 0, "book_id": NEW}
    assert [{key: value for key, value in line.items() if key != "overlap"} for line in near["duplicate_of"]] == [
        {"input": old, "row": 0, "book_id": OLD, "kept": kept},
        {"input": zipped, "row": 0, "book_id": NEW, "kept": kept}]
    assert 0.9 < near["duplicate_of"][0]["overlap"] < 1 and near["duplicate_of"][1]["overlap"] == 1
    assert stats["documents_out"] == 2 and json.loads((job_run["run"] / "stats.json").read_text())["stages"] == stages
    page = Path(write_report(str(job_run["run"]))).read_text()
    assert 'id="source-books"' in page and "near_duplicate: 2" in page


def test_a_rerun_resumes_and_other_settings_read_again(job_run, spark):
    run_dir, inputs = job_run["run"], job_run["inputs"]
    marker = (run_dir / "documents" / storage.PUBLISHED).read_text()
    again = run(spark, books.SOURCE, job_settings_for(inputs, run_dir), str(run_dir))
    assert again["inputs_resumed"] == 4 and "read" not in again["tasks"] and "run_wide" not in again["tasks"]
    assert (run_dir / "documents" / storage.PUBLISHED).read_text() == marker
    # A stricter threshold: the keys were made with other settings, so every input is read again, and
    # the two releases (95 % of the 1997 one's n-grams in the other) are no longer near-duplicates.
    strict = run(spark, books.SOURCE, job_settings_for(inputs, run_dir, "books.overlap_threshold=0.99"), str(run_dir))
    assert strict["inputs_resumed"] == 0 and strict["stages"]["near_dedup"]["dropped"] == {"near_duplicate": 1}
    assert sorted(d["book_id"] for d in published(run_dir)) == ["botchan.en", NEW, OLD]


def test_the_command_line(book_files, tmp_path):
    done = subprocess.run([sys.executable, "-m", "jobs.sources.books", "--print-settings"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ngram_sample: 16" in done.stdout
    done = subprocess.run([sys.executable, "-m", "jobs.sources.books", "--input", str(book_files[0]), "--output",
                           str(tmp_path), "books.overlap_threshold=2"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "books.overlap_threshold=2" in done.stderr
