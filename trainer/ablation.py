"""Does curation train a better model? What `python -m trainer.ablate` runs (settings: trainer.config.AblationConfig).

From one curation run, arms of documents with the same token budget:
- `head`, `middle`, `tail`: the CCNet perplexity buckets of `language` (RUN/curated/language=/bucket=);
- `wikiref`: that language's documents with the highest `wikiref_score` first;
- `curated`: every kept document of that language; `c4`: those that pass C4's rules (when the run marked them);
- `raw`: the phase-1 documents (RUN/segments/, before line dedup, language ID and MinHash; any language).
One SentencePiece tokenizer (`tokenizer.train`) learns from all arms; each arm becomes a token shard
(`tokenizer.shards.ShardWriter`); the same small LLaMA (`trainer.pretrain`) trains on each, once per seed.

Two evaluation sets no model saw:
- `wikipedia`: articles of `--wikipedia` (WikiText-2's test file by default, which `make pipeline` keeps
  out of `make lm`), less any whose title or a paragraph (normalized as CCNet does) occurs in the text
  the KenLM models (`--lm`/manifest.json: its sources) or the wikiref classifier (`--wikiref`/manifest.json:
  its Wikipedia input) learned from; arm documents holding one of its paragraphs are dropped too;
- `raw`: a seeded slice of the phase-1 documents (by a hash of the URL), removed from every arm by URL.
Loss (nats per token) and bits per byte (loss × the set's tokens per UTF-8 byte / ln 2: comparable across
tokenizers) per set, arm and seed → DIR/results.json, DIR/ablate.png; the run's report.html shows them
when DIR is RUN/ablate.

The budget: every arm trains on exactly `token_budget` distinct tokens (null: the smallest arm's, so none
repeats more than another) for the same steps; an arm with fewer tokens than a fixed budget is marked
`short` (it sees its tokens more often). Arms are held in memory: ablations are small runs by design.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from curation.normalize import normalize
from curation.wikipedia import read_articles
from tokenizer import train as tokenizer_train
from tokenizer.encode import load_processor
from tokenizer.shards import ShardWriter
from trainer.config import ARMS, AblationConfig, TrainConfig
from trainer.data import TokenWindows, find_shards
from trainer.pretrain import load_checkpoint, model_from_checkpoint, train

BUCKET_ARMS = ARMS[:3]  # head, middle, tail
EVAL_SETS = ("wikipedia", "raw")
MIN_PARAGRAPH_CHARS = 100  # shorter normalized lines ("Early life", "References") are shared by unrelated articles
EVAL_BATCH = 16  # windows per forward when evaluating (no gradients: larger batches are cheaper per token)
FINAL_LOSS_STEPS = 10  # the final training loss is the mean of this many last steps (one step is noisy)


@dataclass
class Document:
    url: str
    text: str


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seeded_fraction(key: str, seed: int) -> float:
    """A stable number in [0, 1) per key and seed."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / 2**64


def paragraph_hashes(text: str) -> set[str]:
    """Hashes of the text's long lines, normalized as CCNet normalizes (case, accents, digits, punctuation)."""
    lines = (normalize(line) for line in text.split("\n"))
    return {text_hash(line) for line in lines if len(line) >= MIN_PARAGRAPH_CHARS}


# --- the run's documents ---

def read_parquet(path: Path | list[str], columns: list[str], partitioning: str | None = None) -> dict[str, list]:
    dataset = ds.dataset(path, format="parquet", partitioning=partitioning)
    present = [c for c in columns if c in dataset.schema.names]
    table = dataset.to_table(columns=present)
    return {c: table.column(c).to_pylist() for c in present}


def arm_candidates(run_dir: Path, cfg: AblationConfig) -> dict[str, list[Document]]:
    """Each arm's documents in its order (seeded, or by wikiref_score), before the held-out removals."""
    curated = read_parquet(run_dir / "curated", ["url", "raw_content", "language", "bucket", "wikiref_score",
                                                 "c4_keep"], partitioning="hive")
    segments = sorted((run_dir / "segments").glob("*.parquet"))
    if not segments:
        raise FileNotFoundError(f"{run_dir}/segments: no phase-1 Parquet (is {run_dir} a curate run directory?)")
    raw = read_parquet([str(p) for p in segments], ["url", "raw_content"])  # beside them: each segment's stats
    rows = [dict(zip(curated, values)) for values in zip(*curated.values())]
    rows = [r for r in rows if r["raw_content"] and (cfg.language is None or r["language"] == cfg.language)]

    def seeded(docs: list[dict]) -> list[Document]:
        docs = sorted(docs, key=lambda d: seeded_fraction(d["url"] + "\0" + d["raw_content"], cfg.split_seed))
        return [Document(d["url"], d["raw_content"]) for d in docs]

    arms = {bucket: seeded([r for r in rows if r["bucket"] == bucket]) for bucket in BUCKET_ARMS}
    scored = sorted((r for r in rows if r.get("wikiref_score") is not None), key=lambda r: -r["wikiref_score"])
    arms["wikiref"] = [Document(r["url"], r["raw_content"]) for r in scored]
    arms["curated"] = seeded(rows)
    if "c4_keep" in curated:
        arms["c4"] = seeded([r for r in rows if r["c4_keep"]])
    arms["raw"] = seeded([{"url": u, "raw_content": t} for u, t in zip(raw["url"], raw["raw_content"]) if t])
    return arms


# --- the evaluation sets, and the checks that no model saw them ---

def trained_wikipedia(lm_dir: Path, wikiref_dir: Path) -> tuple[set[str], set[str], list[str]]:
    """Titles and paragraph hashes of every article the KenLM models and the wikiref classifier read,
    from the sources their manifests record (read again with the readers they used)."""
    titles, paragraphs, sources = set(), set(), []
    lm_manifest = json.loads((lm_dir / "manifest.json").read_text())
    sources += [source for entry in lm_manifest.get("languages", {}).values() for source in entry["sources"]]
    # The classifier read wikitext (its cited URLs; with the fallback, its passages): as plain text, the same articles.
    sources += json.loads((wikiref_dir / "manifest.json").read_text())["inputs"]["wikipedia"]
    for source in sources:
        for article in read_articles(source):
            titles.add(article.title)
            paragraphs |= paragraph_hashes(article.text)
    return titles, paragraphs, sources


def wikipedia_eval(sources: list[str], lm_dir: Path, wikiref_dir: Path) -> tuple[list[Document], dict]:
    """The held-out articles no model learned from: checked by title and by paragraph."""
    for path in (lm_dir / "manifest.json", wikiref_dir / "manifest.json"):
        if not path.exists():
            raise FileNotFoundError(f"{path}: needed to check that the evaluation text was not trained on "
                                    f"(pass --lm / --wikiref, the directories `make lm` / `make classifier` wrote)")
    titles, paragraphs, trained_sources = trained_wikipedia(lm_dir, wikiref_dir)
    kept, by_title, by_text = [], 0, 0
    for source in sources:
        for article in read_articles(source):
            if article.title in titles:
                by_title += 1
            elif paragraph_hashes(article.text) & paragraphs:
                by_text += 1
            else:
                kept.append(Document(f"wikipedia:{source}#{article.title}", article.text))
    check = {"sources": sources, "articles": len(kept), "dropped_title_trained": by_title,
             "dropped_text_trained": by_text, "checked_against": trained_sources}
    if not kept:
        raise ValueError(f"every article of {sources} was read by the KenLM or wikiref training ({check}): "
                         f"hold some out of `make lm` (WIKI_HELDOUT) or pass other --wikipedia text")
    return kept, check


def remove_held_out(arms: dict[str, list[Document]], raw_urls: set[str], raw_texts: set[str],
                    wiki_paragraphs: set[str]) -> dict[str, dict]:
    """Drops from every arm the held-out raw documents (by URL or text) and any document holding a
    held-out Wikipedia paragraph; returns what each arm lost."""
    removed = {}
    for name, docs in arms.items():
        by_raw = [d for d in docs if d.url in raw_urls or text_hash(d.text) in raw_texts]
        left = [d for d in docs if not (d.url in raw_urls or text_hash(d.text) in raw_texts)]
        kept = [d for d in left if not (paragraph_hashes(d.text) & wiki_paragraphs)]
        removed[name] = {"raw_heldout": len(by_raw), "wikipedia_paragraph": len(left) - len(kept)}
        arms[name] = kept
    return removed


# --- tokens ---

def encode(sp, docs: list[Document], limit: int) -> tuple[list[np.ndarray], int]:
    """Token arrays (BOS … EOS) of the documents in order until `limit` tokens (the last one cut there)."""
    arrays, total = [], 0
    for start in range(0, len(docs), 256):
        batch = [d.text for d in docs[start:start + 256]]
        for ids in sp.encode(batch, out_type="numpy", add_bos=True, add_eos=True):
            ids = ids[:limit - total]
            arrays.append(ids)
            total += ids.size
            if total >= limit:
                return arrays, total
    return arrays, total


def write_shard(prefix: Path, arrays: list[np.ndarray], vocab_size: int, sha256: bytes) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(prefix, vocab_size, sha256) as writer:
        for ids in arrays:
            writer.add_document(ids)


def train_tokenizer(arms: dict[str, list[Document]], out: Path, cfg: AblationConfig) -> Path:
    """One tokenizer for every arm, on the union of their documents (each once)."""
    seen, texts = set(), []
    for docs in arms.values():
        for d in docs:
            key = text_hash(d.text)
            if key not in seen:
                seen.add(key)
                texts.append(d.text)
    sample = out / "tokenizer" / "sample"
    sample.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"raw_content": texts}), sample / "documents.parquet")
    tokenizer_train.train(sample, out / "tokenizer", cfg.vocab_size, seed=cfg.split_seed, max_chars=cfg.tokenizer_chars,
                          character_coverage=cfg.character_coverage, threads=cfg.threads)
    shutil.rmtree(sample)
    return out / "tokenizer" / "tokenizer.model"


# --- models ---

@torch.no_grad()
def evaluate(model: torch.nn.Module, eval_dir: Path, seq_len: int, batch_size: int) -> float:
    """Mean loss per token over every window of the set."""
    windows = TokenWindows(find_shards(eval_dir, "val"), seq_len)
    model.eval()
    total, count = 0.0, 0
    for first in range(0, len(windows), batch_size):
        x, y = windows.batch(range(first, min(first + batch_size, len(windows))))
        total += model(x, y)[1].item() * y.numel()
        count += y.numel()
    return total / count


def spread(values: list[float]) -> dict:
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max())}


def summarize(arms: dict) -> dict:
    return {name: {s: {metric: spread([r["eval"][s][metric] for r in arm["runs"]]) for metric in ("loss", "bpb")}
                   for s in EVAL_SETS} for name, arm in arms.items() if arm.get("runs")}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["summary"])
    fig, axes = plt.subplots(1, len(EVAL_SETS), figsize=(4.5 * len(EVAL_SETS), 3.6), squeeze=False)
    for ax, eval_set in zip(axes[0], EVAL_SETS):
        for i, name in enumerate(names):
            losses = [r["eval"][eval_set]["loss"] for r in results["arms"][name]["runs"]]
            ax.scatter([i] * len(losses), losses, color="#4c72b0", s=12, alpha=0.6)
            ax.errorbar(i, np.mean(losses), yerr=[[np.mean(losses) - min(losses)], [max(losses) - np.mean(losses)]],
                        fmt="o", color="#c44e52", capsize=4)
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.set_title(f"held-out {eval_set}")
        ax.set_ylabel("loss (nats/token): mean, seed range")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table(results: dict) -> str:
    """Markdown: arm × evaluation set, mean ± standard deviation over seeds (loss, then bits per byte)."""
    header = "| arm | tokens | " + " | ".join(f"{s} loss | {s} bpb" for s in EVAL_SETS) + " |"
    rows = [header, "|" + "---|" * (2 + 2 * len(EVAL_SETS))]
    for name, sets in results["summary"].items():
        arm = results["arms"][name]
        cells = [f"{sets[s][m]['mean']:.3f} ± {sets[s][m]['std']:.3f}" for s in EVAL_SETS for m in ("loss", "bpb")]
        rows.append(f"| {name}{' (short)' if arm['short'] else ''} | {arm['tokens']:,} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def evaluation_sets(raw: list[Document], cfg: AblationConfig) -> tuple[dict[str, list[Document]], dict]:
    """The held-out Wikipedia articles (checked against what the models read) and a seeded slice of the
    phase-1 documents, each in a seeded order; and the Wikipedia check."""
    wiki_docs, wiki_check = wikipedia_eval(cfg.wikipedia, Path(cfg.lm), Path(cfg.wikiref))
    wiki_docs.sort(key=lambda d: seeded_fraction(d.url + "\0" + d.text, cfg.split_seed))  # not the file's first few
    raw_eval = [d for d in raw if seeded_fraction(d.url, cfg.split_seed) < cfg.raw_heldout_fraction]
    if not raw_eval:
        raise ValueError(f"raw_heldout_fraction={cfg.raw_heldout_fraction} of {len(raw)} phase-1 documents "
                         f"holds none out")
    return {"wikipedia": wiki_docs, "raw": raw_eval}, wiki_check


def training_arms(candidates: dict[str, list[Document]], eval_sets: dict[str, list[Document]],
                  cfg: AblationConfig) -> tuple[dict[str, list[Document]], dict[str, dict]]:
    """The arms asked for that the run has, less every evaluation document; and what each arm lost."""
    arms = {name: candidates[name] for name in cfg.arms if name in candidates}
    raw_eval = eval_sets["raw"]
    wiki_paragraphs = set().union(*(paragraph_hashes(d.text) for d in eval_sets["wikipedia"]))
    removed = remove_held_out(arms, {d.url for d in raw_eval}, {text_hash(d.text) for d in raw_eval}, wiki_paragraphs)
    empty = [name for name, docs in arms.items() if not docs]
    if empty:
        raise ValueError(f"arms {empty} have no documents in {cfg.run} (language={cfg.language!r})")
    return arms, removed


def write_eval_sets(sp, eval_sets: dict[str, list[Document]], out: Path, sha256: bytes, cfg: AblationConfig) -> dict:
    """Each evaluation set as a validation shard of up to eval_tokens; its documents, tokens and UTF-8 bytes."""
    info = {}
    for name, docs in eval_sets.items():
        arrays, tokens = encode(sp, docs, cfg.eval_tokens)
        texts = [d.text for d in docs[:len(arrays)]]
        # A cut last document counts only the bytes of its share of tokens.
        nbytes = sum(len(t.encode("utf-8")) for t in texts[:-1])
        last = sp.encode(texts[-1], add_bos=True, add_eos=True)
        nbytes += len(texts[-1].encode("utf-8")) * arrays[-1].size // len(last)
        write_shard(out / "eval" / name / "val-00000", arrays, sp.get_piece_size(), sha256)
        info[name] = {"documents": len(arrays), "tokens": tokens, "bytes": nbytes,
                      "urls": sorted({d.url for d in docs[:len(arrays)]})}
    return info


def write_arm(out: Path, name: str, docs: list[Document], arrays: list[np.ndarray], budget: int, vocab: int,
              sha256: bytes) -> dict:
    """The arm's first `budget` tokens as its training shard, beside the held-out Wikipedia validation shard
    (the trainer's own evaluation), and the URLs of its documents."""
    kept, total = [], 0
    for ids in arrays:
        if total >= budget:
            break
        kept.append(ids[:budget - total])
        total += kept[-1].size
    data_dir = out / "arms" / name
    shutil.rmtree(data_dir, ignore_errors=True)
    write_shard(data_dir / "train-00000", kept, vocab, sha256)
    for suffix in (".bin", ".idx"):
        shutil.copy(out / "eval" / "wikipedia" / f"val-00000{suffix}", data_dir / f"val-00000{suffix}")
    (data_dir / "urls.txt").write_text("".join(d.url + "\n" for d in docs[:len(kept)]))
    return {"documents": len(kept), "available_documents": len(docs), "tokens": total, "short": total < budget}


def train_and_evaluate(out: Path, name: str, seed: int, cfg: AblationConfig, eval_info: dict) -> dict:
    """One model trained on one arm with one seed, and its loss and bits per byte on each evaluation set."""
    model_dir = out / "models" / name / f"seed-{seed}"
    shutil.rmtree(model_dir, ignore_errors=True)
    tc = TrainConfig(preset=cfg.preset, data_dir=str(out / "arms" / name), out_dir=str(model_dir),
                     seq_len=cfg.seq_len, batch_size=cfg.batch_size, max_steps=cfg.max_steps, lr=cfg.lr,
                     eval_interval=0, eval_batches=cfg.eval_batches, ckpt_interval=cfg.max_steps,
                     log_interval=max(1, cfg.max_steps // 5), seed=seed, resume=False)
    trained = train(tc)
    model = model_from_checkpoint(load_checkpoint(trained["model"]))
    run = {"seed": seed, "steps": cfg.max_steps, "tokens_trained": cfg.max_steps * cfg.batch_size * cfg.seq_len,
           "final_train_loss": float(np.mean(trained["losses"][-FINAL_LOSS_STEPS:])), "eval": {}}
    for eval_set in EVAL_SETS:
        loss = evaluate(model, out / "eval" / eval_set, cfg.seq_len, EVAL_BATCH)
        info = eval_info[eval_set]
        run["eval"][eval_set] = {"loss": loss, "bpb": loss * info["tokens"] / info["bytes"] / math.log(2)}
    print(f"ablate: {name} seed {seed}: " + ", ".join(
        f"{s} {v['loss']:.3f} nats/token, {v['bpb']:.3f} bpb" for s, v in run["eval"].items()))
    return run


def save_results(results: dict, run_dir: Path, out: Path) -> None:
    """results.json, results.md and ablate.png; the run's report.html too when `out` is RUN/ablate."""
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out / "ablate.png")
    (out / "results.md").write_text(table(results) + "\n")
    if out.resolve() == (run_dir / "ablate").resolve() and (run_dir / "stats.json").exists():
        from curation.report import write_report

        write_report(run_dir)


def run_ablation(cfg: AblationConfig) -> dict:
    """The ablation of the module's docstring, from the run `cfg.run` into `cfg.output`; returns results.json."""
    started = time.perf_counter()
    run_dir, out = Path(cfg.run), Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    candidates = arm_candidates(run_dir, cfg)
    eval_sets, wiki_check = evaluation_sets(candidates["raw"], cfg)
    arms, removed = training_arms(candidates, eval_sets, cfg)
    model_path = train_tokenizer(arms, out, cfg)
    sp = load_processor(str(model_path))
    sha256, vocab = hashlib.sha256(model_path.read_bytes()).digest(), sp.get_piece_size()
    eval_info = write_eval_sets(sp, eval_sets, out, sha256, cfg)
    eval_info["wikipedia"]["check"] = wiki_check

    encoded = {name: encode(sp, docs, cfg.max_tokens) for name, docs in arms.items()}
    smallest = min(encoded, key=lambda name: encoded[name][1])
    budget = cfg.token_budget or encoded[smallest][1]
    results = {"run": str(run_dir), "settings": asdict(cfg),
               "tokenizer": {"path": str(model_path), "vocab_size": vocab}, "token_budget": budget,
               "budget_from": "token_budget" if cfg.token_budget else f"the smallest arm, {smallest}",
               "skipped_arms": [name for name in cfg.arms if name not in candidates], "eval_sets": eval_info,
               "arms": {}}
    for name, docs in arms.items():
        written = write_arm(out, name, docs, encoded[name][0], budget, vocab, sha256)
        results["arms"][name] = {**written, "removed": removed[name], "runs": []}
    for name in arms:
        for seed in cfg.seeds:
            results["arms"][name]["runs"].append(train_and_evaluate(out, name, seed, cfg, eval_info))
    results["summary"] = summarize(results["arms"])
    results["seconds"] = round(time.perf_counter() - started, 1)
    save_results(results, run_dir, out)
    return results
