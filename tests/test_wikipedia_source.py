"""LLaMA's Wikipedia source (curation.sources.wikipedia) on the real enwiki dump fragment and the real
wikitext articles of ../shared/data/wikipedia: no link markup, template, comment or table syntax left,
through the reader and stages and through the job on Spark (jobs.sources.wikipedia: its counts, a
rerun that reads nothing); redirects, other namespaces and other languages counted; the multistream
layout read alike; a dump with a DTD (entities) refused, a damaged one failing alone."""

from __future__ import annotations

import bz2
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from xml.parsers.expat import ExpatError

import pytest

from curation.pipeline import run_stages, stage_stats
from curation.settings import load_settings
from curation.sources.wikipedia import LLAMA_LANGUAGES, SOURCE, WikipediaSettings, read_dump, stages
from curation.wikipedia import UnsafeXMLError, read_xml_dump
from jobs.sources.engine import job_settings, run
from tests.conftest import REPO_ROOT
from tests.test_sources_engine import documents

# Wiki syntax that must not survive: links, templates, comments, tables, refs, external links.
MARKUP = ("[[", "]]", "{{", "}}", "<!--", "-->", "{|", "|}", "|-", "||", "<ref", "</ref", "[http")


def sample(shared_data: Path) -> Path:
    return shared_data / "wikipedia" / "en" / "enwiki-pages-articles-sample.xml.bz2"


def curate(location: Path, settings: WikipediaSettings = WikipediaSettings()) -> tuple[list[dict], Counter, dict]:
    counts, pipeline = Counter(), stages(settings)
    docs = list(run_stages(read_dump(str(location), settings, counts), pipeline))
    return docs, counts, stage_stats(pipeline)


def dump_xml(shared_data: Path) -> str:
    return bz2.decompress(sample(shared_data).read_bytes()).decode("utf-8")


def test_the_dump_becomes_clean_articles(shared_data):
    docs, counts, stats = curate(sample(shared_data))
    assert [(d["title"], d["page_id"], d["language"]) for d in docs] == [
        ("Computer accessibility", 411964, "en"), ("Accessibility", 302109, "en")]
    assert counts == Counter({"dropped.redirect": 1})  # AccessibleComputing
    assert stats["wikitext"]["in"] == stats["wikitext"]["out"] == 2
    raw = dump_xml(shared_data)
    assert all(markup.replace("<", "&lt;") in raw or markup in raw for markup in ("[[", "{{", "<ref", "{|"))
    for doc in docs:
        assert len(doc["raw_content"]) > 2000
        for markup in MARKUP:
            assert markup not in doc["raw_content"], (doc["title"], markup)
    assert docs[0]["raw_content"].startswith("In human–computer interaction, computer accessibility")
    assert set(SOURCE.fields) | {"raw_content"} == set(docs[0])


def wikitext_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "wikipedia" / "wikitext").glob("*.txt"))


@pytest.fixture(scope="module")
def job(spark, shared_data, tmp_path_factory):
    """The job on the dump and the 71 wikitext files (one article each, read as `make lm` reads them)."""
    run_dir = tmp_path_factory.mktemp("wikipedia-job") / "run"
    inputs = [str(sample(shared_data)), *map(str, wikitext_files(shared_data))]
    settings = load_settings(job_settings(SOURCE), None, [f"input={json.dumps(inputs)}", f"output={run_dir}"])
    stats = run(spark, SOURCE, settings, str(run_dir))
    return {"run": run_dir, "inputs": inputs, "stats": stats, "documents": documents(run_dir)}


def test_the_job_counts_documents_in_and_out_and_drops_by_reason(job):
    stats = job["stats"]
    assert (stats["inputs"], stats["inputs_read"], stats["failed_inputs"]) == (72, 72, [])
    # 3 pages of the dump and 71 files; AccessibleComputing and redirect.txt are redirects
    assert {key: stats["stages"]["read"][key] for key in ("in", "out", "dropped")} == {
        "in": 74, "out": 72, "dropped": {"redirect": 2}}
    assert {key: stats["stages"]["wikitext"][key] for key in ("in", "out", "dropped")} == {
        "in": 72, "out": 72, "dropped": {}}
    assert stats["documents_out"] == len(job["documents"]) == 72
    assert json.loads((job["run"] / "stats.json").read_text())["stages"] == stats["stages"]


def test_the_documents_have_no_link_template_comment_or_table(job, shared_data):
    """Each syntax is in the inputs, none in the documents (a table after a `:`, one flattened onto a
    single line, a template cut open, included)."""
    before = "\n".join(path.read_text() for path in wikitext_files(shared_data))
    for markup in ("[[", "{{", "<!--", "{|", "|-", "<ref"):
        assert markup in before
    for doc in job["documents"]:
        for markup in MARKUP:
            assert markup not in doc["raw_content"], (doc["title"], markup)
        assert not re.search(r"</?(ref|small|span|div|br|sup|center)\b", doc["raw_content"]), doc["title"]
    (raith,) = [d for d in job["documents"] if d["title"] == "raith rovers"]
    assert "Alan Young" not in raith["raw_content"]  # a cell of its board-of-directors table
    assert "Alan Young" in (shared_data / "wikipedia" / "wikitext" / "raith_rovers.txt").read_text()


def test_the_documents_columns(job):
    docs = job["documents"]
    assert {d["source"] for d in docs} == {"wikipedia"} and {d["language"] for d in docs} == {"en"}
    from_dump = [(d["title"], d["page_id"]) for d in docs if d["page_id"] is not None]
    assert from_dump == [("Computer accessibility", 411964), ("Accessibility", 302109)]
    assert len({d["title"] for d in docs if d["page_id"] is None}) == 70  # a wikitext file's title is its name


def test_a_rerun_of_the_command_reads_nothing_again(job):
    done = subprocess.run([sys.executable, "-m", "jobs.sources.wikipedia", "--input", *job["inputs"], "--output",
                           str(job["run"]), "master=local[2]"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wikipedia: 72 documents from 72/72 inputs (72 already done, 0 left out)" in done.stdout
    again = json.loads((job["run"] / "stats.json").read_text())
    assert again["inputs_resumed"] == 72 and again["tasks"] == {}  # no input read, nothing published again
    assert again["stages"] == job["stats"]["stages"]
    assert 'id="source-wikipedia"' in (job["run"] / "report.html").read_text()


def test_a_multistream_dump_reads_as_the_plain_one(shared_data, tmp_path):
    """Wikimedia's multistream layout: the header, then pages in bz2 streams of their own, the footer."""
    xml = dump_xml(shared_data)
    pieces = re.split(r"(?=  <page>)|(?=</mediawiki>)", xml)
    multistream = tmp_path / "enwiki-20141106-pages-articles-multistream.xml.bz2"
    multistream.write_bytes(b"".join(bz2.compress(piece.encode("utf-8")) for piece in pieces))
    assert len(pieces) == 5
    assert curate(multistream)[0] == curate(sample(shared_data))[0]


def test_languages_namespaces_and_the_dump_name(shared_data, tmp_path):
    xml = dump_xml(shared_data)
    assert len(LLAMA_LANGUAGES) == 20 and "en" in LLAMA_LANGUAGES
    docs, counts, _ = curate(sample(shared_data), WikipediaSettings(languages=["de", "fr"]))
    assert docs == [] and counts == Counter({"dropped.language_not_selected": 1})
    # No xml:lang nor dbname: the file's name says the language.
    anonymous = xml.replace(' xml:lang="en"', "").replace("<dbname>enwiki</dbname>", "")
    (tmp_path / "svwiki-20141106-pages-articles.xml").write_text(anonymous)
    docs, _, _ = curate(tmp_path / "svwiki-20141106-pages-articles.xml")
    assert {d["language"] for d in docs} == {"sv"}
    # A page outside the article namespace (here "Accessibility" moved to the project namespace, 4).
    moved = xml.replace("<ns>0</ns>\n    <id>302109</id>", "<ns>4</ns>\n    <id>302109</id>")
    (tmp_path / "enwiki-moved.xml").write_text(moved)
    docs, counts, _ = curate(tmp_path / "enwiki-moved.xml")
    assert [d["page_id"] for d in docs] == [411964]
    assert counts == Counter({"dropped.redirect": 1, "dropped.not_article": 1})
    # A wikitext file does not say its wiki: the setting does (Afrikaans is not one of LLaMA's 20).
    wikitext = shared_data / "wikipedia" / "wikitext"
    docs, counts, _ = curate(wikitext / "Mark-Behr.txt", WikipediaSettings(wikitext_language="af"))
    assert docs == [] and counts == Counter({"dropped.language_not_selected": 1})
    docs, _, _ = curate(wikitext / "Keilwelle.txt", WikipediaSettings(wikitext_language="de"))
    assert [(d["title"], d["language"], d["page_id"]) for d in docs] == [("Keilwelle", "de", None)]


def test_a_dump_with_a_dtd_is_refused_and_a_damaged_one_fails_alone(shared_data, tmp_path):
    xml = dump_xml(shared_data)
    doctypes = {
        "internal": '<!DOCTYPE mediawiki [<!ENTITY x "INJECTED">]>',
        "laughs": '<!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
                  '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>',
        "external": '<!DOCTYPE mediawiki [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
    }
    for name, doctype in doctypes.items():
        hostile = tmp_path / f"enwiki-{name}-pages-articles.xml"
        hostile.write_text('<?xml version="1.0"?>\n' + doctype + "\n" + xml.replace("accessibility", "&x; &c;", 1))
        with pytest.raises(UnsafeXMLError, match="DTD"):
            curate(hostile)
        with pytest.raises(UnsafeXMLError):  # `make lm`'s reader is the same one
            list(read_xml_dump(hostile))
    # A dump cut short fails as malformed XML; the next input reads as before.
    cut = tmp_path / "enwiki-cut-pages-articles.xml.bz2"
    cut.write_bytes(bz2.compress(xml[: len(xml) // 2].encode("utf-8")))
    with pytest.raises(ExpatError):
        curate(cut)
    assert len(curate(sample(shared_data))[0]) == 2
