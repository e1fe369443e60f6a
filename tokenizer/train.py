"""Train the SentencePiece BPE tokenizer on curated Parquet:

    python -m tokenizer.train --input DIR [--output DIR] [KEY=VALUE…]   (--print-settings: them all)

Sampling is two streaming passes over the `raw_content` column: the first counts characters per
(language, bucket) group, the second keeps a document when a seeded hash of its text falls under the
group's rate. The sample therefore depends only on the input and the seed, never on file order or
on memory, and the mix between groups is a share of a character budget.

The trainer settings are those recorded in the trainer_spec of Meta's LLaMA tokenizer.model: BPE, digits
split one per piece, byte fallback (any UTF-8 encodes, so decoding gives the text back), identity
normalization, whitespace kept as is, character coverage 0.99995, sentences up to 4192 bytes, and the
special ids unk 0, bos 1, eos 2 with no pad piece, so the 256 byte pieces sit at ids 3-258 as in LLaMA's
vocabulary. They are recorded in the manifest beside the model."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as ds
import sentencepiece as spm

from curation.model_paths import TOKENIZER_DIR
from curation.settings import parse_command, setting
from tokenizer.encode import UNKNOWN, open_dataset, write_json_atomically
from tokenizer.shards import tokenizer_hash

SPECIAL_IDS = {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1}  # -1: no pad piece (LLaMA pads with eos or masks)
MAX_SENTENCE_BYTES = 4192  # LLaMA's max_sentence_length; SentencePiece skips longer lines when training
BATCH_ROWS = 1024


@dataclass(frozen=True)
class TokenizerSettings:
    """Settings of `python -m tokenizer.train`."""
    input: str | None = setting(None, "curated Parquet file or directory (needs raw_content)", required=True)
    output: str = setting(TOKENIZER_DIR, "directory for tokenizer.model and manifest.json")
    vocab_size: int = setting(32000, "pieces (fewer, with a message, when the sample is too small for them)",
                              minimum=260)
    seed: int = setting(0, "draws the sample and SentencePiece's sentence order: same seed, same model")
    max_chars: int = setting(200_000_000, "character budget of the sample", minimum=1)
    mix: dict[str, float] = setting({}, "shares of the sample by language or language/bucket (mix.en=0.7 "
                                        "mix.ja/head=0.3); {}: the input's own proportions", minimum=0)
    character_coverage: float = setting(0.99995, "LLaMA's: the rarest 0.005 % of characters are left to byte "
                                                 "fallback (lower it for a small vocabulary over CJK text)",
                                        minimum=0, maximum=1)
    threads: int | None = setting(None, "training threads (null: every core)", minimum=1)


def iter_documents(dataset: ds.Dataset):
    """Yields (language, bucket, text) for every non-empty `raw_content`, streaming by batch."""
    columns = [c for c in ("raw_content", "language", "bucket") if c in dataset.schema.names]
    for batch in dataset.to_batches(columns=columns, batch_size=BATCH_ROWS):
        data = batch.to_pydict()
        n = batch.num_rows
        langs = data.get("language", [None] * n)
        buckets = data.get("bucket", [None] * n)
        for text, lang, bucket in zip(data["raw_content"], langs, buckets):
            if text:
                yield str(lang or UNKNOWN), str(bucket or UNKNOWN), text


def doc_fraction(text: str, seed: int) -> float:
    """A stable number in [0, 1) for a document: the same text and seed always give the same one."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / 2**64


def group_budgets(chars: dict[tuple[str, str], int], mix: dict[str, float],
                  max_chars: int) -> dict[tuple[str, str], int]:
    """Characters to take per group. Without a mix, groups keep their natural proportions; with
    one, each named language (or language/bucket) gets its share, split among its buckets by size."""
    total = sum(chars.values())
    if not mix:
        return {g: round(n * min(1.0, max_chars / total)) if total else 0 for g, n in chars.items()}
    weight_total = sum(mix.values())
    budgets = {}
    for key, weight in mix.items():
        lang, _, bucket = key.partition("/")
        members = {g: n for g, n in chars.items() if g[0] == lang and (not bucket or g[1] == bucket)}
        size = sum(members.values())
        for g, n in members.items():
            budgets[g] = budgets.get(g, 0) + round(max_chars * weight / weight_total * n / size)
    return budgets


def write_sample(input_path, sample_file, seed: int, max_chars: int, mix: dict[str, float]) -> dict:
    """Writes the sampled documents line by line (SentencePiece trains on lines); returns counts (of nothing
    when the budget is below the size of the few documents it could draw)."""
    dataset = open_dataset(input_path)
    chars = Counter()
    for lang, bucket, text in iter_documents(dataset):
        chars[(lang, bucket)] += len(text)
    if not chars:
        raise ValueError(f"{input_path}: no documents with a non-empty raw_content")
    budgets = group_budgets(chars, mix, max_chars)
    rates = {g: min(1.0, budgets.get(g, 0) / n) for g, n in chars.items()}
    docs, kept_chars, sentences, long_lines = Counter(), Counter(), 0, Counter()
    with open(sample_file, "w", encoding="utf-8") as out:
        for lang, bucket, text in iter_documents(dataset):
            if doc_fraction(text, seed) >= rates[(lang, bucket)]:
                continue
            docs[(lang, bucket)] += 1
            kept_chars[(lang, bucket)] += len(text)
            for line in text.split("\n"):
                if len(line.encode("utf-8")) > MAX_SENTENCE_BYTES:
                    # SentencePiece would skip it with a log line; counted here instead.
                    long_lines["lines"] += 1
                    long_lines["characters"] += len(line)
                elif line.strip():
                    out.write(line + "\n")
                    sentences += 1
    return {"documents": sum(docs.values()), "characters": sum(kept_chars.values()), "sentences": sentences,
            "long_lines_left_out": {"lines": long_lines["lines"], "characters": long_lines["characters"]},
            "groups": {f"{lang}/{b}": {"input_characters": chars[(lang, b)], "documents": docs[(lang, b)],
                                       "characters": kept_chars[(lang, b)]} for lang, b in sorted(chars)}}


def trainer_options(sample_file: str, model_prefix: str, vocab_size: int,
                    character_coverage: float, threads: int) -> dict:
    return dict(input=sample_file, model_prefix=model_prefix, model_type="bpe", vocab_size=vocab_size,
                split_digits=True, byte_fallback=True, normalization_rule_name="identity",
                remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
                split_by_unicode_script=True, split_by_whitespace=True, split_by_number=True,
                max_sentencepiece_length=16, character_coverage=character_coverage,
                max_sentence_length=MAX_SENTENCE_BYTES, shuffle_input_sentence=True,
                num_threads=threads, minloglevel=2, **SPECIAL_IDS)


# SentencePiece's BPE trainer fills any vocabulary size, merging pieces seen once or twice when the
# sample is small: such a vocabulary memorises the sample rather than the language. We allow at most
# one piece per this many sampled characters.
CHARS_PER_PIECE = 100


def fitted_vocab_size(requested: int, sample_chars: int) -> int:
    """The requested size, or a smaller one (with a message) when the sample cannot support it."""
    limit = max(sample_chars // CHARS_PER_PIECE, 1)
    if requested <= limit:
        return requested
    print(f"tokenizer: a sample of {sample_chars:,} characters supports at most {limit:,} pieces "
          f"({CHARS_PER_PIECE} characters a piece); training {limit:,} instead of {requested:,}",
          file=sys.stderr)
    return limit


def train(input_path, output_dir, vocab_size: int = TokenizerSettings.vocab_size,
          seed: int = TokenizerSettings.seed, max_chars: int = TokenizerSettings.max_chars,
          mix: dict[str, float] | None = None, character_coverage: float = TokenizerSettings.character_coverage,
          threads: int | None = None) -> dict:
    """Samples `input_path`, trains and publishes `tokenizer.model` + `manifest.json` in output_dir; returns the
    manifest."""
    def sample(sample_file: str) -> dict:
        return write_sample(input_path, sample_file, seed, max_chars, mix or {})

    return train_on_sample(sample, output_dir, vocab_size, seed, character_coverage, threads,
                           {"input": str(input_path), "max_chars": max_chars, "mix": mix or {}})


def train_on_sample(write: Callable[[str], dict], output_dir, vocab_size: int, seed: int, character_coverage: float,
                    threads: int | None, about: dict) -> dict:
    """Trains on the lines `write(path)` puts in a file (returning their counts, as `write_sample` does) and
    publishes `tokenizer.model` + `manifest.json` (with `about`: what the sample was drawn from) in output_dir;
    returns the manifest. `jobs.mixture` writes a sample of several sources this way."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or os.cpu_count() or 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".train-") as tmp:
        sample_file = os.path.join(tmp, "sample.txt")
        sample = write(sample_file)
        if not sample["sentences"]:
            raise ValueError(f"the tokenizer's sample is empty (drawn from {about})")
        trained_size = fitted_vocab_size(vocab_size, sample["characters"] - sample["long_lines_left_out"]["characters"])
        options = trainer_options(sample_file, os.path.join(tmp, "tokenizer"), trained_size,
                                  character_coverage, threads)
        spm.set_random_generator_seed(seed)  # sentence shuffling draws from it: same seed, same model
        spm.SentencePieceTrainer.train(**options)
        # Publish the model by rename so that a reader never sees half of one.
        os.replace(os.path.join(tmp, "tokenizer.model"), output_dir / "tokenizer.model")
    model_path = output_dir / "tokenizer.model"
    manifest = {
        "model": "tokenizer.model", "sha256": tokenizer_hash(model_path).hex(),
        "model_type": "bpe", "vocab_size": trained_size, "requested_vocab_size": vocab_size,
        **SPECIAL_IDS, **about, "seed": seed, "sample": sample,
        "settings": {k: v for k, v in options.items() if k not in ("input", "model_prefix", "minloglevel")},
        "sentencepiece_version": spm.__version__, "seconds": round(time.perf_counter() - started, 2),
    }
    write_json_atomically(output_dir / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    settings = parse_command(TokenizerSettings, argv, prog="python -m tokenizer.train", description=__doc__,
                             flags={"--input": "input", "--output": "output"})
    manifest = train(settings.input, settings.output, settings.vocab_size, settings.seed, settings.max_chars,
                     settings.mix, settings.character_coverage, settings.threads)
    print(json.dumps({k: manifest[k] for k in ("sha256", "vocab_size", "requested_vocab_size")}
                     | {"documents": manifest["sample"]["documents"], "characters": manifest["sample"]["characters"]}))


if __name__ == "__main__":
    main()
