"""CCNet's two text normalizations (cc_net/text_normalizer.py semantics).

`normalize` is what the perplexity models see; `normalize_for_dedup` is what line dedup hashes.
They differ on purpose: dedup keeps accents and drops unicode punctuation, perplexity strips
accents and maps unicode punctuation to ASCII. `dedup_words_utf8` gives the words of
`normalize_for_dedup` of many texts at once as UTF-8 bytes, for MinHash's native shingles.
"""

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

# Unicode punctuation and its ASCII stand-in, as in cc_net (including its "１" → '"' quirk).
UNICODE_PUNCT = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"',
    "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!",
    "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'",
    "…": "...", "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%", "►": "-",
}  # fmt: skip
# Mapped by one regex scan with a callback on the (rare) hits, and only in non-ASCII texts: a
# `str.translate` looks every character of a non-ASCII text up in a dict, 2x slower in all.
UNICODE_PUNCT_RE = re.compile(f"[{re.escape(''.join(UNICODE_PUNCT))}]")

# C0 and C1 control characters; "\n" and "\t" are among them, so `normalize` joins lines.
NON_PRINTING_CHARS = "".join(map(chr, [*range(0, 32), *range(127, 160)]))
NON_PRINTING_CHARS_RE = re.compile(f"[{re.escape(NON_PRINTING_CHARS)}]")
PUNCT_OR_NON_PRINTING_CHARS_RE = re.compile(
    f"[{re.escape(''.join(UNICODE_PUNCT) + NON_PRINTING_CHARS)}]"
)
DIGIT_RE = re.compile(r"\d")


class NonspacingMarks(dict):
    """`str.translate`'s table that deletes every nonspacing mark (category Mn) of this Python's
    Unicode database, filled as characters are met: a character's category is looked up once per
    process, not the 1.1 million of them at import (0.1-0.2 s in every Spark Python worker)."""

    def __missing__(self, code: int) -> int | None:
        self[code] = value = None if unicodedata.category(chr(code)) == "Mn" else code
        return value


# Marks are deleted only inside runs of non-ASCII characters: the ASCII bulk of most texts is
# skipped by one regex scan instead of a lookup per character (the perplexity stage's hot spot).
NONSPACING_MARKS = NonspacingMarks()
NON_ASCII_RUN_RE = re.compile(r"[^\x00-\x7f]+")


def _strip_marks(run: re.Match) -> str:
    return run.group().translate(NONSPACING_MARKS)


def _ascii_punct(match: re.Match) -> str:
    return UNICODE_PUNCT[match.group()]


def strip_accents(text: str) -> str:
    """Drop combining marks after NFD decomposition (é → e); CJK is untouched."""
    if text.isascii():
        return text
    return NON_ASCII_RUN_RE.sub(_strip_marks, unicodedata.normalize("NFD", text))


def normalize(text: str, accent: bool = True, case: bool = True, numbers: bool = True) -> str:
    """Normalization for the perplexity models: lowercase, accents stripped, digits → 0,
    unicode punctuation mapped to ASCII, non-printing characters (newlines included) removed."""
    text = text.strip()
    if not text:
        return text
    if case:
        text = text.lower()
    if accent:
        text = strip_accents(text)
    if numbers:
        text = DIGIT_RE.sub("0", text)
    if not text.isascii():  # every key of UNICODE_PUNCT is non-ASCII
        text = UNICODE_PUNCT_RE.sub(_ascii_punct, text)
    return NON_PRINTING_CHARS_RE.sub("", text)


def normalize_for_dedup(line: str) -> str:
    """Normalization of one line for line dedup: lowercase, digits → 0, unicode punctuation and
    control characters removed; ASCII punctuation and accents kept."""
    line = line.strip()
    if not line:
        return line
    line = DIGIT_RE.sub("0", line.lower())
    return PUNCT_OR_NON_PRINTING_CHARS_RE.sub("", line)


# ---------------------------------------------------------------------------------------------
# normalize_for_dedup's words at the byte level, for a batch of texts (MinHash's native scheme)

KEEP, SPACE, DIGIT, DELETE = 0, 1, 2, 3
_UNKNOWN = 255
_REMOVED = frozenset(UNICODE_PUNCT) | frozenset(NON_PRINTING_CHARS)


def dedup_char_class(char: str) -> int:
    """What `normalize_for_dedup` (after `str.split`) does with a lowercased character: SPACE (a
    word boundary: str.split's whitespace), DIGIT (→ "0": re's \\d), DELETE (unicode punctuation,
    control characters), or KEEP. Digits first, as normalize_for_dedup maps them before removing."""
    if char.isspace():
        return SPACE
    if DIGIT_RE.match(char):
        return DIGIT
    return DELETE if char in _REMOVED else KEEP


# ASCII in one bytes.translate per text (UTF-8 continuation bytes are never ASCII): whitespace → " ",
# digits → "0", the other control characters deleted; bytes ≥ 0x80 pass through to numpy.
_ASCII_CLASS = [dedup_char_class(chr(c)) for c in range(128)]
_ASCII_MAP = bytes(32 if c < 128 and _ASCII_CLASS[c] == SPACE else 48 if c < 128 and _ASCII_CLASS[c] == DIGIT
                   else c for c in range(256))
_ASCII_DELETE = bytes(c for c in range(128) if _ASCII_CLASS[c] == DELETE)


class _CodepointClasses:
    """`dedup_char_class` of every code point as one uint8 table, each filled when first met (the
    distinct non-ASCII characters of a process are few; classifying all 1.1 million costs seconds)."""

    def __init__(self):
        self.table: np.ndarray | None = None

    def __call__(self, codepoints: np.ndarray) -> np.ndarray:
        if self.table is None:
            self.table = np.full(0x110000, _UNKNOWN, np.uint8)
        classes = self.table[codepoints]
        unknown = classes == _UNKNOWN
        if unknown.any():
            for code in np.unique(codepoints[unknown]).tolist():
                self.table[code] = dedup_char_class(chr(code))
            classes = self.table[codepoints]
        return classes


_CODEPOINT_CLASSES = _CodepointClasses()


def _utf8_codepoints(data: np.ndarray, lead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(code point, length in bytes) of the multi-byte UTF-8 characters starting at `lead`."""
    last = len(data) - 1
    b0 = data[lead].astype(np.uint32)
    b1, b2, b3 = ((data[np.minimum(lead + k, last)] & 0x3F).astype(np.uint32) for k in (1, 2, 3))
    size = 2 + (b0 >= 0xE0) + (b0 >= 0xF0)
    code = np.where(size == 2, (b0 & 0x1F) << 6 | b1,
                    np.where(size == 3, (b0 & 0x0F) << 12 | b1 << 6 | b2,
                             (b0 & 0x07) << 18 | b1 << 12 | b2 << 6 | b3))
    return code, size


def _apply_non_ascii_classes(data: np.ndarray) -> np.ndarray:
    """`data` with its non-ASCII whitespace made b" ", digits b"0", punctuation and controls deleted."""
    lead = np.flatnonzero(data >= 0xC0)
    if not len(lead):
        return data
    codes, size = _utf8_codepoints(data, lead)
    classes = _CODEPOINT_CLASSES(codes)
    special = classes != KEEP
    if not special.any():
        return data
    at, size, classes = lead[special], size[special], classes[special]
    data = data.copy()
    data[at[classes == SPACE]] = 32
    data[at[classes == DIGIT]] = 48
    tails = size - 1  # every special character keeps at most its first byte
    tail_positions = np.repeat(at + 1 - (np.cumsum(tails) - tails), tails) + np.arange(int(tails.sum()))
    return np.delete(data, np.concatenate([at[classes == DELETE], tail_positions]))


def dedup_words_utf8(texts: Sequence[str]) -> np.ndarray:
    """The words of `normalize_for_dedup(" ".join(text.split()))` of every text, as one uint8 array of
    UTF-8: words separated by runs of b" ", each text followed by b"\\n" (so `bytes(result).split(b"\\n")`
    holds each text's words). A few C-level string calls per text and numpy over the batch; no Python
    step per word or character. Lone surrogates pass through (encoded as by "surrogatepass")."""
    parts = [text.lower().encode("utf-8", "surrogatepass").translate(_ASCII_MAP, _ASCII_DELETE) for text in texts]
    parts.append(b"")
    return _apply_non_ascii_classes(np.frombuffer(b"\n".join(parts), np.uint8))
