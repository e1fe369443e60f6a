"""Look inside a token shard: `python -m tokenizer.inspect PATH [--json] [--decode K] [--tokenizer MODEL]`.

PATH is a shard (`DIR/train-00000`, or its `.bin`/`.idx`). Prints the header, the counts, a histogram
of document lengths and the first documents decoded back to text. `--json` prints the header and the
counts as one JSON object; `--decode K` prints the first K documents decoded, one JSON string a line.
The tokenizer is found beside the shard (`tokenizer-<hash>.model`, the copy the shard job keeps) unless
given; it must be the one whose SHA-256 the shard records. The shard is validated first (header,
sizes, every token id below the vocabulary size): a bad one is refused with the file named."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from tokenizer.shards import ShardError, ShardReader, tokenizer_hash


def shard_prefix(path: str) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".bin", ".idx") else p


def find_tokenizer(reader: ShardReader, given: str | None) -> Path:
    """The given model, or the job's copy beside the shard, checked against the shard's hash."""
    candidates = [Path(given)] if given else sorted(Path(reader.idx_path).parent.glob("tokenizer-*.model"))
    for model in candidates:
        model = model / "tokenizer.model" if model.is_dir() else model
        if tokenizer_hash(model) == reader.tokenizer_sha256:
            return model
    raise ShardError(f"{reader.idx_path}: no tokenizer with sha256 {reader.tokenizer_sha256.hex()[:16]}… "
                     f"({'not ' + str(given) if given else 'none beside the shard'}); pass --tokenizer MODEL")


def length_histogram(reader: ShardReader) -> list[tuple[int, int, int]]:
    """(low, high, documents) for power-of-two ranges of document length in tokens."""
    lengths = np.diff(np.asarray(reader.offsets, dtype=np.int64))
    if not lengths.size:
        return []
    bins = np.floor(np.log2(np.maximum(lengths, 1))).astype(int)
    counts = np.bincount(bins)
    return [(2**b, 2**(b + 1) - 1, int(c)) for b, c in enumerate(counts) if c]


def summary(reader: ShardReader) -> dict:
    lengths = np.diff(np.asarray(reader.offsets, dtype=np.int64))
    return {**reader.header(),
            "doc_tokens_min": int(lengths.min()) if lengths.size else 0,
            "doc_tokens_mean": round(float(lengths.mean()), 1) if lengths.size else 0.0,
            "doc_tokens_max": int(lengths.max()) if lengths.size else 0}


def decoded(reader: ShardReader, model: Path, count: int) -> list[str]:
    """The first `count` documents as text (BOS/EOS are control pieces: decoding drops them)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    return [sp.decode(reader.document(i).tolist()) for i in range(min(count, len(reader)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="shard prefix, or its .bin or .idx file")
    parser.add_argument("--json", action="store_true", help="header and counts as one JSON object")
    parser.add_argument("--decode", type=int, metavar="K", help="print the first K documents, one JSON string a line")
    parser.add_argument("--tokenizer", help="tokenizer model or directory (default: the copy beside the shard)")
    args = parser.parse_args(argv)
    try:
        reader = ShardReader(shard_prefix(args.path))
        reader.validate()
        if args.json:
            print(json.dumps(summary(reader)))
        if args.decode is not None:
            for text in decoded(reader, find_tokenizer(reader, args.tokenizer), args.decode):
                print(json.dumps(text, ensure_ascii=False))
        if args.json or args.decode is not None:
            return 0
        for key, value in summary(reader).items():
            print(f"{key:>17}: {value}")
        print("document length (tokens):")
        width = max((c for _, _, c in length_histogram(reader)), default=1)
        for low, high, count in length_histogram(reader):
            print(f"  {low:>8}-{high:<8} {count:>8} {'#' * max(1, round(40 * count / width))}")
        for i, text in enumerate(decoded(reader, find_tokenizer(reader, args.tokenizer), 3)):
            print(f"--- document {i}: {json.dumps(text[:300], ensure_ascii=False)}{'…' if len(text) > 300 else ''}")
    except (ShardError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
