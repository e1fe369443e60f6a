"""Curated Parquet into token shards, in steps that need no Spark (`jobs/shards.py` runs them on one).

1. `list_units`: the input's Parquet row groups, cut in row ranges of at most UNIT_TEXT_BYTES of text,
   are the units of work; the driver reads only the files' footers.
2. `encode_unit`: one unit streamed by batch; each document goes to the validation split when a
   seeded hash of its text falls under `val_fraction`, is encoded (BOS/EOS as configured) and appended
   to the unit's part of its split, `parts/UNIT.train` / `parts/UNIT.val` (in the shard format); the
   sidecar `parts/UNIT.json` with the unit's counts is published last and marks it done.
3. `lay_out`: the units in an order drawn from the seed make one token stream per split; shard i holds
   the documents that start in [i·shard_tokens, (i+1)·shard_tokens) of that stream. The counts are
   exact (the parts are already encoded), so no estimate and no second encoding pass is needed.
4. `assemble_shard`: copies its documents' tokens from the parts and publishes the shard.

Nothing depends on scheduling, partitioning or timing: the same input files, tokenizer and settings
give byte-identical shards. Inside a unit, documents keep their order in the file; the seeded unit
order mixes row groups (languages, buckets) across shards, and the trainer draws windows from all
shards in a seeded order anyway. A document longer than `shard_tokens` leaves the shards whose range
it covers empty; they are still published, so that every planned name exists.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import sentencepiece as spm

from curation import storage
from curation.settings import setting
from tokenizer.shards import ShardReader, ShardWriter

SPLITS = ("train", "val")
UNKNOWN = "unknown"  # language or bucket of input without those columns
BATCH_ROWS = 1024  # documents read, hashed and encoded at a time
# Spark writes row groups of 128 MB, but pandas/pyarrow write up to 1Mi rows (gigabytes of text) in
# one; a unit reading a row range of such a group decodes (and skips) the rows before it as well.
UNIT_TEXT_BYTES = 128 << 20


@dataclass(frozen=True)
class ShardSettings:
    """How documents become token shards (recorded in plan.json: a rerun with others is refused)."""
    seed: int = setting(0, "draws the validation documents and the order of units in the shards")
    val_fraction: float = setting(0.01, "share of documents held out for validation", minimum=0, maximum=1)
    shard_tokens: int = setting(100_000_000, "target tokens per shard (a shard ends at a document boundary)",
                                minimum=1)
    add_bos: bool = setting(True, "BOS before each document (LLaMA)")
    add_eos: bool = setting(True, "EOS after each document")


@dataclass(frozen=True)
class Unit:
    """Rows [first_row, first_row + rows) of one Parquet row group: what one task encodes at a time."""
    name: str  # u00000…: its place in the sorted (path, row group, first row) list
    path: str  # as the dataset's filesystem names it
    row_group: int
    first_row: int  # within the row group
    rows: int
    text_bytes: int  # uncompressed size of its share of the raw_content column, for scheduling
    partition: dict  # Hive partition values of its file (language=xx/bucket=yy)


def shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:05d}"


def part_prefix(parts_dir: str | os.PathLike, unit: str, split: str) -> str:
    return storage.join(parts_dir, f"{unit}.{split}")


def sidecar_path(parts_dir: str | os.PathLike, unit: str) -> str:
    return storage.join(parts_dir, f"{unit}.json")


def open_dataset(path: str | os.PathLike) -> ds.Dataset:
    """Any Parquet file or directory (local, or a URI such as s3://: `curation.storage`; the published
    files of a directory that has a marker), Hive partitions as keys."""
    dataset = storage.parquet_dataset(path)
    if "raw_content" not in dataset.schema.names:
        raise ValueError(f"{path}: no raw_content column (columns: {dataset.schema.names})")
    return dataset


def list_units(dataset: ds.Dataset, unit_text_bytes: int = UNIT_TEXT_BYTES) -> list[Unit]:
    """Every row group of every file, in row ranges of about `unit_text_bytes` of text at most, sorted."""
    found = []
    for fragment in dataset.get_fragments():
        metadata = fragment.metadata
        partition = {k: str(v) for k, v in ds.get_partition_keys(fragment.partition_expression).items()}
        for i in range(metadata.num_row_groups):
            row_group = metadata.row_group(i)
            text_bytes = sum(row_group.column(c).total_uncompressed_size for c in range(row_group.num_columns)
                             if row_group.column(c).path_in_schema == "raw_content")
            rows, pieces = row_group.num_rows, max(1, -(-text_bytes // unit_text_bytes))
            cuts = [rows * k // pieces for k in range(pieces + 1)]
            found += [(fragment.path, i, first, last - first, text_bytes * (last - first) // rows, partition)
                      for first, last in zip(cuts, cuts[1:]) if last > first]
    return [Unit(f"u{n:05d}", *fields) for n, fields in enumerate(sorted(found, key=lambda f: f[:3]))]


def unit_order(units: list[Unit], seed: int) -> list[Unit]:
    """The units in an order drawn from the seed. Names follow the sorted paths, so the same files
    in another directory give the same order."""
    return sorted(units, key=lambda u: hashlib.sha256(f"{seed}\0{u.name}".encode()).digest())


@functools.lru_cache(maxsize=4)
def load_processor(model_path: str):
    """One SentencePiece processor per process and model (Spark reuses Python workers across tasks)."""
    return spm.SentencePieceProcessor(model_file=model_path)


def is_validation(texts: list[bytes], seed: int, val_fraction: float) -> np.ndarray:
    """Whether each document is held out: the first 32 bits of SHA-256(seed, NUL, text) under the fraction."""
    seeded, limit = hashlib.sha256(f"{seed}\0".encode()), int(val_fraction * 2**32)
    held_out = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        digest = seeded.copy()
        digest.update(text)
        held_out[i] = int.from_bytes(digest.digest()[:4], "big") < limit
    return held_out


def read_batches(unit: Unit, filesystem):
    """(texts as UTF-8 bytes, languages, buckets, empty documents left out) per batch of the unit's rows."""
    file = pq.ParquetFile(unit.path, filesystem=filesystem)
    present = [c for c in ("language", "bucket") if c in file.schema_arrow.names]
    begin, end, offset = unit.first_row, unit.first_row + unit.rows, 0  # rows within the row group
    for batch in file.iter_batches(batch_size=BATCH_ROWS, row_groups=[unit.row_group],
                                   columns=["raw_content", *present]):
        batch_start, offset = offset, offset + batch.num_rows
        if offset <= begin:
            continue  # before the unit's rows
        batch = batch.slice(max(begin - batch_start, 0), end - max(begin, batch_start))
        # Binary view of the strings: no decoding to str, hashed and encoded as they are.
        texts = batch.column("raw_content").cast(pa.binary()).to_pylist()
        labels = []
        for column in ("language", "bucket"):
            if column in present:
                labels.append([UNKNOWN if v is None else str(v) for v in batch.column(column).to_pylist()])
            else:
                labels.append([unit.partition.get(column, UNKNOWN)] * batch.num_rows)
        kept = [i for i, text in enumerate(texts) if text]
        if len(kept) < len(texts):
            texts, labels = [texts[i] for i in kept], [[values[i] for i in kept] for values in labels]
        yield texts, labels[0], labels[1], batch.num_rows - len(kept)
        if offset >= end:
            break


def encode_unit(unit: Unit, filesystem, model_path: str, tokenizer_sha256: bytes, settings: ShardSettings,
                parts_dir: str | os.PathLike, threads: int = 1) -> None:
    """Encodes one unit into its two parts and publishes its sidecar with the unit's counts."""
    sp = load_processor(model_path)
    # Parts are not fsynced: a killed job's writes stay in the page cache, and they are rebuilt anyway.
    writers = {s: ShardWriter(part_prefix(parts_dir, unit.name, s), sp.get_piece_size(), tokenizer_sha256,
                              durable=False) for s in SPLITS}
    docs, tokens, empty = Counter(), Counter(), 0
    try:
        for texts, languages, buckets, empties in read_batches(unit, filesystem):
            empty += empties
            ids = sp.encode(texts, out_type="numpy", add_bos=settings.add_bos, add_eos=settings.add_eos,
                            num_threads=threads)
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            held_out = is_validation(texts, settings.seed, settings.val_fraction)
            for split, chosen in (("train", np.flatnonzero(~held_out)), ("val", np.flatnonzero(held_out))):
                if chosen.size:
                    writers[split].add_documents(np.concatenate([ids[j] for j in chosen]), lengths[chosen])
            for group, length in zip(zip(held_out.tolist(), languages, buckets), lengths.tolist()):
                docs[group] += 1
                tokens[group] += length
        for writer in writers.values():
            writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    counts = {"unit": unit.name, "empty": empty,
              "splits": {s: {"docs": writers[s].num_docs, "tokens": writers[s].num_tokens} for s in SPLITS},
              "groups": {f"{'val' if val else 'train'}/{language}/{bucket}":
                         {"docs": n, "tokens": tokens[(val, language, bucket)]}
                         for (val, language, bucket), n in sorted(docs.items())}}
    write_json_atomically(sidecar_path(parts_dir, unit.name), counts)


def lay_out(ordered_counts: list[dict], shard_tokens: int) -> list[dict]:
    """The shards of every split: name, token range in the split's stream, and the units (with the
    stream position of their first token) whose documents may start in that range."""
    shards = []
    for split in SPLITS:
        starts, position = [], 0
        for counts in ordered_counts:
            tokens = counts["splits"][split]["tokens"]
            if tokens:
                starts.append((counts["unit"], position, position + tokens))
            position += tokens
        for i in range(-(-position // shard_tokens)):
            begin, end = i * shard_tokens, (i + 1) * shard_tokens
            shards.append({"name": shard_name(split, i), "split": split, "begin": begin, "end": end,
                           "units": [[unit, start] for unit, start, stop in starts if start < end and stop > begin]})
    return shards


def assemble_shard(shard: dict, parts_dir: str | os.PathLike, output_dir: str | os.PathLike, vocab_size: int,
                   tokenizer_sha256: bytes) -> None:
    """Writes one shard from the parts of its units and publishes it."""
    with ShardWriter(storage.join(output_dir, shard["name"]), vocab_size, tokenizer_sha256) as writer:
        for unit, start in shard["units"]:
            part = ShardReader(part_prefix(parts_dir, unit, shard["split"]), tokenizer_sha256, vocab_size)
            doc_starts = start + np.asarray(part.offsets[:-1], dtype=np.int64)
            first, last = np.searchsorted(doc_starts, [shard["begin"], shard["end"]])
            writer.copy_documents(part, int(first), int(last))


def write_json_atomically(path: str | os.PathLike, data: dict) -> None:
    storage.write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
