"""Cited-URL extraction and URL keys on the real shared wikitext and XML dump."""

import subprocess
import sys

import pytest

from curation.wikipedia import read_wikitext
from curation.wikiref import article_passages, cited_url_keys, cited_urls, url_key

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("url, key", [
    ("HTTPS://WWW.Example.org:443/a/b/?utm_source=x&b=2&a=1#top", "example.org/a/b?a=1&b=2"),
    ("http://example.org", "example.org"),
    ("http://example.org/", "example.org"),
    ("//www2.example.org/x//y/?fbclid=abc", "example.org/x/y"),
    ("http://example.org:8080/p?q=1&gclid=z", "example.org:8080/p?q=1"),
    ("https://web.archive.org/web/20140729194902/http://www.magakernow.org.uk/pdf/placename_masterlist.pdf",
     "magakernow.org.uk/pdf/placename_masterlist.pdf"),
    ("http://example.org/a%20b/Case", "example.org/a b/Case"),
    ("ftp://example.org/file", None),
    ("mailto:someone@example.org", None),
    ("http://localhost/x", None),
])
def test_url_key(url, key):
    assert url_key(url) == key


def test_same_page_same_key():
    assert url_key("http://www.bbc.co.uk/news/uk-123/") == url_key("https://bbc.co.uk/news/uk-123#x")


@pytest.mark.parametrize("article, keys, first", [
    ("Bodmin", 38, "magakernow.org.uk/pdf/placename_masterlist.pdf"),
    ("BBDO", 4, None),
    ("Chemical-biology", 6, None),
    ("Elizabeth-Gilbert", 38, None),
    ("Mozilla-Firefox", 132, None),
])
def test_cited_urls_in_shared_wikitext(shared_data, article, keys, first):
    text = (shared_data / "wikipedia" / "wikitext" / f"{article}.txt").read_text()
    found = cited_url_keys(text)
    assert len(found) == keys
    assert len(set(found)) == len(found)
    if first:
        assert found[0] == first


def test_cite_templates_refs_and_bare_links():
    text = ("A<ref>{{cite web|url=http://www.a.org/x/|title=T|archive-url=https://web.archive.org/web/1/http://a.org/x}}</ref>"
            " B<ref>[http://b.org/page?utm_medium=m Title]</ref> C http://c.org/bare. "
            "D<ref name=n>{{cite book|chapter-url=https://d.org/ch|author-link=Someone}}</ref>"
            "<!-- http://commented.org/out -->")
    assert cited_url_keys(text) == ["a.org/x", "d.org/ch", "b.org/page", "c.org/bare"]
    assert "http://www.a.org/x/" in cited_urls(text)


def test_all_shared_wikitext(shared_data):
    files = sorted((shared_data / "wikipedia" / "wikitext").glob("*.txt"))
    assert len(files) == 71
    keys = set()
    for path in files:
        keys.update(cited_url_keys(path.read_text()))
    # 1,736 URL occurrences in the files (archive copies and repeats included) → 1,516 distinct keys.
    assert len(keys) == 1516


def test_extract_urls_cli_on_xml_dump(shared_data):
    dump = shared_data / "wikipedia" / "en" / "enwiki-pages-articles-sample.xml.bz2"
    pages = list(read_wikitext([dump]))
    assert len(pages) == 2  # 3 pages, one a redirect
    out = subprocess.run([sys.executable, "-m", "curation.wikiref", "extract-urls", str(dump)],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
    assert len(out) == 84 and len(set(out)) == 84  # the 84 URLs the data README counts
    assert all("://" not in key and not key.startswith("www.") for key in out)


def test_article_passages_are_prose(shared_data):
    text = (shared_data / "wikipedia" / "wikitext" / "Bodmin.txt").read_text()
    passages = article_passages(text)
    assert len(passages) >= 5
    assert all(len(p) >= 300 for p in passages)
    joined = "\n".join(passages)
    assert "Bodmin" in joined and "{{" not in joined and "<ref" not in joined and "http" not in joined
