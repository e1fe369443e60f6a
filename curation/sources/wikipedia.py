"""LLaMA's Wikipedia (LLaMA paper, section 2.1): the `pages-articles` dumps of 20 languages, with
hyperlinks, comments and other formatting boilerplate removed.

An input is one MediaWiki XML dump (`{lang}wiki-{date}-pages-articles[-multistream].xml[.bz2]`),
read by the project's one Wikipedia reader (`curation.wikipedia.read_pages`: expat, streamed, no
DTD and so no entity ever expanded), or one article's raw wikitext in a file of its own (any other
name: `Raith-Rovers.txt`, as `make lm` reads them; title from the name, no page id). The wiki's
language is the dump's `xml:lang` (else its `dbname`, else the file's name); a wikitext file does not
say it: `wikitext_language` does. An input of a language not in `languages` is passed over after its
first page (counted once, `dropped.language_not_selected`). Redirects and pages outside the
article namespace are counted and skipped by the reader; the text stage turns wikitext into plain
text with mwparserfromhell (`curation.wikitext.wikitext_to_text`: no link markup, templates,
comments, tables, `<ref>`s, nor the reference and link sections at the end).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from curation import wikipedia
from curation.pipeline import Stage
from curation.settings import setting
from curation.sources import Source
from curation.wikitext import wikitext_to_text

# The LLaMA paper's 20 languages (Latin or Cyrillic script).
LLAMA_LANGUAGES = ["bg", "ca", "cs", "da", "de", "en", "es", "fr", "hr", "hu", "it", "nl", "pl", "pt", "ro", "ru",
                   "sl", "sr", "sv", "uk"]
# `enwiki-20230101-pages-articles-multistream.xml.bz2`, `zh_yuewiki-latest-…`: the wiki's database name.
DUMP_NAME_RE = re.compile(r"(?:^|/)([a-z][a-z_]*?)wiki-[^/]*$")


@dataclass(frozen=True)
class WikipediaSettings:
    """Which wikis and pages are read."""
    languages: list[str] = setting(LLAMA_LANGUAGES, "the wikis' languages kept (LLaMA's 20); an input of another "
                                   "language is skipped whole")
    namespaces: list[int] = setting([0], "MediaWiki namespaces kept (0: articles)")
    wikitext_language: str = setting("en", "the wiki language of the inputs that are raw wikitext files, not "
                                     "dumps (a file does not say it)")


def dump_name_language(location: str) -> str | None:
    """The language in a dump's file name (`dewiki-…` → `de`), None when the name does not say."""
    found = DUMP_NAME_RE.search(location)
    return found.group(1).replace("_", "-") if found else None


def read_pages(location: str, settings: WikipediaSettings) -> Iterator[tuple[wikipedia.Page, str | None]]:
    """The pages of one input, dump or wikitext file, each with its wiki's language."""
    if not wikipedia.is_xml_dump(location):
        yield wikipedia.read_wikitext_page(location), settings.wikitext_language
        return
    named = dump_name_language(location)
    for page in wikipedia.read_pages(location):
        yield page, page.language or named


def read_dump(location: str, settings: WikipediaSettings, counts: Counter) -> Iterator[dict]:
    """The article pages of one input, each a document with its wikitext as `raw_content`."""
    for page, language in read_pages(location, settings):
        if language not in settings.languages:
            counts["dropped.language_not_selected"] += 1  # once: the rest of the dump is not read
            return
        if page.redirect:
            counts["dropped.redirect"] += 1
        elif page.namespace not in settings.namespaces:
            counts["dropped.not_article"] += 1
        else:
            yield {"raw_content": page.wikitext, "title": page.title, "language": language, "page_id": page.page_id}


class WikitextToText(Stage):
    """Wikitext to plain text, one paragraph a line; a page left with no text is dropped (`empty`)."""

    name = "wikitext"
    writes = ("raw_content",)

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            doc["raw_content"] = wikitext_to_text(doc["raw_content"])
            if doc["raw_content"]:
                yield doc
            else:
                self.drop("empty")


def stages(settings: WikipediaSettings) -> list[Stage]:
    return [WikitextToText()]


SOURCE = Source(name="wikipedia", settings=WikipediaSettings, read=read_dump, stages=stages,
                fields=("title", "language", "page_id"))
