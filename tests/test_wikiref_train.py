"""Training the wikiref classifier on the real shared data (real fastText), and the scoring stage."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curation.extract import ExtractSettings, ExtractStage
from curation.pipeline import run_stages
from curation.warc import ArchiveReader
from curation.wikiref import (
    WikirefSettings,
    WikirefStage,
    article_passages,
    fasttext_line,
    load_model,
    reference_probabilities,
)
from curation.wikiref_training import TooFewPositives, WikirefTrainingSettings, roc_auc
from jobs.train_wikiref import train

REPO = Path(__file__).resolve().parent.parent
HELD_OUT_ARTICLES = ("Bodmin", "Chemical-biology", "Elizabeth-Gilbert", "Goryeo-ware", "Bazooka",
                     "HMS-Irresistible", "Mozilla-Firefox", "Charlie-Milstead")
SPAM = "CC-MAIN-2020-34-excerpt.warc.gz"


def training_inputs(shared_data):
    wikitext = sorted((shared_data / "wikipedia" / "wikitext").glob("*.txt"))
    train_articles = [str(p) for p in wikitext if p.stem not in HELD_OUT_ARTICLES]
    # The spam excerpt is kept out of training: it is what the model is checked against.
    pages = [str(p) for p in sorted((shared_data / "warc").glob("*.warc.gz")) if p.name != SPAM]
    pages += [str(p) for p in sorted((shared_data / "wet").glob("*.wet.gz"))]
    return train_articles, pages


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    articles, pages = training_inputs(shared_data)
    output = tmp_path_factory.mktemp("wikiref")
    manifest = train(articles, pages, output, allow_fallback=True, settings=WikirefTrainingSettings(seed=1),
                     log=lambda m: None)
    return output, manifest


def test_manifest_records_positives_and_metrics(trained):
    output, manifest = trained
    assert (output / "wikiref.bin").stat().st_size > 0
    on_disk = json.loads((output / "manifest.json").read_text())
    assert on_disk == manifest
    positives = manifest["positives"]
    assert positives["found_at_cited_urls"] == 0  # none of the shared pages is at a cited URL
    assert positives["used"] == ["wikipedia_fallback"] and positives["wikipedia_fallback"]
    assert positives["by_source"]["wikipedia_fallback"] > 300
    split = manifest["split"]
    assert split["held_out"]["positive"] > 30 and split["held_out"]["negative"] > 30
    held_out = manifest["held_out_metrics"]
    assert held_out["roc_auc"] > 0.85, held_out
    assert held_out["at_0.5"]["precision"] > 0.8 and held_out["at_0.25"]["recall"] > 0.75, held_out
    assert manifest["hyperparameters"]["wordNgrams"] == 2
    assert manifest["cited_url_keys"] > 1000


def test_training_again_in_a_process_that_trained_before_gives_the_same_model(trained, shared_data, tmp_path):
    # fastText 0.9.3 leaves most of its input matrix uninitialised: trained in a process whose
    # allocator hands back memory of an earlier training, the model would come out different
    # (degenerate, or "Encountered NaN").
    import fasttext

    _, first = trained
    articles, pages = training_inputs(shared_data)
    earlier = tmp_path / "earlier.txt"
    passages = [passage for article in articles for passage in article_passages(Path(article).read_text())]
    passages += [page["raw_content"] for page in ArchiveReader().read(next(p for p in pages if "697" in p))]
    earlier.write_text("".join(f"__label__{i % 2} {fasttext_line(text)}\n" for i, text in enumerate(passages)))
    for _ in range(2):
        try:
            fasttext.train_supervised(input=str(earlier), dim=32, bucket=200_000, wordNgrams=2, thread=1, verbose=0)
        except RuntimeError:  # "Encountered NaN" is one of the ways it shows
            pass
    again = train(articles, pages, tmp_path / "again", allow_fallback=True, settings=WikirefTrainingSettings(seed=1),
                  log=lambda m: None)
    assert again["sha256"] == first["sha256"]


def test_ranks_unseen_wikipedia_text_above_cc_spam(trained, shared_data):
    output, _ = trained
    model = load_model(str(output / "wikiref.bin"))
    wiki = [p for name in HELD_OUT_ARTICLES
            for p in article_passages((shared_data / "wikipedia" / "wikitext" / f"{name}.txt").read_text())]
    # The spam pages as the pipeline sees them (CCNet's 300-character floor drops 5 of the 16).
    spam = [d["raw_content"] for d in run_stages(ArchiveReader().read(str(shared_data / "warc" / SPAM)),
                                                 [ExtractStage()])]
    assert len(wiki) > 50 and len(spam) == 11
    wiki_scores, spam_scores = reference_probabilities(model, wiki), reference_probabilities(model, spam)
    labels = np.array([1] * len(wiki) + [0] * len(spam))
    auc = roc_auc(labels, np.array(wiki_scores + spam_scores))
    print("wiki", sorted(round(x, 2) for x in wiki_scores), "spam", sorted(round(x, 2) for x in spam_scores))
    assert auc > 0.8, auc
    assert np.median(wiki_scores) > 2 * np.median(spam_scores)
    assert sum(s >= 0.25 for s in spam_scores) <= 2


def test_stage_scores_every_document_and_never_drops(trained, shared_data):
    output, _ = trained
    pages = ArchiveReader().read(str(shared_data / "warc" / SPAM))
    docs = list(run_stages(pages, [ExtractStage(ExtractSettings(min_length=0))]))
    docs.append({"url": "wiki", "raw_content": article_passages(
        (shared_data / "wikipedia" / "wikitext" / "Bodmin.txt").read_text())[1]})
    docs.append({"url": "empty", "raw_content": ""})
    stage = WikirefStage(WikirefSettings(str(output / "wikiref.bin"), threshold=0.25), batch_size=7)
    out = list(stage(iter(docs)))
    assert len(out) == len(docs) and stage.stats["in"] == stage.stats["out"] == len(docs)
    assert all(0.0 <= d["wikiref_score"] <= 1.0 for d in out)
    assert all(d["wikiref_keep"] == (d["wikiref_score"] >= 0.25) for d in out)
    assert out[-2]["wikiref_keep"] and out[-2]["wikiref_score"] > 0.5
    assert stage.stats["below_threshold"] == sum(not d["wikiref_keep"] for d in out)
    # The model is loaded once per process and path.
    assert WikirefStage(WikirefSettings(str(output / "wikiref.bin"))).model is stage.model


def test_too_few_positives_stops_with_a_count(shared_data, tmp_path):
    articles, _ = training_inputs(shared_data)
    pages = [str(shared_data / "warc" / "web-pages-00000.warc.gz")]
    with pytest.raises(TooFewPositives, match="only 0 pages at cited URLs"):
        train(articles[:3], pages, tmp_path / "m", log=lambda m: None)
    assert not (tmp_path / "m" / "wikiref.bin").exists()
    result = subprocess.run([sys.executable, "-m", "jobs.train_wikiref", "--wikipedia", *articles[:3],
                             "--pages", *pages, "--output", str(tmp_path / "m")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 3 and "--allow-wikipedia-fallback" in result.stderr


@pytest.mark.parametrize("bad, message", [
    (["fasttext.epoch=0"], "fasttext.epoch=0: expected a value in [1, ∞]"),
    (["test_fraction=half"], "test_fraction='half': expected a number"),
    (["min_positive=5"], "unknown setting min_positive"),
    ([], "give the snapshot as --curated PARQUET_DIR and/or --pages WARC/WET…"),
])
def test_command_refuses_a_bad_setting_at_once(bad, message, tmp_path):
    pages = ["--pages", "x.warc.gz"] if bad else []
    refused = subprocess.run([sys.executable, "-m", "jobs.train_wikiref", "--wikipedia", "a.txt", *pages,
                              "--output", str(tmp_path / "m"), *bad], capture_output=True, text=True, cwd=REPO,
                             timeout=5)
    assert refused.returncode == 2 and refused.stderr.startswith(f"error: {message}")
    assert len(refused.stderr.splitlines()) == 1 and not (tmp_path / "m").exists()


def test_command_prints_the_settings_it_would_run_with():
    shown = subprocess.run([sys.executable, "-m", "jobs.train_wikiref", "--print-settings", "--wikipedia", "a.txt",
                            "b.txt", "--allow-wikipedia-fallback", "fasttext.epoch=20", "min_positives=50"],
                           capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "\n  epoch: 20 " in shown and "\nmin_positives: 50 " in shown
    assert "\nwikipedia: [a.txt, b.txt] " in shown and "\nallow_wikipedia_fallback: true " in shown


def test_roc_auc_with_ties():
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.8, 0.2])) == 1.0
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5


def test_spark_join_on_a_curated_snapshot(spark, shared_data, tmp_path):
    """Path a: a curated Parquet snapshot (partitioned like the curate job's output) joined with
    the cited URL keys in Spark; cited pages become positives and are never sampled as negatives."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.train_wikiref import curated_join

    docs = []
    for name in ("web-pages-00000.warc.gz", "web-pages-00001.warc.gz"):
        docs += list(run_stages(ArchiveReader().read(str(shared_data / "warc" / name)), [ExtractStage()]))
    table = pa.Table.from_pylist([{"url": d["url"], "raw_content": d["raw_content"],
                                   "source_domain": d["source_domain"], "language": "xx"} for d in docs])
    curated = tmp_path / "curated"
    pq.write_to_dataset(table, str(curated), partition_cols=["language"])
    cited_urls = [d["url"] for d in docs[:40]]
    # Cited as written in articles: other scheme, www., trailing slash, tracking parameter.
    article = tmp_path / "Article.txt"
    article.write_text("".join(
        f"Fact.<ref>{{{{cite web|url={u.replace('https://', 'http://')}{'&' if '?' in u else '?'}"
        f"utm_source=wp|title=T}}}}</ref>\n"
        for u in cited_urls))
    from curation.wikiref import cited_url_keys, url_key

    keys = set(cited_url_keys(article.read_text()))
    assert keys == {url_key(u) for u in cited_urls}

    positives, negatives, pool = curated_join(spark, str(curated), keys, seed=3, negatives_wanted=30)
    assert {d["url"] for d in positives} == set(cited_urls)
    assert pool == len(docs) - len(cited_urls) >= 40 and len(negatives) == 30
    assert not {d["url"] for d in negatives} & set(cited_urls)

    manifest = train([str(article)], [], tmp_path / "model", curated=str(curated), spark=spark,
                     settings=WikirefTrainingSettings(min_positives=30), log=lambda m: None)
    assert manifest["positives"]["used"] == ["snapshot_join"]
    assert manifest["positives"]["by_source"]["snapshot_join"] == 40
    assert manifest["split"]["train"]["negative"] + manifest["split"]["held_out"]["negative"] == 40
