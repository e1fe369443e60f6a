"""cc_net itself (cc-net==1.0.0 from PyPI) as the oracle: its reader, line dedup, language ID,
SentencePiece + KenLM perplexity and bucketing on the shared WET file, against ours on the same file
(our stages in one process, and our Spark line dedup), document by document.

Two shims, for cc_net's sake only, both here: the shared file's WARC headers are not in CommonCrawl's
order, which cc_net's `parse_doc` reads by position, so cc_net reads a copy with the same records in
CommonCrawl's header order; and fastText's single-string `predict` fails on numpy 2 (`copy=False`),
so cc_net's `split_by_lang.predict` calls it with a one-item list (the same C++ call).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from cc_net import dedup as cc_dedup
from cc_net import perplexity as cc_perplexity
from cc_net import process_wet_file, split_by_lang
from warcio.archiveiterator import ArchiveIterator

from curation import perplexity as ppl
from curation.dedup_lines import LineDedupStage
from curation.extract import ExtractStage
from curation.langid import LanguageIdStage, default_model_path
from curation.perplexity import PerplexitySettings, PerplexityStage, load_model, write_cutoffs
from curation.pipeline import run_stages
from curation.warc import ArchiveReader
from jobs.train_lm import train_language

WET = "wet/CC-MAIN-2019-30-697-docs.warc.wet.gz"
# CommonCrawl's WET header order, which cc_net's parse_doc relies on (headers[1] is the type, …).
CC_HEADERS = ("WARC-Type", "WARC-Target-URI", "WARC-Date", "WARC-Record-ID", "WARC-Refers-To", "WARC-Block-Digest",
              "Content-Type", "Content-Length")
LANGUAGES = ("en", "de")
LENGTH_FIELDS = ("raw_content", "title", "length", "nlines", "original_length", "original_nlines")


def in_commoncrawl_header_order(path: Path, output: Path) -> Path:
    """The same records (content bytes untouched) with their headers in CommonCrawl's order."""
    with open(path, "rb") as stream, gzip.open(output, "wb") as out:
        for record in ArchiveIterator(stream):
            headers = record.rec_headers
            fields = b"".join(f"{name}: {headers.get_header(name)}\r\n".encode() for name in CC_HEADERS)
            out.write(b"WARC/1.0\r\n" + fields + b"\r\n" + record.content_stream().read() + b"\r\n\r\n")
    return output


def predict_with_a_list(model, text: str, k: int = 1):
    labels, scores = model.predict([text], k=k)
    return [label.replace("__label__", "") for label in labels[0]], np.array(scores[0])


@pytest.fixture(scope="module")
def models(shared_data, tmp_path_factory) -> Path:
    """Small en and de SentencePiece + KenLM models (as tests/test_snapshot_run.py trains them)."""
    out = tmp_path_factory.mktemp("ccnet-lm")
    wiki = shared_data / "wikipedia"
    train_language("en", [str(wiki / "en" / "wikitext2-valid.tokens.txt")], out, vocab_size=4000, memory="64M")
    train_language("de", sorted(str(p) for p in (wiki / "wikitext").glob("*.txt") if "BBDO" in p.name
                                or "Mozilla" in p.name), out, memory="64M")
    ppl.clear_cache()
    return out


def write_run_cutoffs(models: Path, docs: list[dict]) -> Path:
    """cutoff.csv from the perplexities of these documents (so that all three buckets occur)."""
    cutoffs = {}
    for lang in LANGUAGES:
        texts = [d["raw_content"] for d in docs if d["language"] == lang]
        values = load_model(models, lang).perplexities(texts)
        cutoffs[lang] = [float(v) for v in np.percentile(values, range(100))]
    write_cutoffs(models / "cutoff.csv", cutoffs)
    ppl.clear_cache()
    return models / "cutoff.csv"


def run_ccnet(wet: Path, models: Path, cutoffs: Path | None, hashes: Path) -> tuple[list[dict], list[dict]]:
    """cc_net's mine pipeline on one shard: reader (min_len=300) → hashes → dedup → lid → sp → lm →
    bucket. Returns (documents as read, documents out)."""
    with gzip.open(wet, "rt") as lines:  # how cc_net's jsonql opens a segment
        read = list(process_wet_file.parse_warc_file(lines, min_len=300))
    with cc_dedup.HashesCollector(field="raw_content", output=hashes) as collector:
        for doc in read:
            collector(doc)
    chain = [cc_dedup.DuplicatesRemover(field="raw_content", hashes_files=[hashes]),
             split_by_lang.Classifier(model=default_model_path(), field="raw_content", out_field="language",
                                      threshold=0.5),
             cc_perplexity.MultiSentencePiece({lang: models / f"{lang}.sp.model" for lang in LANGUAGES},
                                              field="raw_content", output_field="tokenized", normalize=True),
             cc_perplexity.DocLM({lang: models / f"{lang}.arpa.bin" for lang in LANGUAGES}, field="tokenized",
                                 output_field="perplexity", normalize=False)]
    if cutoffs:
        chain.append(cc_perplexity.PerplexityBucket(cutoffs))
    for step in chain:
        step.__enter__()
    out = []
    for doc in read:
        doc = dict(doc)
        for step in chain:
            doc = step(doc)
            if doc is None:
                break
        else:
            out.append(doc)
    return read, out


def test_ours_equals_ccnet_on_the_shared_wet_file(shared_data, models, spark, tmp_path, monkeypatch):
    monkeypatch.setattr(split_by_lang, "predict", predict_with_a_list)
    wet = in_commoncrawl_header_order(shared_data / WET, tmp_path / "commoncrawl-order.warc.wet.gz")

    # Ours, in one process: reader + extract (the floor), line dedup, language ID, perplexity + bucket.
    extracted = list(run_stages(ArchiveReader().read(str(shared_data / WET)), [ExtractStage()]))
    deduped = list(LineDedupStage()(extracted))
    identified = list(LanguageIdStage()(dict(d) for d in deduped))
    cutoffs = write_run_cutoffs(models, identified)
    ours = {d["url"]: d for d in PerplexityStage(PerplexitySettings(models=str(models)))(identified)}

    read, theirs = run_ccnet(wet, models, cutoffs, tmp_path / "hashes.bin")

    # Reading: the same documents pass the floor, with the same title, text, lengths and metadata.
    assert len(read) == len(extracted) == 544
    for cc, doc in zip(read, extracted):
        assert (doc["url"], doc["title"], doc["raw_content"], doc["date_download"], doc["digest"]) == \
            (cc["url"], cc["title"], cc["raw_content"], cc["date_download"], cc["digest"])
        assert (doc["original_length"], doc["original_nlines"]) == (cc["length"], cc["nlines"])

    # Line dedup, language ID, perplexity, bucket: the same documents kept, field by field.
    theirs = {d["url"]: d for d in theirs}
    assert set(ours) == set(theirs) and len(ours) > 400
    buckets = set()
    for url, cc in theirs.items():
        doc = ours[url]
        assert {f: doc[f] for f in LENGTH_FIELDS} == {f: cc[f] for f in LENGTH_FIELDS}, url
        assert doc["language"] == cc["language"], url
        assert doc["language_score"] == round(float(cc["language_score"]), 2), url
        if "perplexity" in cc:
            assert doc["perplexity"] == pytest.approx(cc["perplexity"], rel=1e-9, abs=0), url
        else:
            assert doc["perplexity"] == -1.0 and doc["language"] not in LANGUAGES
        assert doc["bucket"] == cc["bucket"], url
        buckets.add((doc["language"], doc["bucket"]))
    assert {("en", "head"), ("en", "middle"), ("en", "tail"), ("de", "head")} <= buckets
    assert sum(doc["length"] < doc["original_length"] for doc in ours.values()) > 100  # dedup did work

    # Our Spark line dedup (one group) keeps the same documents with the same text as cc_net's dedup.
    from jobs.dedup import line_dedup

    kept, stats = line_dedup(spark.createDataFrame(extracted).repartition(3))
    by_url = {row["url"]: row.asDict() for row in kept.collect()}
    local = {d["url"]: d for d in deduped}
    assert set(by_url) == set(local) and stats["out"] == len(local)
    for url, doc in local.items():
        assert {f: by_url[url][f] for f in LENGTH_FIELDS} == {f: doc[f] for f in LENGTH_FIELDS}, url
