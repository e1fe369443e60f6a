"""CCNet line dedup (cc_net/dedup.py semantics), without Spark.

Every `\\n` line is normalized with `normalize_for_dedup` and hashed (SHA-1, first 8 bytes). Within
a dedup group (cc_net: the documents of 50 of a snapshot's 1,600 shards, 1/32 of it), a line hash
found in more than one document is a duplicate: it is removed from every document, the first one
included. A line repeated inside a single document only keeps its first copy. Documents left with
no line are dropped (cc_net); `min_length_after` can drop short ones too. `length`/`nlines` become
the characters and lines left; `original_length`/`original_nlines` keep (or, when missing, get) the
values as read. The 300-character floor is the extract stage's, on the text as read (cc_net's
reader); `min_length` here applies it to documents that did not go through it.

Two passes, as cc_net's `hashes` and `mine` steps: the group's duplicated hashes are found first
(`document_counts` of each part of the group, e.g. a segment, merged by `duplicated_hashes`: memory
is the distinct hashes of the group, as cc_net's in-memory set), then each document's duplicated
lines are removed on its own (`DuplicateLinesRemover`, `apply_dedup`). `jobs.curate` stores each
document's hashes in phase 1 (`line_hash_column`) and runs the second pass in its phase-2 tasks;
`LineDedupStage` runs both passes over one group in one process, and `jobs.dedup.line_dedup` (one
Spark task per group) holds a group's hashes in `GroupDedup`. All use `apply_dedup`, so the rules
live here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curation.normalize import DIGIT_RE, NON_PRINTING_CHARS, UNICODE_PUNCT, normalize_for_dedup
from curation.pipeline import Stage
from curation.settings import setting

HASH_SIZE = 8
LINE_HASHES = "_line_hashes"  # a document's `document_hashes`, stored beside its text by phase 1
# `normalize_for_dedup`'s removals, minus the newline: applied to a whole text, lines stay apart.
_REMOVED_KEEP_NEWLINE_RE = re.compile(
    f"[{re.escape(''.join(UNICODE_PUNCT) + NON_PRINTING_CHARS.replace(chr(10), ''))}]")


@dataclass(frozen=True)
class LineDedupSettings:
    """CCNet line dedup."""
    enabled: bool = setting(True, "CCNet line dedup within groups of segments, before language ID")
    group_size: int = setting(2800, "segments per dedup group (cc_net: 1/32 of a snapshot's ~90,000 segments); "
                              "0: the whole run is one group", minimum=0)
    min_length_after: int = setting(0, "drop documents shorter than this after dedup; 0: only those left with no "
                                    "line (cc_net); 300: the floor once more", minimum=0)


def line_hash(line: str) -> int:
    """First 8 bytes of SHA-1 of the normalized line, as a signed 64-bit integer (Spark's LongType)."""
    digest = hashlib.sha1(normalize_for_dedup(line).encode("utf-8")).digest()
    return int.from_bytes(digest[:HASH_SIZE], "little", signed=True)


def document_hashes(text: str) -> np.ndarray:
    """`line_hash` of every line of a text, in order (int64), normalizing the whole text at once:
    each line stripped first, as `normalize_for_dedup` does, then one pass of each rule."""
    text = "\n".join([line.strip() for line in text.split("\n")]).lower()
    text = _REMOVED_KEEP_NEWLINE_RE.sub("", DIGIT_RE.sub("0", text))
    sha1 = hashlib.sha1
    # Encoded once: a UTF-8 "\n" is one byte, never inside another character's bytes.
    digests = b"".join([sha1(line).digest()[:HASH_SIZE] for line in text.encode("utf-8").split(b"\n")])
    return np.frombuffer(digests, dtype="<i8")


def apply_dedup(doc: dict, hashes: np.ndarray, duplicated: np.ndarray, min_length: int = 0,
                min_length_after: int = 0) -> tuple[dict, str | None, int]:
    """Line dedup of one document given its line hashes and the group's duplicated hashes (sorted):
    (the document with its new text and lengths, the reason to drop it or None, lines removed).
    The one place of the drop rules, for every engine."""
    text = doc.get("raw_content") or ""
    lines = text.split("\n")
    out = dict(doc)
    if out.get("original_length") is None:
        out["original_length"] = len(text)
    if out.get("original_nlines") is None:
        out["original_nlines"] = len(lines)
    if len(text) < min_length:  # a floor on the text as read: such documents count for nothing
        return out, "too_short", 0
    found = np.searchsorted(duplicated, hashes)
    dropped = (found < len(duplicated)) & (duplicated[np.minimum(found, len(duplicated) - 1)] == hashes) \
        if len(duplicated) else np.zeros(len(hashes), bool)
    if dropped.all():  # every line is in another document (boilerplate): no loop over the lines
        kept: list[str] = []
    elif not dropped.any() and len(np.unique(hashes)) == len(hashes):  # nothing to remove
        kept = lines
    else:
        seen: set[int] = set()
        kept = []
        for line, h, dup in zip(lines, hashes.tolist(), dropped.tolist()):
            if not dup and h not in seen:
                kept.append(line)
            seen.add(h)
    new_text = "\n".join(kept)
    out.update(raw_content=new_text, length=len(new_text), nlines=len(kept))
    removed = len(lines) - len(kept)
    if not new_text:  # no line left (or only an empty one: cc_net's language ID drops those)
        return out, "empty", removed
    if len(new_text) < min_length_after:
        return out, "too_short", removed
    return out, None, removed


def document_counts(documents: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted distinct hashes of `documents` (each a document's line hashes), in how many of the
    documents each one is): a part of a group, e.g. one segment, reduced for `duplicated_hashes`."""
    distinct = [np.unique(hashes) for hashes in documents]
    return np.unique(np.concatenate([np.zeros(0, np.int64), *distinct]), return_counts=True)


def duplicated_hashes(parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The group rule: the sorted hashes found in more than one document of the group, from the
    `document_counts` of its parts."""
    parts = list(parts)
    values = np.concatenate([np.zeros(0, np.int64), *(values for values, _ in parts)])
    counts = np.concatenate([np.zeros(0, np.int64), *(counts for _, counts in parts)])
    distinct, where = np.unique(values, return_inverse=True)
    return distinct[np.bincount(where, weights=counts, minlength=len(distinct)) > 1]


def line_hash_column(texts: list[str | None]) -> pa.ListArray:
    """`document_hashes` of each text, as an Arrow column (phase 1 stores it as `LINE_HASHES`)."""
    documents = [document_hashes(text or "") for text in texts]
    offsets = np.zeros(len(documents) + 1, np.int32)
    np.cumsum([len(hashes) for hashes in documents], out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate([np.zeros(0, np.int64), *documents])))


def hashes_of(column: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """The documents' hash arrays of a `line_hash_column` (views, no copy per document)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    values = column.values.to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy()
    return [values[start:stop] for start, stop in zip(offsets[:-1], offsets[1:])]


def group_hashes(text: str | None, min_length: int = 0) -> np.ndarray:
    """A document's line hashes as its group counts them: none for a text under the floor."""
    text = text or ""
    return document_hashes(text) if len(text) >= min_length else np.zeros(0, np.int64)


class GroupDedup:
    """One dedup group: `add` each document's text (first pass), then `apply` to each document in
    the same order (second pass). Holds the hashes, never the texts."""

    def __init__(self, min_length: int = 0, min_length_after: int = 0):
        self.min_length, self.min_length_after = min_length, min_length_after
        self._hashes: list[np.ndarray] = []
        self._duplicated: np.ndarray | None = None
        self._next = 0

    def add(self, text: str | None) -> None:
        self._hashes.append(group_hashes(text, self.min_length))

    def duplicated(self) -> np.ndarray:
        """Sorted hashes found in more than one document of the group."""
        if self._duplicated is None:
            self._duplicated = duplicated_hashes([document_counts(self._hashes)])
        return self._duplicated

    def apply(self, doc: dict) -> tuple[dict, str | None, int]:
        """`apply_dedup` on the next document added."""
        duplicated, hashes = self.duplicated(), self._hashes[self._next]
        self._hashes[self._next] = None  # freed as the second pass goes
        self._next += 1
        return apply_dedup(doc, hashes, duplicated, self.min_length, self.min_length_after)


class DuplicateLinesRemover(Stage):
    """cc_net's second pass (its `DuplicatesRemover`): each document's lines whose hash is in its
    group's `duplicated` set (made by `duplicated_hashes` over the whole group) are removed. A
    document's hashes are taken from its `LINE_HASHES` field when phase 1 stored them, else computed."""

    name = "line_dedup"
    writes = ("raw_content", "length", "nlines", "original_length", "original_nlines")

    def __init__(self, duplicated: np.ndarray, settings: LineDedupSettings = LineDedupSettings(), min_length: int = 0):
        super().__init__()
        self.duplicated, self.settings, self.min_length = duplicated, settings, min_length

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        for doc in docs:
            hashes = doc.pop(LINE_HASHES, None)
            if hashes is None:
                hashes = document_hashes(doc.get("raw_content") or "")
            out, reason, removed = apply_dedup(doc, hashes, self.duplicated, self.min_length,
                                               self.settings.min_length_after)
            self.stats["lines_in"] += out["original_nlines"]
            self.stats["lines_removed"] += removed
            if reason:
                self.drop(reason)
            else:
                yield out


class LineDedupStage(DuplicateLinesRemover):
    """Single-process line dedup of all documents given, as one group: both passes, the documents
    held in memory."""

    def __init__(self, settings: LineDedupSettings = LineDedupSettings(), min_length: int = 0):
        super().__init__(np.zeros(0, np.int64), settings, min_length)

    def process(self, in_docs: Iterable[dict]) -> Iterator[dict]:
        docs = list(in_docs)
        hashes = [group_hashes(doc.get("raw_content"), self.min_length) for doc in docs]
        self.duplicated = duplicated_hashes([document_counts(hashes)])
        yield from super().process({**doc, LINE_HASHES: doc_hashes} for doc, doc_hashes in zip(docs, hashes))
