"""KenLM perplexity: real models trained here from the shared Wikipedia text (en, de, zh), scored
with the CCNet formula; ordering held-out Wikipedia < web boilerplate, shuffled words."""

from __future__ import annotations

import glob
import json
import random
import shutil
import statistics
from html.parser import HTMLParser
from pathlib import Path

import kenlm
import pytest
import sentencepiece as spm

from curation import perplexity as ppl
from curation.normalize import normalize
from curation.perplexity import PerplexitySettings, PerplexityStage, bucket, load_cutoffs, read_cutoffs, write_cutoffs
from curation.pipeline import run_stages
from curation.wikipedia import read_articles
from jobs.train_lm import train_language

DE_ARTICLES = ["BBDO", "Bazooka", "HMS-Irresistible", "Keilwelle", "Liste-der-argentinischen-Botschafter-in-Chile",
               "Maurische-Netzwuhle", "Mozilla-Firefox", "Sara-C.-Bisel", "Wendy-Mogel"]
NOT_EN = {*DE_ARTICLES, "Mark-Behr", "africaans", "statoil", "redirect"}
EN_HELD_OUT = ["Bodmin", "Goryeo-ware", "Chemical-biology", "Harry-McPherson", "Jerry-Mumphrey",
               "The-Atlas-(newspaper)", "Elizabeth-Gilbert", "Damphu-drum"]
DE_HELD_OUT = ["Keilwelle"]


def wikitext_files(shared: Path, names) -> list[str]:
    return [str(shared / "wikipedia" / "wikitext" / f"{name}.txt") for name in names]


@pytest.fixture(scope="session")
def lm_dir(shared_data, tmp_path_factory) -> Path:
    """en, de and zh models trained on the shared Wikipedia text (small vocabularies: fast)."""
    out = tmp_path_factory.mktemp("lm")
    wiki = shared_data / "wikipedia"
    all_wikitext = sorted(Path(p).stem for p in glob.glob(str(wiki / "wikitext" / "*.txt")))
    en_train = [n for n in all_wikitext if n not in NOT_EN and n not in EN_HELD_OUT]
    train_language("en", [str(wiki / "en" / "wikitext2-valid.tokens.txt"),
                          str(wiki / "en" / "wikitext2-test.tokens.txt"),
                          str(wiki / "en" / "enwiki-pages-articles-sample.xml.bz2"),
                          *wikitext_files(shared_data, en_train)],
                   out, vocab_size=6000, memory="64M")
    # de: CCNet's default vocabulary, which 8 articles cannot fill: shrunk automatically.
    train_language("de", wikitext_files(shared_data, [n for n in DE_ARTICLES if n not in DE_HELD_OUT]), out,
                   memory="64M")
    train_language("zh", [str(wiki / "zh" / "cmrc2018_dev.json")], out, vocab_size=6000, memory="64M")
    return out


def held_out_en(shared_data) -> list[str]:
    return [a.text for name in EN_HELD_OUT for a in read_articles(wikitext_files(shared_data, [name])[0])]


def shuffled_words(text: str, seed: int = 0) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


class _MenuLinks(HTMLParser):
    """Texts of the links inside nav/header/footer elements and ul/ol lists (menus, link lists)."""

    CONTAINERS = {"nav", "header", "footer", "ul", "ol"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.depth, self.in_link, self.links, self.current = 0, False, [], []

    def handle_starttag(self, tag, attrs):
        if tag in self.CONTAINERS:
            self.depth += 1
        elif tag == "a" and self.depth:
            self.in_link, self.current = True, []

    def handle_endtag(self, tag):
        if tag in self.CONTAINERS:
            self.depth = max(0, self.depth - 1)
        elif tag == "a" and self.in_link:
            self.in_link = False
            self.links.append(" ".join("".join(self.current).split()))

    def handle_data(self, data):
        if self.in_link:
            self.current.append(data)


def web_boilerplate(shared_data, lang: str) -> list[str]:
    """Menus and link lists of the shared real web pages, one link text per line, for the pages
    with at least 20 such links whose link text fastText assigns to `lang`."""
    from curation.extract import decode_html
    from curation.langid import LanguageIdentifier
    from curation.warc import ArchiveReader

    reader, identifier, docs = ArchiveReader(), LanguageIdentifier(), []
    for path in sorted(glob.glob(str(shared_data / "warc" / "web-pages-*.warc.gz"))):
        for page in reader.read(path):
            parser = _MenuLinks()
            parser.feed(decode_html(page["html"], page["http_charset"]))
            links = [link for link in parser.links if link and len(link) < 60]
            if len(links) >= 20:
                text = "\n".join(links)
                if identifier.predict([text])[0][0] == lang:
                    docs.append(text)
    return docs


def test_models_and_manifest(lm_dir, capfd):
    manifest = json.loads((lm_dir / "manifest.json").read_text())["languages"]
    for lang in ("en", "de", "zh"):
        assert (lm_dir / f"{lang}.sp.model").stat().st_size > 0
        assert (lm_dir / f"{lang}.arpa.bin").stat().st_size > 0
        entry = manifest[lang]
        assert entry["order"] == 5 and entry["model_type"] == "unigram"
        assert entry["lines"] > 0 and entry["pieces"] > entry["lines"] and len(entry["data_sha256"]) == 64
        assert entry["sizes"]["lm"] == (lm_dir / f"{lang}.arpa.bin").stat().st_size
        sp = spm.SentencePieceProcessor(model_file=str(lm_dir / f"{lang}.sp.model"))
        assert sp.get_piece_size() == entry["vocab_size"]
    assert manifest["en"]["vocab_size"] == 6000
    assert manifest["de"]["requested_vocab_size"] == 65536 and manifest["de"]["vocab_size"] < 65536
    assert manifest["en"]["articles"] > 150  # WikiText-2 (122) + dump (2) + wikitext articles


def test_english_ordering(lm_dir, shared_data):
    """Held-out Wikipedia < web boilerplate and < the same articles with shuffled words."""
    model = ppl.load_model(lm_dir, "en")
    wiki = held_out_en(shared_data)
    boiler = web_boilerplate(shared_data, "en")
    assert len(wiki) == len(EN_HELD_OUT) and len(boiler) >= 5
    wiki_pp = model.perplexities(wiki)
    boiler_pp = model.perplexities(boiler)
    shuffled_pp = model.perplexities([shuffled_words(t) for t in wiki])
    print(f"\nen held-out wikipedia {sorted(wiki_pp)}\nen boilerplate {sorted(boiler_pp)}\n"
          f"en shuffled {sorted(shuffled_pp)}")
    # Margins: the medians are 2x apart, every held-out article is under the median boilerplate
    # page, and each article is 1.5x under its own shuffled words.
    assert statistics.median(wiki_pp) * 2 < statistics.median(boiler_pp)
    assert max(wiki_pp) < statistics.median(boiler_pp)
    for clean, shuffled in zip(wiki_pp, shuffled_pp):
        assert clean * 1.5 < shuffled, (clean, shuffled)


def test_german_and_chinese_models_score_sensibly(lm_dir, shared_data):
    de = ppl.load_model(lm_dir, "de")
    held = [a.text for a in read_articles(wikitext_files(shared_data, DE_HELD_OUT)[0])]
    clean, shuffled = de.perplexities([held[0], shuffled_words(held[0])])
    english = statistics.median(de.perplexities(held_out_en(shared_data)))
    # 8 articles make a weak model: shuffling costs it less than in English, other languages more.
    assert clean < shuffled and clean * 1.3 < english

    zh = ppl.load_model(lm_dir, "zh")
    passages = [a.text for a in read_articles(shared_data / "wikipedia" / "zh" / "cmrc2018_trial.json")][:20]
    assert len(passages) == 20
    chars_shuffled = ["".join(random.Random(i).sample(p, len(p))) for i, p in enumerate(passages)]
    zh_pp, zh_shuffled = zh.perplexities(passages), zh.perplexities(chars_shuffled)
    print(f"\nde held-out {clean} shuffled {shuffled} english {english}; "
          f"zh passages median {statistics.median(zh_pp)} shuffled {statistics.median(zh_shuffled)}")
    assert statistics.median(zh_pp) * 2 < statistics.median(zh_shuffled)


def test_ccnet_formula_matches_bare_loop(lm_dir, shared_data):
    """Document perplexity = cc_net's: normalize (one line), pieces, KenLM log10 with <s> </s>,
    length = pieces + 1, rounded to 1 decimal; per_line sums over lines."""
    text = held_out_en(shared_data)[0]
    sp = spm.SentencePieceProcessor(model_file=str(lm_dir / "en.sp.model"))
    lm = kenlm.Model(str(lm_dir / "en.arpa.bin"))
    pieces = sp.encode(normalize(text), out_type=str)
    expected = round(10 ** (-lm.score(" ".join(pieces)) / (len(pieces) + 1)), 1)
    model = ppl.load_model(lm_dir, "en")
    assert model.perplexity(text) == expected == model.perplexities([text])[0]

    lines = [normalize(line) for line in text.split("\n") if normalize(line)]
    total, length = 0.0, 0
    for line in lines:
        p = sp.encode(line, out_type=str)
        total += lm.score(" ".join(p))
        length += len(p) + 1
    per_line = model.perplexity(text, per_line=True)
    assert per_line == round(10 ** (-total / length), 1) and per_line != expected


def test_ccnet_cutoffs_table(shared_data, tmp_path):
    cutoffs = read_cutoffs(shared_data / "ccnet" / "cutoff.csv")
    assert len(cutoffs) == 48 and all(len(v) == 100 for v in cutoffs.values())
    en = cutoffs["en"]
    assert en == sorted(en)
    assert bucket(en[30] - 0.1, en) == "head"
    assert bucket(en[30], en) == "middle" and bucket(en[60] - 0.1, en) == "middle"
    assert bucket(en[60], en) == "tail"
    assert bucket(10.0, None) == "all" and bucket(-1.0, en) == "all"
    write_cutoffs(tmp_path / "cutoff.csv", cutoffs)
    assert read_cutoffs(tmp_path / "cutoff.csv") == cutoffs


def test_stage_adds_perplexity_and_bucket(lm_dir, shared_data, tmp_path):
    """The stage on a models dir laid out like CCNet's release (names and cutoff.csv)."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("en.sp.model", "en.arpa.bin", "de.sp.model", "de.arpa.bin"):
        (models / name).symlink_to(lm_dir / name)
    shutil.copy(shared_data / "ccnet" / "cutoff.csv", models / "cutoff.csv")
    wiki = held_out_en(shared_data)
    docs = [{"raw_content": wiki[0], "language": "en"},
            {"raw_content": shuffled_words(wiki[1]), "language": "en"},
            {"raw_content": "Keilwellen übertragen große Drehmomente.", "language": "de"},
            {"raw_content": "xyz", "language": "xx"},
            {"raw_content": "no language field"}]
    stage = PerplexityStage(PerplexitySettings(str(models)))
    out = list(run_stages([dict(d) for d in docs], [stage]))
    assert [d["raw_content"] for d in out] == [d["raw_content"] for d in docs]
    assert all(isinstance(d["perplexity"], float) for d in out)
    assert out[0]["perplexity"] == ppl.load_model(models, "en").perplexity(wiki[0])
    assert out[0]["perplexity"] < out[1]["perplexity"]
    en = load_cutoffs(models)["en"]
    for doc in out[:3]:
        assert doc["perplexity"] > 0
        assert doc["bucket"] == bucket(doc["perplexity"], load_cutoffs(models)[doc["language"]])
    assert out[1]["bucket"] == "tail" and out[1]["perplexity"] >= en[60]
    assert [d["bucket"] for d in out[3:]] == ["all", "all"] and out[3]["perplexity"] == -1.0
    assert stage.stats["in"] == stage.stats["out"] == 5 and stage.stats["no_model"] == 2

    per_line_stage = PerplexityStage(PerplexitySettings(str(models), per_line=True))
    per_line = list(per_line_stage([{"raw_content": wiki[0], "language": "en"}]))
    assert per_line[0]["perplexity"] == ppl.load_model(models, "en").perplexity(wiki[0], per_line=True)

    # Without cutoffs beside the models, every scored document is in `all`.
    ppl.clear_cache()
    out = list(PerplexityStage(PerplexitySettings(str(lm_dir)))([{"raw_content": wiki[0], "language": "en"}]))
    assert out[0]["bucket"] == "all" and out[0]["perplexity"] > 0


def test_models_load_once_per_process(lm_dir):
    assert ppl.load_model(lm_dir, "en") is ppl.load_model(str(lm_dir), "en")
    assert ppl.load_model(lm_dir, "xx") is None
    assert ppl.available_languages(lm_dir) == ["de", "en", "zh"]


def test_cutoffs_from_web_documents_and_score_cli(lm_dir, shared_data, tmp_path):
    """`jobs.cutoffs` on the real WET sample writes CCNet-format percentiles beside the models; the
    stage then splits those documents about 30/30/40; `curation.score` reports the same values."""
    import subprocess
    import sys

    from jobs import cutoffs as cutoffs_job

    models = tmp_path / "models"
    shutil.copytree(lm_dir, models)
    wet = str(shared_data / "wet" / "CC-MAIN-2019-30-697-docs.warc.wet.gz")
    assert cutoffs_job.main(["--models", str(models), "--input", wet, "min_docs=50"]) == 0
    table = read_cutoffs(models / "cutoff.csv")
    assert set(table) == {"en"}  # de (15 documents) and zh (0) are under min_docs
    assert table["en"] == sorted(table["en"]) and len(table["en"]) == 100
    manifest = json.loads((models / "manifest.json").read_text())
    assert manifest["cutoffs"]["en"]["documents"] == 203 and manifest["cutoffs"]["en"]["p30"] == table["en"][30]
    assert set(manifest["languages"]) == {"en", "de", "zh"}

    docs = [d for d in cutoffs_job.read_documents([wet]) if d["language"] == "en"]
    out = list(PerplexityStage(PerplexitySettings(str(models)))(docs))
    counts = {b: sum(d["bucket"] == b for d in out) for b in ("head", "middle", "tail")}
    assert len(out) == 203 and abs(counts["head"] - 61) <= 3 and abs(counts["middle"] - 61) <= 3

    wiki = tmp_path / "wiki.txt"
    wiki.write_text(held_out_en(shared_data)[0])
    result = subprocess.run([sys.executable, "-m", "curation.score", str(wiki), "-", "--models", str(models)],
                            input=shuffled_words(wiki.read_text()), capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    clean, shuffled = map(json.loads, result.stdout.splitlines())
    assert clean["file"] == str(wiki) and clean["language"] == "en" and clean["language_score"] >= 0.5
    assert clean["perplexity"] == ppl.load_model(models, "en").perplexity(wiki.read_text())
    assert clean["bucket"] == "head" and shuffled["bucket"] == "tail"


@pytest.mark.parametrize("command, bad, message", [
    ("jobs.cutoffs", "sample=0", "sample=0: expected a value in [1, ∞]"),
    ("jobs.cutoffs", "per_line=maybe", "per_line='maybe': expected true or false"),
    ("curation.score", "per_line=maybe", "per_line='maybe': expected true or false"),
    ("curation.score", "lid_modle=x", "unknown setting lid_modle"),
])
def test_commands_refuse_a_bad_setting_at_once(command, bad, message, tmp_path):
    import subprocess
    import sys

    refused = subprocess.run([sys.executable, "-m", command, "--models", str(tmp_path), "--input", "x.wet.gz", bad]
                             if command == "jobs.cutoffs" else
                             [sys.executable, "-m", command, "--models", str(tmp_path), "x.txt", bad],
                             capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent.parent)
    assert refused.returncode == 2 and refused.stderr.startswith(f"error: {message}")
    assert len(refused.stderr.splitlines()) == 1 and refused.stdout == "" and not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["jobs.cutoffs", "curation.score"])
def test_commands_print_the_settings_they_would_run_with(command):
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", command, "--print-settings", "a.txt", "-", "per_line=true"]
                           if command == "curation.score" else
                           [sys.executable, "-m", command, "--print-settings", "--input", "a.txt", "-",
                            "per_line=true"], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parent.parent).stdout
    assert "\nper_line: true " in shown
    assert "\nfiles: [a.txt, '-'] " in shown if command == "curation.score" else "\ninput: [a.txt, '-'] " in shown
