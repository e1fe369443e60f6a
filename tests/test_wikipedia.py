"""Wikipedia readers on the real shared files, the dump streamed over HTTP from a local mirror, the
offline fallback, and `python -m jobs.train_lm` end to end on a small input."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from curation.wikipedia import (
    dump_url,
    read_articles,
    read_squad_json,
    read_wikitext_tokens,
    read_xml_dump,
)
from curation.wikitext import wikitext_to_text
from jobs.train_lm import iter_articles, route_inputs

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_xml_dump_streamed_redirects_skipped_markup_removed(shared_data):
    articles = list(read_xml_dump(shared_data / "wikipedia" / "en" / "enwiki-pages-articles-sample.xml.bz2"))
    assert [a.title for a in articles] == ["Computer accessibility", "Accessibility"]  # the redirect is skipped
    for article in articles:
        assert len(article.text) > 2000
        for markup in ("<ref", "{{", "}}", "[[", "]]", "http", "'''", "Category:", "{|"):
            assert markup not in article.text, markup
    assert articles[0].text.startswith("In human–computer interaction, computer accessibility")
    assert "References" not in articles[0].text.split("\n")  # reference sections dropped
    dump = shared_data / "wikipedia" / "en" / "enwiki-pages-articles-sample.xml.bz2"
    raw = list(read_xml_dump(dump, plain=False, limit=1))
    assert len(raw) == 1 and "<ref" in raw[0].text


def test_wikitext_files(shared_data):
    folder = shared_data / "wikipedia" / "wikitext"
    (keilwelle,) = read_articles(folder / "Keilwelle.txt")
    assert keilwelle.title == "Keilwelle"
    assert keilwelle.text.startswith("Als Keilwellen werden Wellen bezeichnet")
    assert list(read_articles(folder / "redirect.txt")) == []
    articles = list(read_articles(folder))
    assert len(articles) >= 65
    text = "\n".join(a.text for a in articles)
    for markup in ("<ref", "{{", "[[", "http://", "https://", "Datei:", "File:", "Kategorie:"):
        assert markup not in text, markup


def test_wikitext_to_text_on_tricky_markup():
    wikitext = ("{{Infobox|name=X}}'''Bold''' and ''italic'' with a [[Link|label]] and [[Plain]]"
                "<ref>{{cite web|url=http://x.org}}</ref> and [http://example.org titled] [http://bare.org].\n"
                "[[File:X.png|thumb|caption]]\n{| class=wikitable\n|-\n| cell\n|}\n== Section ==\n"
                "* item one\n# item two\n== References ==\n{{reflist}}\n* a cited work\n"
                "== Later ==\nKept &amp; decoded.\n[[Category:Things]]\n[[de:Ding]]")
    assert wikitext_to_text(wikitext).split("\n") == [
        "Bold and italic with a label and Plain and titled .", "Section", "item one", "item two", "Later",
        "Kept & decoded."]


def test_wikitext2_tokens_and_squad(shared_data):
    articles = [*read_wikitext_tokens(shared_data / "wikipedia" / "en" / "wikitext2-valid.tokens.txt"),
                *read_wikitext_tokens(shared_data / "wikipedia" / "en" / "wikitext2-test.tokens.txt")]
    assert len(articles) == 122
    assert articles[0].title == "Homarus gammarus"
    text = "\n".join(a.text for a in articles)
    assert "@-@" not in text and "<unk>" not in text and " , " not in text
    passages = list(read_squad_json(shared_data / "wikipedia" / "zh" / "cmrc2018_dev.json"))
    assert len(passages) == len({p.text for p in passages}) > 500
    assert passages[0].text.startswith("《战国无双3》")


@pytest.fixture()
def wikimedia_mirror(shared_data, tmp_path):
    """A local Wikimedia dumps layout served over HTTP, with the real enwiki sample as `latest`."""
    latest = tmp_path / "enwiki" / "latest"
    latest.mkdir(parents=True)
    shutil.copy(shared_data / "wikipedia" / "en" / "enwiki-pages-articles-sample.xml.bz2",
                latest / "enwiki-latest-pages-articles.xml.bz2")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_dump_streamed_from_wikimedia_base_url(wikimedia_mirror):
    articles, sources = iter_articles("en", [], limit=1, base_url=wikimedia_mirror, filter_language=False)
    assert sources == [dump_url("en", wikimedia_mirror)]
    assert sources[0].endswith("/enwiki/latest/enwiki-latest-pages-articles.xml.bz2")
    assert [a.title for a in articles] == ["Computer accessibility"]  # the article limit holds


def test_offline_falls_back_to_shared_text(capsys):
    articles, sources = iter_articles("de", [], limit=100, base_url="http://127.0.0.1:9", filter_language=False)
    assert any(s.endswith("wikitext") for s in sources)
    titles = {a.title for a in articles}
    assert {"Keilwelle", "BBDO", "Bazooka"} <= titles and "United Kingdom" not in titles  # by language ID
    assert "unreachable" in capsys.readouterr().err


def test_route_inputs():
    assert route_inputs(["en=a.xml.bz2", "de=b", "c"], ["en", "de"]) == {"en": (["a.xml.bz2", "c"], True),
                                                                      "de": (["b", "c"], True)}
    assert route_inputs(["x.txt"], ["en"]) == {"en": (["x.txt"], False)}


def test_train_lm_command_line(shared_data, tmp_path):
    """The CLI on two German articles: CCNet's 65536 vocabulary is shrunk, and it says so."""
    folder = shared_data / "wikipedia" / "wikitext"
    result = subprocess.run(
        [sys.executable, "-m", "jobs.train_lm", "--lang", "de", "--output", str(tmp_path / "lm"),
         "--input", str(folder / "BBDO.txt"), str(folder / "Bazooka.txt"), "memory=32M", "keep_arpa=true"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "too small for a 65536-piece vocabulary" in result.stderr
    manifest = json.loads((tmp_path / "lm" / "manifest.json").read_text())["languages"]["de"]
    assert manifest["articles"] == 2 and manifest["vocab_size"] < 65536
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == ["de.arpa", "de.arpa.bin", "de.sp.model",
                                                                   "manifest.json"]


@pytest.mark.parametrize("bad, message", [("order=five", "order='five': expected an integer"),
                                          ("threads=0", "threads=0: expected a value in [1, ∞]"),
                                          ("vocabulary=8000", "unknown setting vocabulary")])
def test_train_lm_refuses_a_bad_setting_at_once_and_prints_the_effective_ones(bad, message, tmp_path):
    refused = subprocess.run([sys.executable, "-m", "jobs.train_lm", "--lang", "de", "--output", str(tmp_path / "lm"),
                              bad], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    assert refused.returncode == 2 and refused.stderr.startswith(f"error: {message}")
    assert len(refused.stderr.splitlines()) == 1 and not (tmp_path / "lm").exists()
    shown = subprocess.run([sys.executable, "-m", "jobs.train_lm", "--print-settings", "--lang", "en,de", "vocab=8000"],
                           cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert "\nvocab: 8000 " in shown and "\nlang: en,de " in shown
