"""A near-duplicate corpus with known Jaccard similarity, made from the real texts in ../shared/data.

Originals are real documents: CommonCrawl WET pages, WikiText-2 articles, chunks of Botchan. Each
original gets variants made by one kind of edit — word substitutions, inserted boilerplate lines
(from other real documents), reordered paragraphs/blocks, a cut tail — applied in growing amounts
until the exact Jaccard similarity of their shingle sets (curation.minhash.shingles) with the
original falls to a target. The truth is the exact Jaccard of every pair, not the target.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from itertools import combinations
from pathlib import Path

from curation.minhash import jaccard, shingles

EDITS = ("substitute", "insert", "reorder", "truncate")


def real_texts(shared_data: Path, min_words: int = 120) -> list[str]:
    """Real documents of at least `min_words` words: WET pages, WikiText-2 articles, Botchan chunks."""
    from warcio.archiveiterator import ArchiveIterator

    texts = []
    with open(shared_data / "wet" / "CC-MAIN-2019-30-697-docs.warc.wet.gz", "rb") as stream:
        for record in ArchiveIterator(stream):
            if record.rec_type == "conversion":
                texts.append(record.content_stream().read().decode("utf-8", "replace"))
    wiki = (shared_data / "wikipedia" / "en" / "wikitext2-valid.tokens.txt").read_text(encoding="utf-8")
    texts += [a.strip() for a in re.split(r"\n = [^=\n]+ = \n", wiki)]
    botchan = (shared_data / "text" / "botchan.en.txt").read_text(encoding="utf-8")
    paragraphs = [p for p in botchan.split("\n\n") if p.strip()]
    texts += ["\n\n".join(paragraphs[i:i + 12]) for i in range(0, len(paragraphs), 12)]
    return [t for t in texts if len(t.split()) >= min_words]


def _truncate_words(text: str, max_words: int) -> str:
    """The first `max_words` words of a text, keeping its line structure."""
    out, n = [], 0
    for line in text.split("\n"):
        words = line.split()
        if n + len(words) > max_words:
            out.append(" ".join(words[: max_words - n]))
            break
        out.append(line)
        n += len(words)
    return "\n".join(out)


def _edit(text: str, kind: str, amount: int, rng: random.Random, filler: list[str]) -> str:
    if kind == "substitute":
        words = text.split(" ")
        for i in rng.sample(range(len(words)), min(amount, len(words))):
            words[i] = rng.choice(filler).split()[0] if filler else "x"
        return " ".join(words)
    if kind == "insert":
        lines = text.split("\n")
        for _ in range(amount):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(filler))
        return "\n".join(lines)
    if kind == "reorder":
        words = text.split(" ")
        cut = sorted(rng.sample(range(1, len(words)), min(amount, len(words) - 1)))
        blocks = [words[a:b] for a, b in zip([0, *cut], [*cut, len(words)])]
        rng.shuffle(blocks)
        return " ".join(w for block in blocks for w in block)
    if kind == "truncate":
        words = text.split(" ")
        return " ".join(words[: max(1, len(words) - amount)])
    raise ValueError(kind)


def variant(text: str, target: float, kind: str, rng: random.Random, filler: list[str]) -> str:
    """The smallest amount of `kind` edits (searched by doubling, then bisection) bringing the exact
    Jaccard with `text` to at most `target` (the text itself for target 1)."""
    if target >= 1.0:
        return text
    base = shingles(text)
    seed = rng.random()

    def make(amount: int) -> tuple[str, float]:
        edited = _edit(text, kind, amount, random.Random(seed), filler)
        return edited, jaccard(base, shingles(edited))

    lo, hi = 0, 1
    while make(hi)[1] > target:
        lo, hi = hi, hi * 2
        if hi > 4 * len(text.split()):
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if make(mid)[1] > target:
            lo = mid
        else:
            hi = mid
    return make(hi)[0]


def make_corpus(shared_data: Path, originals: int = 60, seed: int = 0, words: int = 300,
                dup_targets=(1.0, 0.97, 0.93, 0.9), far_targets=(0.7, 0.5, 0.3)) -> list[dict]:
    """Documents {"url", "raw_content", "group", "kind", "target"}: `originals` real texts (about
    `words` words each), and per original one variant per target, each by a random kind of edit."""
    rng = random.Random(seed)
    texts = real_texts(shared_data, min_words=words)
    rng.shuffle(texts)
    chosen, sets = [], []
    for t in texts:  # distinct originals only (WET pages of one site can share most of a page)
        t = _truncate_words(t, words)
        s = shingles(t)
        if all(jaccard(s, o) < 0.3 for o in sets):
            chosen.append(t)
            sets.append(s)
        if len(chosen) == originals:
            break
    # Boilerplate-like lines (4 to 12 words) from real documents that are not originals.
    filler = [line.strip() for t in texts[-200:] for line in t.split("\n") if 4 <= len(line.split()) <= 12]
    docs = []
    for g, text in enumerate(chosen):
        docs.append({"url": f"https://example.org/{g}/original", "raw_content": text, "group": g,
                     "kind": "original", "target": 1.0})
        for k, target in enumerate((*dup_targets, *far_targets)):
            kind = rng.choice(EDITS)
            docs.append({"url": f"https://example.org/{g}/v{k}-{kind}",
                         "raw_content": variant(text, target, kind, rng, filler),
                         "group": g, "kind": kind, "target": target})
    return docs


def truth_pairs(docs: list[dict], threshold: float = 0.8, ngram: int = 5) -> set[tuple[int, int]]:
    """Pairs (i < j) in the same connected component of 'exact Jaccard ≥ threshold'."""
    sets = [shingles(d["raw_content"], ngram) for d in docs]
    parent = list(range(len(docs)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    postings: dict = {}
    for i, s in enumerate(sets):
        for shingle in s:
            postings.setdefault(shingle, []).append(i)
    common: Counter = Counter()  # |A ∩ B| of every pair sharing a shingle (all others have J = 0)
    for idx in postings.values():
        common.update(combinations(idx, 2))
    for (i, j), n in common.items():
        if n / (len(sets[i]) + len(sets[j]) - n) >= threshold:
            parent[find(i)] = find(j)
    return cluster_pairs([find(i) for i in range(len(docs))])


def cluster_pairs(labels: list) -> set[tuple[int, int]]:
    """All pairs (i < j) with the same label."""
    members: dict = {}
    for i, label in enumerate(labels):
        members.setdefault(label, []).append(i)
    return {(i, j) for idx in members.values() for i, j in combinations(idx, 2)}


def precision_recall(predicted: set, truth: set) -> tuple[float, float]:
    tp = len(predicted & truth)
    return (tp / len(predicted) if predicted else 1.0), (tp / len(truth) if truth else 1.0)


def real_documents(shared_data: Path) -> dict[str, list[str]]:
    """Documents by language: Botchan and Wagahai wa Neko de Aru cut into runs of paragraphs,
    and the CMRC 2018 Chinese Wikipedia passages."""
    docs = {}
    for lang, name, per_doc in (("en", "botchan.en.txt", 12), ("ja", "wagahaiwa_nekodearu.ja.txt", 40)):
        lines = (shared_data / "text" / name).read_text(encoding="utf-8").split("\n")
        docs[lang] = ["\n".join(lines[i:i + per_doc]) for i in range(0, len(lines), per_doc)]
    zh = []
    for name in ("cmrc2018_trial.json", "cmrc2018_dev.json"):
        for article in json.loads((shared_data / "wikipedia" / "zh" / name).read_text(encoding="utf-8"))["data"]:
            zh.extend(p["context"] for p in article["paragraphs"])
    docs["zh"] = zh
    return {lang: [d for d in texts if d.strip()] for lang, texts in docs.items()}
