"""Encode curated Parquet into token shards: `python -m jobs.tokenize --input DIR --tokenizer DIR --output DIR`.

Every document gets a key, SHA-256 of (seed, text), computed in the JVM. Its first 32 bits pick the
split (validation when below `val_fraction`), the next 32 bits its shard (modulo the split's shard
count), and inside a shard documents are ordered by key. Nothing depends on file order, partitioning
or timing, so the same input, tokenizer and settings give byte-identical shards.

The shard counts are estimated on the first run (characters per split × tokens per character of a
seeded sample) and kept in `plan.json`; a rerun reads the plan, skips the shards already published
(a shard is published by rename, `.idx` last) and encodes only the documents of the others. Each shard has a small `NAME.json` sidecar with its counts
by language and bucket, published before the shard, from which `stats.json` is summed."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyspark import SparkFiles
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.spark import spark_session
from tokenizer.shards import ShardWriter, shard_exists, token_dtype, tokenizer_hash

SPLITS = ("train", "val")
UNKNOWN = "unknown"  # language or bucket of input without those columns
SAMPLE_CHARS = 1_000_000  # characters the driver encodes to estimate tokens per character


def shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:05d}"


def keyed_documents(spark: SparkSession, input_path: str, seed: int, val_fraction: float) -> DataFrame:
    """Non-empty documents with language, bucket, key, split and the 32-bit number that picks the shard."""
    df = spark.read.parquet(input_path)
    if "raw_content" not in df.columns:
        raise ValueError(f"{input_path}: no raw_content column (columns: {df.columns})")
    label = {c: F.coalesce(F.col(c).cast("string"), F.lit(UNKNOWN)) if c in df.columns else F.lit(UNKNOWN)
             for c in ("language", "bucket")}
    key = F.sha2(F.concat(F.lit(f"{seed}\x00"), F.col("raw_content")), 256)
    bits = lambda start: F.conv(F.substring(key, start, 8), 16, 10).cast("long")  # noqa: E731
    return (df.where(F.length("raw_content") > 0)
            .select("raw_content", label["language"].alias("language"), label["bucket"].alias("bucket"),
                    key.alias("key"),
                    F.when(bits(1) < int(val_fraction * 2**32), "val").otherwise("train").alias("split"),
                    bits(9).alias("shard_bits")))


def encoder(model_file: str, vocab_size: int, add_bos: bool, add_eos: bool):
    """mapInArrow function: replaces raw_content by its tokens (bytes in the shard dtype) and their count.
    The model is loaded once per partition, from the copy Spark shipped to the worker."""
    dtype = token_dtype(vocab_size)

    def encode(batches):
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=SparkFiles.get(model_file))
        for batch in batches:
            texts = batch.column("raw_content").to_pylist()
            # One thread: Spark already runs one task per core.
            ids = sp.encode(texts, add_bos=add_bos, add_eos=add_eos, num_threads=1)
            counts = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(counts.sum()))
            offsets = np.zeros(len(ids) + 1, dtype=np.int32)
            np.cumsum(counts * dtype.itemsize, out=offsets[1:])
            tokens = pa.BinaryArray.from_buffers(pa.binary(), len(ids),
                                                 [None, pa.py_buffer(offsets), pa.py_buffer(flat)])
            rest = batch.drop_columns(["raw_content"])
            yield rest.append_column("tokens", tokens).append_column("num_tokens", pa.array(counts))

    return encode


def encoded_schema(df: DataFrame) -> T.StructType:
    fields = [f for f in df.schema.fields if f.name != "raw_content"]
    return T.StructType(fields + [T.StructField("tokens", T.BinaryType()), T.StructField("num_tokens", T.LongType())])


def with_shard(df: DataFrame, plan: dict) -> DataFrame:
    """Adds the shard number of each document: its shard bits modulo its split's shard count."""
    shard = F.lit(None).cast("long")
    for split in SPLITS:
        if plan["shards"][split]:
            shard = F.when(F.col("split") == split, F.col("shard_bits") % plan["shards"][split]).otherwise(shard)
    return df.withColumn("shard", shard)


def shard_writer(output_dir: str, vocab_size: int, sha256: bytes):
    """mapInArrow function over rows sorted by (split, shard, key): writes each shard it meets and its
    sidecar, and yields the names of the shards it published."""

    def write(batches):
        writer, name, groups, published = None, None, {}, []

        def publish():
            sidecar = Path(output_dir) / f"{name}.json"
            tmp = sidecar.with_name(sidecar.name + f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"name": name, "num_docs": writer.num_docs, "num_tokens": writer.num_tokens,
                                       "groups": {f"{l}/{b}": c for (l, b), c in sorted(groups.items())}}))
            os.replace(tmp, sidecar)
            writer.close()
            published.append(name)

        try:
            for batch in batches:
                cols = batch.to_pydict()
                for split, shard, lang, bucket, tokens in zip(cols["split"], cols["shard"], cols["language"],
                                                              cols["bucket"], cols["tokens"]):
                    if shard_name(split, shard) != name:
                        if writer is not None:
                            publish()
                        name, groups = shard_name(split, shard), {}
                        writer = ShardWriter(Path(output_dir) / name, vocab_size, sha256)
                    writer.add_document(np.frombuffer(tokens, dtype=writer.dtype))
                    count = groups.setdefault((lang, bucket), {"docs": 0, "tokens": 0})
                    count["docs"] += 1
                    count["tokens"] += len(tokens) // writer.dtype.itemsize
            if writer is not None:
                publish()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        yield pa.RecordBatch.from_pydict({"name": published}, schema=pa.schema([("name", pa.string())]))

    return write


def write_empty_shard(output_dir: Path, name: str, vocab_size: int, sha256: bytes) -> None:
    """A planned shard that no document hashed into is still published, so that the set is complete."""
    (output_dir / f"{name}.json").write_text(json.dumps({"name": name, "num_docs": 0, "num_tokens": 0, "groups": {}}))
    ShardWriter(output_dir / name, vocab_size, sha256).close()


def remove_stale_temporaries(output_dir: Path) -> None:
    """Half-written files of a killed run (never published, so never read)."""
    for path in output_dir.glob("*.tmp*"):
        path.unlink()


def load_plan(output_dir: Path, settings: dict) -> dict | None:
    path = output_dir / "plan.json"
    if not path.exists():
        return None
    plan = json.loads(path.read_text())
    differing = {k: (plan["settings"].get(k), v) for k, v in settings.items() if plan["settings"].get(k) != v}
    if differing:
        raise ValueError(f"{path}: the shards there were made with other settings {differing} "
                         f"(planned, now); use another --output or remove it")
    return plan


def make_plan(docs: DataFrame, model: Path, add_bos: bool, add_eos: bool, settings: dict, shard_tokens: int) -> dict:
    """Shard counts per split, ceil(estimated tokens / shard_tokens). Counting the tokens exactly would
    take a second encoding pass (or caching every encoded document, dearer still); instead the driver
    encodes a seeded sample of about SAMPLE_CHARS characters, the whole input when it is smaller, and
    scales its tokens per character by the characters of each split."""
    import sentencepiece as spm

    totals = {row["split"]: (row["docs"], row["chars"]) for row in docs.groupBy("split").agg(
        F.count("*").alias("docs"), F.sum(F.length("raw_content")).alias("chars")).collect()}
    total_chars = sum(chars for _, chars in totals.values())
    fraction = min(1.0, SAMPLE_CHARS / max(total_chars, 1))
    sample = [r["raw_content"] for r in docs.where(F.col("shard_bits") < int(fraction * 2**32)).select("raw_content").collect()]
    if not sample:  # a few very long documents, none of them drawn
        sample = [r["raw_content"] for r in docs.orderBy("key").limit(16).select("raw_content").collect()]
    sp = spm.SentencePieceProcessor(model_file=str(model))
    ids = sp.encode(sample, add_bos=add_bos, add_eos=add_eos, num_threads=os.cpu_count() or 1)
    tokens_per_char = sum(map(len, ids)) / max(sum(map(len, sample)), 1)
    estimate = {s: round(totals.get(s, (0, 0))[1] * tokens_per_char) for s in SPLITS}
    return {"settings": settings, "docs": {s: totals.get(s, (0, 0))[0] for s in SPLITS},
            "chars": {s: totals.get(s, (0, 0))[1] for s in SPLITS},
            "sample_chars": sum(map(len, sample)), "tokens_per_char": tokens_per_char, "estimated_tokens": estimate,
            "shards": {s: math.ceil(estimate[s] / shard_tokens) if totals.get(s, (0, 0))[0] else 0 for s in SPLITS}}


def summarize(output_dir: Path, plan: dict, written: list[str], seconds: float) -> dict:
    """stats.json: totals per split and per split/language/bucket, summed from the shard sidecars."""
    stats = {"settings": plan["settings"], "shards": {}, "splits": {}, "groups": {},
             "shards_written": sorted(written), "seconds": round(seconds, 2)}
    for split in SPLITS:
        docs = tokens = 0
        for shard in range(plan["shards"][split]):
            name = shard_name(split, shard)
            sidecar = json.loads((output_dir / f"{name}.json").read_text())
            stats["shards"][name] = {"num_docs": sidecar["num_docs"], "num_tokens": sidecar["num_tokens"]}
            docs += sidecar["num_docs"]
            tokens += sidecar["num_tokens"]
            for group, count in sidecar["groups"].items():
                total = stats["groups"].setdefault(f"{split}/{group}", {"docs": 0, "tokens": 0})
                total["docs"] += count["docs"]
                total["tokens"] += count["tokens"]
        stats["splits"][split] = {"shards": plan["shards"][split], "num_docs": docs, "num_tokens": tokens}
    stats["tokens_per_second"] = round(sum(s["num_tokens"] for s in stats["splits"].values()) / max(seconds, 1e-9))
    tmp = output_dir / "stats.json.tmp"
    tmp.write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, output_dir / "stats.json")
    return stats


def model_file(tokenizer: str | os.PathLike) -> Path:
    """A tokenizer directory (holding tokenizer.model) or the model file itself."""
    path = Path(tokenizer)
    return path / "tokenizer.model" if path.is_dir() else path


def run(spark: SparkSession, input_path: str, tokenizer: str | os.PathLike, output_dir: str | os.PathLike,
        seed: int = 0, val_fraction: float = 0.01, shard_tokens: int = 100_000_000,
        add_bos: bool = True, add_eos: bool = True) -> dict:
    import sentencepiece as spm

    started = time.perf_counter()
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir)
    model = model_file(tokenizer)
    sha256 = tokenizer_hash(model)
    vocab_size = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
    docs = keyed_documents(spark, input_path, seed, val_fraction)
    settings = {"input_files": sorted(docs.inputFiles()), "tokenizer_sha256": sha256.hex(), "vocab_size": vocab_size,
                "seed": seed, "val_fraction": val_fraction, "shard_tokens": shard_tokens,
                "add_bos": add_bos, "add_eos": add_eos}
    # Ship a copy named by its hash, kept beside the shards as the record of their tokenizer: workers
    # of any cluster read it from SparkFiles, and two tokenizers never collide within one SparkContext.
    shipped = f"tokenizer-{sha256.hex()[:16]}.model"
    if not (output_dir / shipped).exists():
        shutil.copy(model, output_dir / (shipped + ".tmp"))
        os.replace(output_dir / (shipped + ".tmp"), output_dir / shipped)
    spark.sparkContext.addFile(str(output_dir / shipped))
    encode = encoder(shipped, vocab_size, add_bos, add_eos)

    plan = load_plan(output_dir, settings)
    if plan is None:
        plan = make_plan(docs, model, add_bos, add_eos, settings, shard_tokens)
        tmp_plan = output_dir / "plan.json.tmp"
        tmp_plan.write_text(json.dumps(plan, indent=2) + "\n")
        os.replace(tmp_plan, output_dir / "plan.json")
    pending = [(split, shard) for split in SPLITS for shard in range(plan["shards"][split])
               if not shard_exists(output_dir / shard_name(split, shard))]
    written = []
    if pending:
        # Only the documents of shards still missing are encoded (all of them on a first run).
        pending_names = F.array(*[F.lit(shard_name(s, n)) for s, n in pending])
        todo = with_shard(docs, plan).where(
            F.array_contains(pending_names, F.format_string("%s-%05d", F.col("split"), F.col("shard"))))
        written = [row["name"] for row in
                   todo.mapInArrow(encode, encoded_schema(todo))
                   .repartition(len(pending), "split", "shard")
                   .sortWithinPartitions("split", "shard", "key")
                   .mapInArrow(shard_writer(str(output_dir), vocab_size, sha256), "name string").collect()]
        for split, shard in pending:
            if shard_name(split, shard) not in written:
                write_empty_shard(output_dir, shard_name(split, shard), vocab_size, sha256)
                written.append(shard_name(split, shard))
    return summarize(output_dir, plan, written, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="curated Parquet file or directory (needs raw_content)")
    parser.add_argument("--tokenizer", required=True, help="directory holding tokenizer.model, or the model file")
    parser.add_argument("--output", required=True, help="shard directory (rerunning resumes it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.01)
    parser.add_argument("--shard-tokens", type=int, default=100_000_000, help="target tokens per shard")
    parser.add_argument("--no-bos", dest="add_bos", action="store_false", help="no BOS before each document")
    parser.add_argument("--no-eos", dest="add_eos", action="store_false", help="no EOS after each document")
    parser.add_argument("--master", default=None, help="Spark master when not under spark-submit (local[*])")
    args = parser.parse_args(argv)
    spark = spark_session("tokenize", master=args.master, log_file=Path(args.output) / "spark.log")
    try:
        stats = run(spark, args.input, args.tokenizer, args.output, args.seed, args.val_fraction,
                    args.shard_tokens, args.add_bos, args.add_eos)
    finally:
        spark.stop()
    print(json.dumps({"splits": stats["splits"], "shards_written": len(stats["shards_written"]),
                      "seconds": stats["seconds"], "tokens_per_second": stats["tokens_per_second"]}))


if __name__ == "__main__":
    main()
