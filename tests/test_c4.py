"""C4's quality rules (curation/c4.py) on real documents: the shared CommonCrawl WET file after CCNet's
300-character floor and language ID, and Chinese Wikipedia passages."""

import copy
import json
import re

import pytest

from curation import schema
from curation.c4 import (
    BADWORDS_ALLOWLIST,
    UNSPACED_LANGUAGES,
    C4Rules,
    C4Settings,
    C4Stage,
    badword_languages,
    badword_matcher,
    badwords_dir,
)
from curation.extract import ExtractStage
from curation.langid import LanguageIdStage
from curation.pipeline import merge_stats, nest_counters
from curation.warc import ArchiveReader

WET = "wet/CC-MAIN-2019-30-697-docs.warc.wet.gz"
# The paper's list of policy phrases (T5, section 2.2).
PAPER_POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                        "use cookies")
ALL_OFF = dict(remove_citations=False, terminal_punctuation=False, min_words_per_line=0, max_word_length=0,
               javascript=False, policy=False, min_sentences=0, lorem_ipsum=False, curly_bracket=False,
               badwords=False)


def only(**rules) -> C4Settings:
    """Every rule off but the ones given."""
    return C4Settings(**{**ALL_OFF, **rules})


@pytest.fixture(scope="module")
def docs(shared_data):
    """The 502 documents of the WET file that pass the 300-character floor and LID >= 0.5 (cc_net's reading)."""
    out = list(LanguageIdStage()(ExtractStage()(ArchiveReader().read(str(shared_data / WET)))))
    assert len(out) == 502
    return out


def by_url(docs, fragment: str) -> dict:
    [doc] = [d for d in docs if fragment in d["url"]]
    return copy.deepcopy(doc)


def cleaned(doc: dict, settings: C4Settings) -> tuple[str, dict]:
    return C4Rules(settings).apply(doc["raw_content"], doc["language"])


def stripped_lines(text: str) -> list[str]:
    """The text's lines as the rules see them: stripped, blank ones left out."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def test_policy_lines_removed_from_cookie_banners(docs):
    pastebin = by_url(docs, "pastebin.com/QFs9hKka")
    banner = "We use cookies for various purposes including analytics. By continuing to use Pastebin, you agree " \
             "to our use of cookies as described in the Cookies Policy. OK, I Understand"
    assert banner in stripped_lines(pastebin["raw_content"])
    hit = 0
    for doc in docs:
        lines = stripped_lines(doc["raw_content"])
        text, signals = cleaned(doc, only(policy=True))
        expected = [line for line in lines if not any(p in line.lower() for p in PAPER_POLICY_PHRASES)]
        assert text.split("\n") == expected
        assert signals["c4_lines_removed_policy"] == len(lines) - len(expected)
        hit += signals["c4_lines_removed_policy"] > 0
    assert hit >= 15  # every StackExchange "… privacy policy and cookie policy" footer, Pastebin's banner, …
    assert banner not in cleaned(pastebin, only(policy=True))[0].split("\n")
    # A line about cookies without a policy phrase stays.
    bodleian = by_url(docs, "f_Themes=Salvation%20Army")
    assert any(line.startswith("Cookies are small text files") for line in
               cleaned(bodleian, only(policy=True))[0].split("\n"))
    # With every rule on, the banner (no terminal punctuation) goes under the punctuation rule, counted once.
    text, signals = cleaned(pastebin, C4Settings())
    assert banner not in text and signals["c4_lines_removed_policy"] == 0


def test_citation_markers_removed_from_wikipedia(docs):
    page = by_url(docs, "it.wikipedia.org/wiki/Gallia_Transalpina")
    ending = "non ancora abituati agli usi e costumi romani."
    assert f"{ending}[2]" in page["raw_content"]
    text, signals = cleaned(page, C4Settings())
    assert signals["c4_citations_removed"] == 147
    assert "[2]" not in text and "[147]" not in text
    assert any(line.endswith(ending) for line in text.split("\n"))
    # Without the citation rule the same line ends in "]" and the punctuation rule removes it.
    text, _ = cleaned(page, C4Settings(remove_citations=False))
    assert not any(ending in line for line in text.split("\n"))
    # Stats add up over the file.
    stage = C4Stage()
    total = sum(d["c4_citations_removed"] for d in stage(copy.deepcopy(docs)))
    assert total == stage.stats["citations_removed"] >= 600


def test_curly_bracket_fails_the_page(docs):
    page = by_url(docs, "stats.stackexchange.com/questions/191042")
    _, signals = cleaned(page, C4Settings())
    assert signals["c4_curly_bracket"] and not signals["c4_keep"]
    _, signals = cleaned(page, C4Settings(curly_bracket=False))
    assert not signals["c4_curly_bracket"] and signals["c4_keep"]
    stage = C4Stage(C4Settings(filter=True))
    assert list(stage([page])) == [] and stage.stats["dropped.curly_bracket"] == 1
    # As in C4's code, only a line that passed the line rules counts: this page's "{" is in lines without
    # terminal punctuation, so it is kept.
    page = by_url(docs, "developers.google.com/apps-script/reference/url-fetch")
    assert "{" in page["raw_content"]
    text, signals = cleaned(page, C4Settings())
    assert "{" not in text and not signals["c4_curly_bracket"] and signals["c4_keep"]


def test_javascript_and_lorem_ipsum(docs):
    page = by_url(docs, "developers.google.com/apps-script/reference/url-fetch")
    lines = stripped_lines(page["raw_content"])
    text, signals = cleaned(page, only(javascript=True))
    assert signals["c4_lines_removed_javascript"] == sum("javascript" in line.lower() for line in lines) == 12
    assert "javascript" not in text.lower()
    lorem = by_url(docs, "devec.subwiki.org")
    assert cleaned(lorem, only(lorem_ipsum=True))[1]["c4_lorem_ipsum"]
    assert [d["url"] for d in docs if cleaned(d, C4Settings())[1]["c4_lorem_ipsum"]] == [lorem["url"]]


def test_terminal_punctuation_and_short_lines(docs):
    for doc in docs:
        if doc["language"] in ("zh", "ja", "th"):
            continue
        lines = stripped_lines(doc["raw_content"])
        text, signals = cleaned(doc, only(terminal_punctuation=True))
        expected = [line for line in lines if line.endswith((".", "?", "!", '"')) and not line.endswith("...")]
        assert text.split("\n") == expected if expected else text == ""
        assert signals["c4_lines_removed_punctuation"] == len(lines) - len(expected)
        text, signals = cleaned(doc, only(min_words_per_line=5))
        expected = [line for line in lines if len(line.split()) >= 5]
        assert text.split("\n") == expected if expected else text == ""
        assert signals["c4_lines_removed_short"] == len(lines) - len(expected)


def test_min_sentences_threshold(docs):
    page = by_url(docs, "www.cybeout.it/2019/02/opera-touch")
    _, signals = cleaned(page, C4Settings())
    n = signals["c4_sentences"]
    assert n == 4 and signals["c4_keep"]  # the record's first line (4 more) is its title, out of the text
    assert not cleaned(page, C4Settings(min_sentences=n + 1))[1]["c4_keep"]
    stage = C4Stage(C4Settings(filter=True, min_sentences=n + 1))
    assert list(stage([page])) == [] and stage.stats["dropped.too_few_sentences"] == 1


def test_chinese_document_without_spaces(docs):
    page = by_url(docs, "warcraft.huijiwiki.com/wiki/%E9%98%BF")
    assert page["language"] == "zh"
    text, signals = cleaned(page, C4Settings())
    assert signals["c4_keep"] and signals["c4_lines_removed_short"] == 0
    kept = text.split("\n")
    assert len(kept) >= 10 and all(line.endswith(("。", "！", "？")) for line in kept)
    assert not re.search(r"[.!?]", text)
    assert signals["c4_sentences"] == len(re.findall("[。！？]+", text)) > len(kept)
    # Read as English (split on spaces, ASCII end marks only) the same page keeps none of these lines.
    as_english, english = C4Rules(C4Settings()).apply(page["raw_content"], "en")
    assert not set(kept) & set(as_english.split("\n")) and not english["c4_keep"]
    # A line needs min_words_per_line * chars_per_word characters: 10 by default.
    short, long_enough = "太短了。", "这一行有足够多的汉字。"
    assert C4Rules(only(min_words_per_line=5)).apply(f"{short}\n{long_enough}", "zh")[0] == long_enough


def test_chinese_sentences_and_badword_substrings(shared_data):
    passages = [p["context"] for article in json.loads((shared_data / "wikipedia/zh/cmrc2018_dev.json").read_text())
                ["data"] for p in article["paragraphs"]]
    listed = [w.strip() for w in (badwords_dir() / "zh").read_text(encoding="utf-8").splitlines() if w.strip()]
    rules = C4Rules(C4Settings())
    only_allowed = [p for p in passages if [w for w in listed if w in p] == ["性"]]
    assert len(only_allowed) >= 10
    for passage in only_allowed:
        text, signals = rules.apply(passage, "zh")
        assert signals["c4_badword"] is False  # 性 ("nature", "-ness") is on C4's allow-list
    flagged = 0
    for passage in passages[:200]:
        text, signals = rules.apply(passage, "zh")
        if text:
            # sentences: runs of 。！？ and ASCII ends, one per line at least
            assert signals["c4_sentences"] >= text.count("。") // 2
        hits = [w for w in listed if w != "性" and w in text]
        assert signals["c4_badword"] is bool(hits)  # substring match: no word boundaries in Chinese
        flagged += bool(hits)
    assert flagged > 0


def test_badwords_whole_words_and_languages_without_a_list(docs):
    assert {"en", "zh", "ja", "th", "de", "fr", "fil"} <= badword_languages()
    assert (badwords_dir() / "LICENSE").read_text().startswith("Attribution 4.0 International")
    # "analysis" holds "anal" (on the en list), but only whole words count.
    page = by_url(docs, "implementationscience.biomedcentral.com")
    text, signals = cleaned(page, C4Settings())
    assert "analysis" in text.lower() and signals["c4_badword"] is False
    page = by_url(docs, "squammie.wordpress.com/tag/sex-drive")
    assert cleaned(page, C4Settings())[1]["c4_badword"] is True
    stage = C4Stage()
    out = list(stage(copy.deepcopy(docs)))
    uk = [d for d in out if d["language"] == "uk"]
    assert uk and all(d["c4_badword"] is None for d in uk)
    assert stage.stats["badwords_no_list.uk"] == len(uk)
    assert "badwords_no_list.en" not in stage.stats
    assert nest_counters(stage.stats)["badwords_no_list.uk"] == len(uk)


def test_badword_matching_is_c4s_regex(docs):
    """The matcher (set lookups of word runs, then flanked searches) answers as C4's one regex does."""
    checked = hits = 0
    for language in sorted({d["language"] for d in docs} & badword_languages()):
        words = {w.strip().lower() for w in (badwords_dir() / language).read_text(encoding="utf-8").splitlines()}
        words -= {""} | BADWORDS_ALLOWLIST.get(language, set())
        alternatives = "|".join(map(re.escape, words))
        c4_regex = re.compile(alternatives if language in UNSPACED_LANGUAGES else rf"(?:\W|^)({alternatives})(?:\W|$)")
        matcher = badword_matcher(language)
        for doc in docs:
            if doc["language"] == language:
                text = doc["raw_content"].lower()
                assert matcher(text) == bool(c4_regex.search(text)), doc["url"]
                checked += 1
                hits += matcher(text)
    assert checked > 400 and hits > 20


def test_annotate_and_filter_agree(docs):
    annotate, filtering = C4Stage(C4Settings()), C4Stage(C4Settings(filter=True))
    annotated = list(annotate(copy.deepcopy(docs)))
    filtered = list(filtering(copy.deepcopy(docs)))
    assert [d["raw_content"] for d in annotated] == [d["raw_content"] for d in docs]
    assert all(set(schema.written_by("c4")) <= d.keys() for d in annotated)
    kept = [d for d in annotated if d["c4_keep"]]
    assert 300 < len(kept) < len(docs)
    assert [d["url"] for d in filtered] == [d["url"] for d in kept]
    rules = C4Rules(C4Settings())
    for before, after in zip(kept, filtered):
        text = rules.apply(before["raw_content"], before["language"])[0]
        assert after["raw_content"] == text
        assert after["length"] == len(text) and after["nlines"] == text.count("\n") + 1
        assert after["original_length"] == before["original_length"]
        assert all(after[name] == before[name] for name in schema.written_by("c4"))
    a, f = nest_counters(annotate.stats), nest_counters(filtering.stats)
    assert a["out"] == len(docs) and a["dropped"] == {}
    assert f["out"] == len(kept) == a["c4_keep"] == f["c4_keep"]
    assert sum(f["dropped"].values()) == len(docs) - len(kept)
    assert {k: v for k, v in a.items() if k not in ("out", "dropped", "seconds")} == \
           {k: v for k, v in f.items() if k not in ("out", "dropped", "seconds")}


def run_partition(settings: C4Settings):
    """What a Spark job does: one stage per partition, its counters sent back after the documents."""
    def run(part):
        stage = C4Stage(settings)
        yield from stage(part)
        yield {"stats": nest_counters(stage.stats)}
    return run


def test_same_in_spark_and_alone(docs, spark):
    settings = C4Settings(filter=True)
    alone = C4Stage(settings)
    expected = list(alone(copy.deepcopy(docs)))
    rows = spark.sparkContext.parallelize(copy.deepcopy(docs), 4).mapPartitions(run_partition(settings)).collect()
    got = [row for row in rows if "stats" not in row]
    stats: dict = {}
    for row in rows:
        if "stats" in row:
            merge_stats(stats, row["stats"])
    assert got == expected
    stats.pop("seconds")
    assert stats == {k: v for k, v in nest_counters(alone.stats).items() if k != "seconds"}
