"""Books on the shared Project Gutenberg files: The Devil's Dictionary in its 2008/2015 release (modern
header and licence footer) and its 1997 release (old "Small Print!" header), a real near-duplicate
pair, and Botchan (another PG book). Reading .txt, .txt.gz and .zip; the boilerplate gone; the pair
kept once, naming the kept book; hostile archives counted without a crash or a write."""

import gzip
import io
import re
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from curation import archives, schema
from curation.pipeline import run_stages, stage_stats
from curation.sources import books

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
    assert [(d["book_id"], d["gutenberg_id"]) for d in docs] == [(NEW, 972), (OLD, 972), ("botchan.en", 8868)]
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
    # The 1997 release has the more n-grams: it is kept, and the 2015 one names it.
    assert len(old.ngrams) > len(new.ngrams)
    assert books.near_duplicates(summaries, SETTINGS) == {NEW: OLD}
    assert books.near_duplicates(summaries[::-1], SETTINGS) == {NEW: OLD}


def test_a_book_inside_a_longer_one_is_its_near_duplicate(cleaned, summaries):
    """A compilation (The Devil's Dictionary + Botchan): Jaccard ~0.56 with the dictionary, which it
    holds whole; LSH from 0.4 finds the pair, the overlap drops the dictionary."""
    new, _, botchan = cleaned[0]
    compilation = {"book_id": "compilation", "raw_content": new["raw_content"] + botchan["raw_content"]}
    together = [summaries[0], books.summarize(compilation, SETTINGS)]
    assert books.overlap(*together) > 0.99
    assert books.near_duplicates(together, SETTINGS) == {NEW: "compilation"}


def test_a_sampled_summary_estimates_the_overlap(cleaned, summaries):
    sampled = [books.summarize(doc, replace(SETTINGS, ngram_sample=16)) for doc in cleaned[0][:2]]
    assert len(sampled[0].ngrams) < len(summaries[0].ngrams) / 10
    assert abs(books.overlap(*sampled) - books.overlap(*summaries[:2])) < 0.03
    assert books.near_duplicates(sampled, SETTINGS) == {NEW: OLD}


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
