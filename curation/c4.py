"""C4's quality rules as a stage: the cleaning of the T5 paper (Raffel et al. 2020, section 2.2), with the
details of the code that built C4 (TensorFlow datasets' `c4_utils.clean_page` and its bad-words filter).

Per line (`\\n`-separated, stripped; blank lines are left out and counted nowhere), in this order; a line
removed by a rule is counted under that rule only:
1. `max_word_length`: a line with a whitespace-separated word longer than this is removed (`long_word`).
2. `remove_citations`: Wikipedia citation markers `[1]`, `[]`, `[edit]`, `[citation needed]` are cut out.
3. `terminal_punctuation`: a line must end in `.` `?` `!` `"` (zh/ja/th also `。` `！` `？`), not in `...`
   (`punctuation`).
4. `min_words_per_line`: a line needs this many whitespace-separated words (`short`).
5. `lorem_ipsum`: a line left so far containing "lorem ipsum" marks the page.
6. `javascript`: a line containing "javascript" (any case) is removed (`javascript`).
7. `curly_bracket`: a line left so far containing `{` marks the page.
8. `policy`: a line containing "terms of use", "privacy policy", "cookie policy", "uses cookies", "use of
   cookies" or "use cookies" (any case) is removed (`policy`).
The lines left are the cleaned text. Per page: it fails if marked by lorem ipsum or a curly bracket (as in
C4, only lines that reached that rule count: a `{` in a menu line without punctuation does not), if its
cleaned text has fewer than `min_sentences` sentences, if the cleaned text contains a word of the LDNOOBW
list for its language (C4 applies that list to the cleaned text too), or if no line is left.

Sentences: C4 counts them with NLTK's punkt per kept line; here, without a model to download, a kept line
counts its runs of `.`/`!`/`?` (plus closing quotes or brackets) followed by a space or the line end, and
at least 1 (punkt never gives 0 for a line). The defaults are the paper's and C4's code: 5 words per line,
3 sentences per page (datatrove's C4QualityFilter swaps them: 3 words, 5 sentences).

Languages written without spaces (zh, ja, th, from the document's `language` set by language ID):
- "words" per line are the line's non-space characters divided by `chars_per_word` (default 2, about one
  Chinese or Japanese word), so the default line needs 10 characters;
- `。！？` end a line and count as sentence ends (each run once), besides the ASCII marks;
- the long-word rule is skipped (a whole paragraph is one "word" there);
- bad words match as substrings, as C4 does, with C4's allow-list (ja: sm, グロ, 女の子; zh: 性), words
  so common that the list would otherwise remove >10 % of the pages.
Thai has no sentence punctuation, so the punctuation rule removes most Thai lines (mC4 dropped this rule for
that reason); turn `terminal_punctuation` off for Thai-heavy runs.
Other languages match bad words as whole words on the lowercased text: the word must be flanked by non-word
characters or the text's ends (C4's `(?:\\W|^)word(?:\\W|$)`). A language without a list skips the rule
(`c4_badword` is null) and is counted in the stats as `badwords_no_list.<language>`.

The lists are LDNOOBW's (CC BY 4.0), shipped in `curation/data/ldnoobw/`, entries lowercased (C4 compared
the lowercased text with the lists as written, so their capitalised entries never matched); lid.176's `tl`
uses the `fil` list.

`C4Settings.filter` false (the default) annotates only: every document passes with the `c4_*` signals
(`curation.schema`)
and `c4_keep`, its text unchanged. True drops the documents without `c4_keep` (counted by reason) and
replaces `raw_content` with the cleaned text, updating `length` and `nlines`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from curation import schema
from curation.pipeline import Stage
from curation.settings import setting

END_MARKS = (".", "?", "!", '"')
CJK_END_MARKS = ("。", "！", "？")
ELLIPSIS = "..."
CITATION_RE = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
SENTENCE_END_RE = re.compile(r"[.!?][.!?\"'”’»)\]]*(?:\s|$)")
CJK_SENTENCE_END_RE = re.compile(r"[。！？]+|[.!?][.!?\"'”’»)\]]*(?:\s|$)")
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th"})
BADWORDS_ALLOWLIST = {"ja": frozenset({"sm", "グロ", "女の子"}), "zh": frozenset({"性"})}
BADWORDS_LANGUAGE = {"tl": "fil"}  # lid.176 says Tagalog where LDNOOBW says Filipino
WORD_RE = re.compile(r"\w+")
LINE_REASONS = ("long_word", "punctuation", "short", "javascript", "policy")
LINE_COUNTERS = tuple((f"c4_lines_removed_{reason}", f"lines_removed.{reason}") for reason in LINE_REASONS)

@dataclass(frozen=True)
class C4Settings:
    """C4's quality rules (T5 paper, section 2.2; tfds' c4_utils); 0 or false turns a rule off."""
    filter: bool = setting(False, "true: drop failing documents and write the cleaned text; false: annotate only")
    remove_citations: bool = setting(True, "cut [1], [edit], [citation needed] out of lines first")
    terminal_punctuation: bool = setting(True, 'keep only lines ending in . ? ! " (zh/ja/th also 。！？), not "..."')
    min_words_per_line: int = setting(5, "remove lines with fewer words (zh/ja/th: see chars_per_word)", minimum=0)
    chars_per_word: int = setting(2, "zh/ja/th: a line's words = its non-space characters / this", minimum=1)
    max_word_length: int = setting(1000, "remove lines with a longer word (not for zh/ja/th)", minimum=0)
    javascript: bool = setting(True, 'remove lines containing "javascript"')
    policy: bool = setting(True, "remove lines with a cookie / terms-of-use / privacy-policy phrase")
    min_sentences: int = setting(3, "the page fails with fewer sentences in its cleaned text", minimum=0)
    lorem_ipsum: bool = setting(True, 'the page fails if a line that passed the line rules has "lorem ipsum"')
    curly_bracket: bool = setting(True, 'the page fails if a line that passed the line rules has "{"')
    badwords: bool = setting(True, "the page fails if its cleaned text has a word of its language's LDNOOBW list")


def badwords_dir() -> Traversable:
    """The shipped LDNOOBW lists, one file per language code (package data)."""
    return resources.files("curation") / "data" / "ldnoobw"


@functools.lru_cache(maxsize=1)
def badword_languages() -> frozenset[str]:
    """The languages with a shipped LDNOOBW list."""
    return frozenset(entry.name for entry in badwords_dir().iterdir()
                     if entry.is_file() and entry.name not in ("LICENSE", "README.md"))


def is_word_char(char: str) -> bool:
    """What `\\w` matches in a str pattern."""
    return char.isalnum() or char == "_"


def occurs_flanked(text: str, entry: str) -> bool:
    """`entry` occurs in `text` with no word character right before or after it (C4's `(?:\\W|^)…(?:\\W|$)`)."""
    start = text.find(entry)
    while start >= 0:
        end = start + len(entry)
        if (start == 0 or not is_word_char(text[start - 1])) and (end == len(text) or not is_word_char(text[end])):
            return True
        start = text.find(entry, start + 1)
    return False


@functools.cache
def badword_matcher(language: str) -> Callable[[str], bool] | None:
    """A test `matcher(lowercased_text) -> bool` for the language's list, or None without a list."""
    language = BADWORDS_LANGUAGE.get(language, language)
    if language not in badword_languages():
        return None
    listed = (badwords_dir() / language).read_text(encoding="utf-8")
    words = {line.strip().lower() for line in listed.splitlines()} - {""}
    words -= BADWORDS_ALLOWLIST.get(language, frozenset())
    if language in UNSPACED_LANGUAGES:
        pattern = re.compile("|".join(map(re.escape, sorted(words))))
        return lambda text: pattern.search(text) is not None
    # C4 searches `(?:\W|^)(word|…)(?:\W|$)`. An entry made of word characters only matches exactly a
    # maximal \w+ run of the text, so a set lookup of the text's runs answers for those. Every \w+ run of
    # the other entries (phrases, entries with punctuation) is also a maximal run where they match, so an
    # entry is only looked for when its first run is among the text's.
    tokens = frozenset(w for w in words if WORD_RE.fullmatch(w))
    by_first_run: dict[str, list[str]] = {}
    without_run: list[str] = []
    for entry in sorted(words - tokens):
        runs = WORD_RE.findall(entry)
        (by_first_run.setdefault(runs[0], []) if runs else without_run).append(entry)

    def matcher(text: str) -> bool:
        runs = set(WORD_RE.findall(text))
        if not tokens.isdisjoint(runs):
            return True
        candidates = [entry for run in runs.intersection(by_first_run) for entry in by_first_run[run]]
        return any(occurs_flanked(text, entry) for entry in candidates + without_run)

    return matcher


# What `C4Rules.apply` reports of a document: the `c4_*` fields, in the schema's order (apply's order too).
SIGNALS = schema.written_by("c4")


class C4Rules:
    """The rules of one `C4Settings`, applied to texts: `apply(text, language) -> (cleaned text, signals)`.
    Language-dependent parts are built once per language."""

    def __init__(self, settings: C4Settings = C4Settings()):
        self.settings = settings
        self._languages: dict[str | None, tuple] = {}

    def _language(self, language: str | None) -> tuple:
        rules = self._languages.get(language)
        if rules is None:
            unspaced = language in UNSPACED_LANGUAGES
            matcher = badword_matcher(language) if language and self.settings.badwords else None
            rules = self._languages[language] = (
                unspaced,
                END_MARKS + CJK_END_MARKS if unspaced else END_MARKS,
                CJK_SENTENCE_END_RE if unspaced else SENTENCE_END_RE,
                matcher,
            )
        return rules

    def apply(self, text: str, language: str | None) -> tuple[str, dict]:
        """The cleaned text and the signals (the `c4_*` fields of `curation.schema`) of one document."""
        s = self.settings
        unspaced, end_marks, sentence_end, has_badword = self._language(language)
        max_word = 0 if unspaced else s.max_word_length
        min_words = s.min_words_per_line
        min_chars = min_words * s.chars_per_word
        long_word = punctuation = short = javascript = policy = citations = sentences = 0
        lorem = curly = False
        kept: list[str] = []
        kept_lower: list[str] = []
        for line in text.split("\n"):
            line = line.strip()
            if not line:  # blank lines count for no rule (C4's WET reader never passed them on)
                continue
            if max_word and len(line) > max_word and max(map(len, line.split())) > max_word:
                long_word += 1
                continue
            if s.remove_citations and "[" in line:
                line, n = CITATION_RE.subn("", line)
                citations += n
            if s.terminal_punctuation and (not line.endswith(end_marks) or line.endswith(ELLIPSIS)):
                punctuation += 1
                continue
            if min_words:
                if unspaced:
                    too_short = len(line) - line.count(" ") < min_chars
                else:  # splitting stops once there are enough words
                    too_short = len(line.split(maxsplit=min_words - 1)) < min_words
                if too_short:
                    short += 1
                    continue
            lower = line.lower()
            if s.lorem_ipsum and "lorem ipsum" in lower:
                lorem = True
            if s.javascript and "javascript" in lower:
                javascript += 1
                continue
            if s.curly_bracket and "{" in line:
                curly = True
            if s.policy and ("cookie" in lower or "terms of use" in lower or "privacy policy" in lower) \
                    and any(phrase in lower for phrase in POLICY_PHRASES):
                policy += 1
                continue
            sentences += len(sentence_end.findall(line)) or 1
            kept.append(line)
            kept_lower.append(lower)
        badword = None
        if has_badword is not None:
            badword = bool(kept_lower) and has_badword("\n".join(kept_lower))
        keep = bool(kept) and not lorem and not curly and not badword and sentences >= s.min_sentences
        return "\n".join(kept), dict(zip(SIGNALS, (long_word, punctuation, short, javascript, policy, citations,
                                                   sentences, lorem, curly, badword, keep)))

    def page_failures(self, signals: dict) -> list[str]:
        """The page rules a document fails, in the order they are reported (the first is the drop reason)."""
        failed = []
        if signals["c4_lorem_ipsum"]:
            failed.append("lorem_ipsum")
        if signals["c4_curly_bracket"]:
            failed.append("curly_bracket")
        if signals["c4_sentences"] < self.settings.min_sentences:
            failed.append("too_few_sentences")
        if signals["c4_badword"]:
            failed.append("badword")
        if not failed and not signals["c4_keep"]:
            failed.append("empty")
        return failed


class C4Stage(Stage):
    """C4's rules over documents (see the module's docstring). Counters: `lines_in` (not blank), `lines_kept`,
    `lines_removed.<rule>`, `citations_removed`, `pages_hit.<rule>` (documents failing each page rule, whether
    or not filtering), `c4_keep`, `badwords_no_list.<language>`, and `dropped.<first failed rule>` when
    filtering."""

    name = "c4"
    writes = (*schema.written_by("c4"), "raw_content", "length", "nlines")  # the text only when filtering
    settings_class = C4Settings

    def __init__(self, settings: C4Settings = C4Settings()):
        super().__init__()
        self.settings = settings
        self.rules = C4Rules(self.settings)

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        apply, stats = self.rules.apply, self.stats
        filtering, badwords = self.settings.filter, self.settings.badwords
        for doc in docs:
            language = doc.get("language")
            cleaned, signals = apply(doc["raw_content"], language)
            doc.update(signals)
            lines_kept = cleaned.count("\n") + 1 if cleaned else 0
            lines_in = lines_kept
            for field, counter in LINE_COUNTERS:
                if removed := signals[field]:
                    lines_in += removed
                    stats[counter] += removed
            stats["lines_in"] += lines_in
            stats["lines_kept"] += lines_kept
            if signals["c4_citations_removed"]:
                stats["citations_removed"] += signals["c4_citations_removed"]
            if badwords and signals["c4_badword"] is None:
                stats[f"badwords_no_list.{language or 'unknown'}"] += 1
            if signals["c4_keep"]:
                stats["c4_keep"] += 1
                if filtering:
                    doc["raw_content"], doc["length"], doc["nlines"] = cleaned, len(cleaned), lines_kept
                yield doc
                continue
            failed = self.rules.page_failures(signals)
            for rule in failed:
                stats[f"pages_hit.{rule}"] += 1
            if filtering:
                self.drop(failed[0])
            else:
                yield doc
