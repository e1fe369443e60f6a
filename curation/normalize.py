"""CCNet's two text normalizations (cc_net/text_normalizer.py semantics).

`normalize` is what the perplexity models see; `normalize_for_dedup` is what line dedup hashes.
They differ on purpose: dedup keeps accents and drops unicode punctuation, perplexity strips
accents and maps unicode punctuation to ASCII.
"""

import re
import unicodedata

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
