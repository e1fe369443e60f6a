"""CCNet line dedup (cc_net/dedup.py semantics), without Spark.

Every `\\n` line is normalized with `normalize_for_dedup` and hashed (SHA-1, first 8 bytes). Over
the dedup scope, a line hash found in more than one document is a duplicate: it is removed from
every document, the first one included. A line repeated inside a single document only keeps its
first copy. Documents shorter than the length floor (300 characters) are dropped before counting
(CCNet drops them before dedup), and so are documents left empty or under the floor after it.
`length`/`nlines` are updated; `original_length`/`original_nlines` keep (or, when missing, get) the
values before dedup.

The counting across the scope is the engine's job: `LineDedupStage` does it in memory for one
process (the reference), `jobs.dedup.line_dedup` with a Spark shuffle; both call `dedup_document`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from curation.extract import ExtractSettings
from curation.normalize import normalize_for_dedup
from curation.pipeline import Stage
from curation.settings import setting

HASH_SIZE = 8
# The length floor is CCNet's one, `extract.min_length`: applied before counting and after dedup.
MIN_LENGTH = ExtractSettings.min_length


@dataclass(frozen=True)
class LineDedupSettings:
    """CCNet line dedup."""
    enabled: bool = setting(True, "CCNet line dedup over the whole run, before language ID")


def line_hash(line: str) -> int:
    """First 8 bytes of SHA-1 of the normalized line, as a signed 64-bit integer (Spark's LongType)."""
    digest = hashlib.sha1(normalize_for_dedup(line).encode("utf-8")).digest()
    return int.from_bytes(digest[:HASH_SIZE], "little", signed=True)


def document_hashes(text: str) -> list[int]:
    """The hash of every line of a text, in order."""
    return [line_hash(line) for line in text.split("\n")]


def distinct_hashes(text: str) -> set[int]:
    """The distinct line hashes of a text: what a document contributes to the scope's counts."""
    return set(document_hashes(text))


def dedup_document(text: str, duplicates: Collection[int]) -> tuple[str, int, int]:
    """Removes the lines whose hash is in `duplicates` and the repeats of a line inside the text.
    Returns (new text, lines kept, lines removed)."""
    seen: set[int] = set()
    kept: list[str] = []
    lines = text.split("\n")
    for line in lines:
        h = line_hash(line)
        if h in duplicates or h in seen:
            continue
        seen.add(h)
        kept.append(line)
    return "\n".join(kept), len(kept), len(lines) - len(kept)


def apply_dedup(doc: dict, duplicates: Collection[int], min_length: int = MIN_LENGTH) -> tuple[dict, str | None, int]:
    """Line dedup of one document: (the document with its new text and lengths, the reason to drop
    it or None, lines removed). The one place of the drop rules, for every engine."""
    text = doc.get("raw_content") or ""
    out = dict(doc)
    if out.get("original_length") is None:
        out["original_length"] = len(text)
    if out.get("original_nlines") is None:
        out["original_nlines"] = len(text.split("\n"))
    if len(text) < min_length:  # CCNet drops these before dedup: they count for nothing
        out.update(raw_content=text, length=len(text), nlines=len(text.split("\n")))
        return out, "too_short", 0
    new_text, nlines, removed = dedup_document(text, duplicates)
    out.update(raw_content=new_text, length=len(new_text), nlines=nlines)
    if not new_text.strip():
        return out, "empty", removed
    if len(new_text) < min_length:
        return out, "too_short", removed
    return out, None, removed


class LineDedupStage(Stage):
    """Single-process line dedup over all documents given (one scope); holds them in memory."""

    name = "line_dedup"
    writes = ("raw_content", "length", "nlines", "original_length", "original_nlines")

    def __init__(self, min_length: int = MIN_LENGTH):
        super().__init__()
        self.min_length = min_length

    def process(self, in_docs: Iterable[dict]) -> Iterator[dict]:
        docs = []
        for doc in in_docs:  # CCNet drops short documents before dedup: they count for nothing
            if len(doc.get("raw_content") or "") < self.min_length:
                self.drop("too_short")
            else:
                docs.append(doc)
        counts: Counter = Counter()
        for doc in docs:
            counts.update(distinct_hashes(doc.get("raw_content") or ""))
        duplicates = {h for h, n in counts.items() if n > 1}
        for doc in docs:
            out, reason, removed = apply_dedup(doc, duplicates, self.min_length)
            self.stats["lines_removed"] += removed
            if reason:
                self.drop(reason)
            else:
                yield out
