"""The document schema: every field a document can carry, listed once.

A document is a plain dict (`curation.pipeline`); this module says which keys it may have, their
Arrow type, the stage that writes each one and what it means. The Parquet schemas of the jobs,
the report's score columns and the README's column table all come from `FIELDS`; each stage
declares the fields it writes (`Stage.writes`), and a field no schema knows is an error, never a
silently dropped column. CCNet's names and meanings are kept (cc_net's output fields, as its own code writes
them: tests/test_ccnet_oracle.py checks them against cc_net); ours follow them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import xxhash


@dataclass(frozen=True)
class Field:
    name: str
    type: pa.DataType
    stage: str  # the stage that writes it
    meaning: str  # one line, for the README's table and the docs
    ccnet: bool = False  # equal to cc_net's field of that name on the same WET input (tests/test_ccnet_oracle.py)


FIELDS: tuple[Field, ...] = (
    Field("url", pa.string(), "read", "the page's URL (WARC-Target-URI)", True),
    Field("date_download", pa.string(), "read", "when CommonCrawl fetched it (WARC-Date)", True),
    Field("digest", pa.string(), "read", "the record's digest (sha1:…; WET: WARC-Block-Digest)", True),
    Field("length", pa.int64(), "extract", "characters of `raw_content` (after line dedup, as cc_net's dedup sets it)",
          True),
    Field("nlines", pa.int64(), "extract", "lines of `raw_content` (after line dedup, as cc_net's dedup sets it)",
          True),
    Field("source_domain", pa.string(), "read", "host of `url`, lowercased (cc_net: as written)"),
    Field("title", pa.string(), "extract", "the page's title (WET: the record's first line, stripped)", True),
    Field("raw_content", pa.string(), "extract", "the text, one block a line, stripped, title line apart (after line "
          "dedup in `curated/`)", True),
    Field("original_nlines", pa.int64(), "extract", "lines of `raw_content` as read, before line dedup", True),
    Field("original_length", pa.int64(), "extract", "UTF-8 bytes of title line + text as read (WET: Content-Length)",
          True),
    Field("cc_segment", pa.string(), "read", "the CommonCrawl file it came from (from `crawl-data/` on)", True),
    Field("language", pa.string(), "langid", "fastText lid.176 top-1 label", True),
    Field("language_score", pa.float64(), "langid", "its probability, rounded to 2 decimals", True),
    Field("perplexity", pa.float64(), "perplexity", "KenLM perplexity on Wikipedia's model (-1: no model)", True),
    Field("bucket", pa.string(), "perplexity", "head / middle / tail by the language's p30/p60 (all: no model)", True),
    Field("wikiref_score", pa.float64(), "wikiref", "P(page is like those Wikipedia cites), fastText"),
    Field("wikiref_keep", pa.bool_(), "wikiref", "wikiref_score ≥ wikiref.threshold"),
    Field("c4_lines_removed_long_word", pa.int64(), "c4", "lines removed for a word longer than max_word_length"),
    Field("c4_lines_removed_punctuation", pa.int64(), "c4", "lines removed for not ending in terminal punctuation"),
    Field("c4_lines_removed_short", pa.int64(), "c4", "lines removed for having fewer than min_words_per_line words"),
    Field("c4_lines_removed_javascript", pa.int64(), "c4", "lines removed for containing 'javascript'"),
    Field("c4_lines_removed_policy", pa.int64(), "c4", "lines removed for a cookie/terms-of-use/privacy-policy phrase"),
    Field("c4_citations_removed", pa.int64(), "c4", "citation markers ([1], [edit], [citation needed]) cut out"),
    Field("c4_sentences", pa.int64(), "c4", "sentences in the text C4's rules keep"),
    Field("c4_lorem_ipsum", pa.bool_(), "c4", "a line that passed the line rules contains 'lorem ipsum'"),
    Field("c4_curly_bracket", pa.bool_(), "c4", "a line that passed the line rules contains '{'"),
    Field("c4_badword", pa.bool_(), "c4", "the kept text has an LDNOOBW word of its language (null: no list)"),
    Field("c4_keep", pa.bool_(), "c4", "the document passes every C4 rule (what c4.filter=true keeps)"),
    Field("minhash_cluster", pa.int64(), "minhash", "near-duplicate cluster id (its smallest document id)"),
    Field("minhash_cluster_size", pa.int64(), "minhash", "documents in that cluster before dedup"),
)
# The columns of LLaMA's other sources (`curation.sources`): every document's `source`, then each
# source's own fields (stage: the source's name), in `DIR/documents/` of `python -m jobs.sources.NAME`.
SOURCE_FIELDS: tuple[Field, ...] = (
    Field("source", pa.string(), "source", "the source a document comes from (github, wikipedia, books, arxiv, "
          "stackexchange)"),
    Field("repository", pa.string(), "github", "the repository a file comes from (an archive's top folder, "
          "`name-ref` as GitHub serves it, or an export's repo)"),
    Field("path", pa.string(), "github", "the file's path inside its repository"),
    Field("programming_language", pa.string(), "github", "the file's language by its extension or name (GitHub "
          "Linguist's names: C, Python, Markdown, Makefile, …)"),
    Field("license", pa.string(), "github", "the repository's licence, an SPDX id (export field, or its licence file "
          "by askalono); NOASSERTION: a licence file no licence matched"),
    Field("content_hash", pa.string(), "github", "XXH3-128 of the cleaned text (hex): the key of exact file "
          "dedup"),
    Field("page_id", pa.int64(), "wikipedia", "the page's id in its wiki (`<page><id>`; null: a wikitext file's page)"),
    Field("arxiv_id", pa.string(), "arxiv", "the paper's id: its bulk-tar member's, archive's or folder's name"),
    Field("arxiv_main_file", pa.string(), "arxiv", "the paper's main file (the one with \\documentclass)"),
    Field("arxiv_unresolved_inputs", pa.int64(), "arxiv", "\\input/\\include left as written: a file missing, "
          "outside the paper or in a cycle"),
    Field("book_id", pa.string(), "books", "the book's file name without .txt"),
    Field("gutenberg_id", pa.int64(), "books", "its Project Gutenberg ebook number, from the header (null: none)"),
    Field("gutenberg_release_year", pa.int64(), "books", "the year of its latest release, posting or update, from the "
          "header (null: none): of two releases of a book, the later is kept"),
    Field("site", pa.string(), "stackexchange", "the Stack Exchange site, as the dump names it (superuser.com)"),
    Field("question_id", pa.int64(), "stackexchange", "the question's post id on its site"),
    Field("score", pa.int64(), "stackexchange", "the question's score (up votes less down votes)"),
    Field("tags", pa.list_(pa.string()), "stackexchange", "the question's tags"),
    Field("answer_ids", pa.list_(pa.int64()), "stackexchange", "its answers' post ids, in the document's order"),
    Field("answer_scores", pa.list_(pa.int64()), "stackexchange", "its answers' scores, in the document's order "
          "(highest first)"),
)
BY_NAME = {field.name: field for field in (*FIELDS, *SOURCE_FIELDS)}

# Phase 1 writes these per segment (reader + extraction); phase 2 adds the rest.
EXTRACTED = ("url", "date_download", "digest", "length", "nlines", "source_domain", "title", "raw_content",
             "original_nlines", "original_length", "cc_segment")
# Numeric columns the report plots (besides `language`), in the order it shows them.
SCORES = ("length", "perplexity", "bucket", "wikiref_score", "minhash_cluster_size")


def arrow_schema(names) -> pa.Schema:
    """The Arrow schema of these fields, in this order."""
    return pa.schema([(name, field(name).type) for name in names])


def field(name: str) -> Field:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"field {name!r} is not in curation.schema.FIELDS: add it there") from None


def ordered(names) -> list[str]:
    """These fields in the schema's order (checked: all known)."""
    names = set(names)
    for name in names:
        field(name)
    return [f.name for f in (*FIELDS, *SOURCE_FIELDS) if f.name in names]


def written_by(stage: str) -> tuple[str, ...]:
    """The fields a stage writes first, in schema order."""
    return tuple(f.name for f in (*FIELDS, *SOURCE_FIELDS) if f.stage == stage)


def check_document(doc: dict, internal: frozenset[str] = frozenset()) -> None:
    """A document with a key the schema does not know (other than the engine's `internal` ones)."""
    unknown = doc.keys() - BY_NAME.keys() - internal
    if unknown:
        raise KeyError(f"document fields {sorted(unknown)} are not in curation.schema.FIELDS: add them there")


def doc_id(url: str | None, raw_content: str | None) -> int:
    """A document's identity, from its URL and text as read: Spark's `xxhash64(url, raw_content)`
    (XXH64, seed 42, each non-null column's UTF-8 bytes hashed with the previous hash as the seed),
    so Python tasks and Spark expressions (`jobs.minhash.with_doc_id`) give the same id."""
    seed = 42
    for value in (url, raw_content):
        if value is not None:
            seed = xxhash.xxh64_intdigest(value.encode("utf-8"), seed)
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def markdown_table() -> str:
    """The README's column table."""
    rows = ["| column | type | written by | = cc_net | meaning |", "|---|---|---|---|---|"]
    rows += [f"| `{f.name}` | {f.type} | {f.stage} | {'yes' if f.ccnet else ''} | {f.meaning} |" for f in FIELDS]
    return "\n".join(rows)
