"""Training and evaluating the Wikipedia-reference classifier on its examples (no Spark here): the
settings of `jobs.train_wikiref` (the command that gathers the examples and runs this), the balanced
split held out by article / site, fastText fitted in a fresh process and published, and the held-out
metrics (ROC AUC, precision, recall).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from curation import storage
from curation.settings import section, setting
from curation.wikiref import LABEL_PREFIX, NEGATIVE, POSITIVE, WikirefSettings, fasttext_line

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
