"""Books (LLaMA: 4.5 %): Project Gutenberg plain texts (`.txt`, `.txt.gz`, `.zip` of them), the PG
header and licence footer removed by their markers, and book-level near-duplicates removed: a book
whose word n-grams are found in another book for more than 90 % is dropped, naming the book kept.

The near-duplicate rule runs across all inputs, so it is pure functions over a small summary per book
(`summarize`: a MinHash signature to find candidates, the hashes of its word n-grams, 1 in
`ngram_sample`, to measure the overlap) for the engine to gather: `near_duplicates(summaries)` →
{dropped book: kept book}. The job stores each book's summary as its run-wide key (`run_wide_steps`:
the step `near_dedup` of kind "near_duplicate_books", `jobs.sources.run_wide`).

Which book of a pair is kept: the larger (more distinct n-grams), so that no text is lost when a book
is held inside a longer one (a collection); but of two releases of the same text (each over the
threshold in the other), the latest release (`gutenberg_release_year`, from the header). Project
Gutenberg corrects a book by releasing it again ("Corrected EDITIONS of our etexts get a new NUMBER",
the 1997 header says): the 2015 release of The Devil's Dictionary fixes the 1997 file's typos
("ingenius", "hatched form", "God keep you, strange"), whose spaced dashes (" -- ") and typos give it
more distinct n-grams, not more text. Ties: the earlier in the run's order (the smaller id).
"""

from __future__ import annotations

import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import xxhash

from curation import archives
from curation.archives import decode_text
from curation.lsh import band_keys
from curation.minhash import MinHasher, optimal_bands_rows, shingle_bytes
from curation.pipeline import Stage
from curation.settings import setting
from curation.sources import RunWideStep, Source


@dataclass(frozen=True)
class BooksSettings:
    """Project Gutenberg books."""
    max_member_bytes: int = setting(64 * 2**20, "a book file (or archive member) over this size is counted and "
                                    "skipped", minimum=1)
    ngram: int = setting(5, "words per n-gram (normalized as MinHash shingles) for the overlap", minimum=1)
    overlap_threshold: float = setting(0.9, "a book whose n-grams are found in another book for more than this "
                                       "share is a near-duplicate of it", minimum=0, maximum=1)
    candidate_threshold: float = setting(0.4, "MinHash LSH finds candidate pairs from about this Jaccard "
                                         "similarity (a book 90 % inside one twice its length: 0.43)",
                                         minimum=0, maximum=1)
    num_perm: int = setting(128, "MinHash permutations", minimum=1)
    seed: int = setting(1, "MinHash permutation seed")
    # 16: a 60,000-n-gram book keeps ~3,700 hashes (30 KB, 8 % of its text) and its overlap's standard
    # error near 0.9 is 0.005 (The Devil's Dictionary's pair: 0.966 against 0.960 exact)
    ngram_sample: int = setting(16, "keep 1 in N n-gram hashes (by value) in a book's summary: 1, the exact "
                                "overlap; N > 1, an estimate from N times less memory", minimum=1)


# ---- reading ---------------------------------------------------------------------------------------

def read_books(location: str, settings: BooksSettings, counts: Counter) -> Iterator[dict]:
    """The books of one input: each `.txt` file in it (a plain file is its only member), CRLF → LF."""
    for member in archives.members(location, settings.max_member_bytes, counts):
        name = posixpath.basename(member.name)
        if not name.lower().endswith(".txt"):
            counts["dropped.not_text"] += 1
            continue
        text = decode_text(member.data).replace("\r\n", "\n")
        yield {"raw_content": text, "book_id": name[:-len(".txt")]}


# ---- boilerplate -----------------------------------------------------------------------------------

# The header ends at "*** START OF THIS/THE PROJECT GUTENBERG EBOOK …" or, in 1990s files, at the end
# of the "Small Print!" ("*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*…"); the footer starts at
# "*** END OF THIS/THE PROJECT GUTENBERG EBOOK …" or "End of (the) Project Gutenberg('s) …", whichever
# comes first (the licence and, in some files, the Small Print follow it).
HEADER_END = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$|^\*+\s*END\*?\s*THE SMALL PRINT.*$",
                        re.M | re.I)
FOOTER_START = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG|^End of (?:the )?Project Gutenberg",
                          re.M | re.I)
EBOOK_NUMBER = re.compile(r"\[E(?:Book|text)\s*#(\d+)\]", re.I)
# "Posting Date: July 26, 2008", "[Last updated: August 22, 2015]", "[Date last updated: January 6, 2007]",
# "Release date: …", "Most recently updated: …": the header's dates of this file's releases
RELEASE_DATE = re.compile(r"^\W*(?:release date|posting date|date last updated|last updated|most recently updated)"
                          r"\s*:([^\n]*)", re.M | re.I)
YEAR = re.compile(r"\b(?:1[89]|20)\d\d\b")


def release_year(header: str) -> int | None:
    """The latest year of the header's release, posting and update dates; None without any."""
    return max((int(year) for line in RELEASE_DATE.finditer(header) for year in YEAR.findall(line[1])), default=None)


def body_bounds(text: str) -> tuple[int, int]:
    """Where the book's own text starts and ends: after the last header marker before the footer, and
    at the footer's first marker (the whole text where they are missing)."""
    footer = FOOTER_START.search(text)
    end = footer.start() if footer else len(text)
    header = None
    for header in HEADER_END.finditer(text, 0, end):
        pass
    return (header.end() if header else 0), end


class BoilerplateStage(Stage):
    """The PG header and footer removed; the ebook number and the year of its latest release read from
    the header."""
    name = "books_boilerplate"
    writes = ("gutenberg_id", "gutenberg_release_year")

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            text = doc["raw_content"]
            start, end = body_bounds(text)
            self.stats["no_header_marker"] += start == 0
            self.stats["no_footer_marker"] += end == len(text)
            body = text[start:end].strip()
            if not body:
                self.drop("empty")
                continue
            number = EBOOK_NUMBER.search(text, 0, start)
            yield {**doc, "raw_content": body + "\n", "gutenberg_id": int(number[1]) if number else None,
                   "gutenberg_release_year": release_year(text[:start])}


def stages(settings: BooksSettings) -> list[Stage]:
    return [BoilerplateStage()]


# ---- book-level near-duplicates --------------------------------------------------------------------

@dataclass(frozen=True)
class BookSummary:
    """What the near-duplicate rule needs of a book."""
    book_id: str  # unique among the books compared (the job names each by its place in the run)
    signature: np.ndarray  # MinHash of its word n-grams: LSH finds candidate pairs
    ngrams: np.ndarray  # its distinct word n-grams' 64-bit hashes, sorted (1 in ngram_sample): the overlap
    release_year: int | None = None  # of its latest release (`gutenberg_release_year`)


def summarize(doc: dict, settings: BooksSettings) -> BookSummary:
    """The summary of a book (after the boilerplate stage): over all its text, not MinHash's first 100k
    characters."""
    shingles = shingle_bytes(doc["raw_content"], settings.ngram, max_chars=None)
    signature = MinHasher(settings.num_perm, settings.seed).signatures_from_shingles([shingles])[0]
    hashes = np.fromiter(map(xxhash.xxh64_intdigest, shingles), dtype=np.uint64, count=len(shingles))
    if settings.ngram_sample > 1:
        hashes = hashes[hashes % np.uint64(settings.ngram_sample) == 0]
    return BookSummary(doc["book_id"], signature, np.unique(hashes), doc.get("gutenberg_release_year"))


def share(a: BookSummary, b: BookSummary) -> float:
    """The share of `a`'s n-grams found in `b` (0 when it has none)."""
    return np.intersect1d(a.ngrams, b.ngrams, assume_unique=True).size / len(a.ngrams) if len(a.ngrams) else 0.0


def overlap(a: BookSummary, b: BookSummary) -> float:
    """The share of the smaller book's n-grams found in the other one (0 when either has none)."""
    return share(a, b) if len(a.ngrams) <= len(b.ngrams) else share(b, a)


def near_duplicates(summaries: Sequence[BookSummary], settings: BooksSettings) -> dict[str, str]:
    """{dropped book id: id of the kept book it duplicates}: `found_in_larger` decides which books go,
    `latest_releases` which release of a text stays (see the module's docstring)."""
    dropped = found_in_larger(summaries, settings)
    return latest_releases(dropped, {book.book_id: book for book in summaries}, settings.overlap_threshold)


def found_in_larger(summaries: Sequence[BookSummary], settings: BooksSettings) -> dict[str, str]:
    """{dropped book id: kept book id}. Books are taken largest first (most n-grams, then smallest id):
    one whose overlap with a kept book sharing an LSH band with it is over `overlap_threshold` is
    dropped, naming the first such (largest) book; else it is kept."""
    bands, rows = optimal_bands_rows(settings.candidate_threshold, settings.num_perm)
    order = sorted(summaries, key=lambda s: (-len(s.ngrams), s.book_id))
    rank = {book.book_id: i for i, book in enumerate(order)}
    buckets: dict[tuple[int, bytes], list[BookSummary]] = {}
    dropped: dict[str, str] = {}
    for book in order:
        keys = list(enumerate(band_keys(book.signature, bands, rows))) if len(book.ngrams) else []
        candidates = {kept.book_id: kept for key in keys for kept in buckets.get(key, ())}
        kept = next((c for c in sorted(candidates.values(), key=lambda c: rank[c.book_id])
                     if overlap(book, c) > settings.overlap_threshold), None)
        if kept is not None:
            dropped[book.book_id] = kept.book_id
            continue
        for key in keys:
            buckets.setdefault(key, []).append(book)
    return dropped


def latest_releases(dropped: dict[str, str], books: dict[str, BookSummary], threshold: float) -> dict[str, str]:
    """`dropped` ({book: the kept book it is found in}), where a kept book's group holds another release
    of its text (a book dropped for it in which it is found over `threshold` too) of a later year: that
    release is kept instead, and the group's other books name it. Ties: the kept book stays."""
    groups: dict[str, list[str]] = {}
    for book, host in dropped.items():
        groups.setdefault(host, []).append(book)
    named = {}
    for host, members in groups.items():
        releases = [host, *(book for book in members if share(books[host], books[book]) > threshold)]
        best = max(releases, key=lambda book: books[book].release_year or 0)  # the first of the latest
        named.update({book: best for book in (host, *members) if book != best})
    return named


# ---- the job's run-wide step: each book's summary stored as its key ---------------------------------

SUMMARY_TYPE = pa.struct([("book_id", pa.string()), ("release_year", pa.int64()),
                          ("signature", pa.list_(pa.uint32())), ("ngrams", pa.list_(pa.uint64()))])


def summary_key(doc: dict, settings: BooksSettings) -> dict:
    """A book's summary as its stored key (SUMMARY_TYPE)."""
    book = summarize(doc, settings)
    return {"book_id": book.book_id, "release_year": book.release_year, "signature": book.signature,
            "ngrams": book.ngrams}


def from_key(key: dict, name: str) -> BookSummary:
    """The summary in a stored key, named `name` (the job names each book by its place in the run: a file
    name may come twice)."""
    return BookSummary(name, np.asarray(key["signature"], np.uint32), np.asarray(key["ngrams"], np.uint64),
                       key["release_year"])


def run_wide_steps(settings: BooksSettings) -> list[RunWideStep]:
    return [RunWideStep("near_dedup", "near_duplicate_books", partial(summary_key, settings=settings), SUMMARY_TYPE,
                        reason="near_duplicate", settings=settings)]


SOURCE = Source(name="books", settings=BooksSettings, read=read_books, stages=stages,
                fields=("book_id", "gutenberg_id", "gutenberg_release_year"), run_wide=run_wide_steps)
