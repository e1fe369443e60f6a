"""Encode curated Parquet into token shards:

    python -m jobs.shards --input DIR --tokenizer DIR --output DIR [KEY=VALUE…]   (--print-settings: them all)

The steps are those of `tokenizer/encode.py`; Spark runs the two heavy ones: encoding, a task per
group of units (row groups or row ranges of them), and assembly, a task per shard. Tasks read their
units with pyarrow: the units follow the files, not the cluster's partitioning, and the text never
crosses between the JVM and Python. Every step is resumable:
- `plan.json` (the settings and the units) is written first; a rerun with other settings is refused.
- A unit whose sidecar `parts/UNIT.json` exists is not encoded again.
- The shard layout is added to `plan.json` once every unit is encoded; published shards (`.idx`
  renamed into place last) are skipped. When all exist, `parts/` is removed; a shard deleted later
  is rebuilt from its units alone.
`stats.json` holds the counts per split, per language and bucket, per shard, and the step timings."""

from __future__ import annotations

import heapq
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pyspark import SparkFiles, TaskContext
from pyspark.sql import SparkSession

from curation import storage
from curation.model_paths import TOKENIZER_DIR
from curation.settings import exit_with_error, parse_command, part_of, setting
from jobs.spark import claimed_session, master_setting
from tokenizer.encode import (
    SPLITS,
    ShardSettings,
    Unit,
    assemble_shard,
    encode_unit,
    lay_out,
    list_units,
    load_processor,
    open_dataset,
    sidecar_path,
    unit_order,
    write_json_atomically,
)
from tokenizer.shards import ShardReader, shard_exists, tokenizer_hash

TASK_TEXT_BYTES = 256 << 20  # text per encoding task when there is plenty: tens of seconds on one core


def load_plan(output_dir: str, settings: dict) -> dict | None:
    """The plan of an earlier run into this directory, which must have had the same settings."""
    path = storage.join(output_dir, "plan.json")
    if not storage.exists(path):
        return None
    plan = json.loads(storage.read_text(path))
    differing = {k: (plan["settings"].get(k), v) for k, v in settings.items() if plan["settings"].get(k) != v}
    if differing:
        raise ValueError(f"{path}: the shards there were made with other settings {differing} "
                         f"(planned, now); use another --output or remove it")
    return plan


def write_plan(output_dir: str, settings: dict, units: list[Unit]) -> dict:
    plan = {"settings": settings, "units": [asdict(u) for u in units]}
    write_json_atomically(storage.join(output_dir, "plan.json"), plan)
    return plan


def task_groups(units: list[Unit], parallelism: int) -> list[list[Unit]]:
    """The units binned into encoding tasks. A Python task costs Spark some 50 ms, as much as encoding
    a small row group, so tasks hold about TASK_TEXT_BYTES of text each, and two per core at least
    (for balance) when that makes fewer. Largest unit first into the lightest bin; heaviest bin first."""
    count = min(len(units), max(2 * parallelism, -(-sum(u.text_bytes for u in units) // TASK_TEXT_BYTES)))
    bins = [(0, i, []) for i in range(count)]
    for unit in sorted(units, key=lambda u: (-u.text_bytes, u.name)):
        size, i, group = heapq.heappop(bins)
        group.append(unit)
        heapq.heappush(bins, (size + unit.text_bytes, i, group))
    return [group for _, _, group in sorted(bins, key=lambda b: (-b[0], b[1]))]


def model_file(tokenizer: str | os.PathLike) -> Path:
    """A tokenizer directory (holding tokenizer.model) or the model file itself."""
    path = Path(tokenizer)
    return path / "tokenizer.model" if path.is_dir() else path


def summarize(output_dir: str, plan: dict, encoded: int, written: list[str], timings: dict) -> dict:
    """stats.json: totals per split, per split/language/bucket and per shard, and what this run did."""
    stats = {"settings": plan["settings"], "splits": {}, "groups": {}, "shards": {},
             "empty_documents": sum(c["empty"] for c in plan["unit_counts"]),
             "units": {"total": len(plan["units"]), "encoded": encoded},
             "shards_written": sorted(written), "timings": timings}
    for counts in plan["unit_counts"]:
        for group, count in counts["groups"].items():
            total = stats["groups"].setdefault(group, {"docs": 0, "tokens": 0})
            total["docs"] += count["docs"]
            total["tokens"] += count["tokens"]
    for split in SPLITS:
        names = [s["name"] for s in plan["shards"] if s["split"] == split]
        for name in names:
            reader = ShardReader(storage.join(output_dir, name))
            stats["shards"][name] = {"num_docs": reader.num_docs, "num_tokens": reader.num_tokens}
        stats["splits"][split] = {"shards": len(names),
                                  "num_docs": sum(stats["shards"][n]["num_docs"] for n in names),
                                  "num_tokens": sum(stats["shards"][n]["num_tokens"] for n in names)}
    seconds = sum(timings.values())
    stats["tokens_per_second"] = round(sum(s["num_tokens"] for s in stats["splits"].values()) / max(seconds, 1e-9))
    write_json_atomically(storage.join(output_dir, "stats.json"), stats)
    return stats


def run(spark: SparkSession, input_path: str, tokenizer: str | os.PathLike, output_dir: str | os.PathLike,
        **settings) -> dict:
    """Encodes `input_path` with `tokenizer` into shards under `output_dir`, resuming what an earlier run
    there did; `settings`: the fields of ShardSettings that differ from its defaults. Returns stats.json."""
    job = ShardSettings(**settings)
    timings, started = {}, time.perf_counter()
    output_dir = storage.absolute(output_dir)
    storage.claim_run_directory(output_dir, "shards")
    parts_dir = storage.join(output_dir, "parts")
    for directory in (output_dir, parts_dir):  # half-written files of a killed run (never published)
        storage.remove_temporaries(directory)
    model = model_file(tokenizer)
    sha256 = tokenizer_hash(model)
    dataset = open_dataset(input_path)
    plan = start_plan(output_dir, dataset, model, sha256, job)
    timings["plan"] = time.perf_counter() - started

    shipped = ship_tokenizer(spark, output_dir, model, sha256)
    started = time.perf_counter()
    encoded = encode_needed_units(spark, plan, output_dir, dataset.filesystem, shipped, job)
    timings["encode"] = time.perf_counter() - started

    started = time.perf_counter()
    written = assemble_missing_shards(spark, plan, output_dir, job)
    storage.delete(parts_dir)  # every shard is published now
    timings["assemble"] = time.perf_counter() - started
    return summarize(output_dir, plan, encoded, written, {k: round(v, 3) for k, v in timings.items()})


def start_plan(output_dir: str, dataset, model: Path, sha256: bytes, job: ShardSettings) -> dict:
    """The plan of an earlier run into `output_dir` (with the same settings), or a new one listing the units."""
    settings = {"input_files": sorted(dataset.files), "tokenizer_sha256": sha256.hex(),
                "vocab_size": load_processor(str(model)).get_piece_size(), **asdict(job)}
    return load_plan(output_dir, settings) or write_plan(output_dir, settings, list_units(dataset))


def ship_tokenizer(spark: SparkSession, output_dir: str, model: Path, sha256: bytes) -> str:
    """The tokenizer shipped to every worker, under a name made of its hash (also kept beside the shards
    as the record of their tokenizer): workers of any cluster read it from SparkFiles, and two
    tokenizers never collide within one SparkContext. SparkFiles ships local files: a local copy when
    the shards go to a store. Returns the name."""
    shipped = f"tokenizer-{sha256.hex()[:16]}.model"
    if not storage.exists(storage.join(output_dir, shipped)):
        storage.write_bytes(storage.join(output_dir, shipped), model.read_bytes())
    local_copy = os.path.join(storage.local_path(output_dir) or tempfile.gettempdir(), shipped)
    if not os.path.exists(local_copy):
        storage.write_bytes(local_copy, model.read_bytes())
    spark.sparkContext.addFile(local_copy)
    return shipped


def missing_shards(plan: dict, output_dir: str) -> list[dict]:
    """The shards of the layout that are not published yet (none before the layout exists)."""
    return [s for s in plan.get("shards", []) if not shard_exists(storage.join(output_dir, s["name"]))]


def encode_needed_units(spark: SparkSession, plan: dict, output_dir: str, filesystem, shipped: str,
                        job: ShardSettings) -> int:
    """Encodes, in Spark tasks, the units not yet done that a missing shard needs (all of them before
    the layout exists). Returns how many it encoded."""
    parts_dir = storage.join(output_dir, "parts")
    sha256 = bytes.fromhex(plan["settings"]["tokenizer_sha256"])
    units = {u["name"]: Unit(**u) for u in plan["units"]}
    needed = {u for s in missing_shards(plan, output_dir) for u, _ in s["units"]} if "shards" in plan else set(units)
    todo = [units[n] for n in sorted(needed) if not storage.exists(sidecar_path(parts_dir, n))]

    def encode(group: list[Unit]) -> list[str]:
        for unit in group:
            if not storage.exists(sidecar_path(parts_dir, unit.name)):  # a retried task skips what it did
                encode_unit(unit, filesystem, SparkFiles.get(shipped), sha256, job, parts_dir,
                            threads=TaskContext.get().cpus())
        return [unit.name for unit in group]

    if todo:
        groups = task_groups(todo, spark.sparkContext.defaultParallelism)
        spark.sparkContext.parallelize(groups, len(groups)).flatMap(encode).collect()
    return len(todo)


def assemble_missing_shards(spark: SparkSession, plan: dict, output_dir: str, job: ShardSettings) -> list[str]:
    """Lays the shards out (into plan.json) once every unit is encoded, then assembles, a Spark task
    each, the shards not yet published. Returns their names."""
    parts_dir = storage.join(output_dir, "parts")
    if "shards" in plan:
        pending = missing_shards(plan, output_dir)
    else:
        ordered = unit_order([Unit(**u) for u in plan["units"]], job.seed)
        plan["unit_counts"] = [json.loads(storage.read_text(sidecar_path(parts_dir, u.name))) for u in ordered]
        plan["shards"] = lay_out(plan["unit_counts"], job.shard_tokens)
        write_json_atomically(storage.join(output_dir, "plan.json"), plan)
        pending = plan["shards"]
    vocab_size, sha256 = plan["settings"]["vocab_size"], bytes.fromhex(plan["settings"]["tokenizer_sha256"])

    def assemble(shard: dict) -> str:
        assemble_shard(shard, parts_dir, output_dir, vocab_size, sha256)
        return shard["name"]

    return spark.sparkContext.parallelize(pending, len(pending)).map(assemble).collect() if pending else []


@dataclass(frozen=True)
class ShardsCommand(ShardSettings):
    """Settings of `python -m jobs.shards`: how the shards are made, then what it reads and writes."""
    input: str | None = setting(None, "curated Parquet file or directory, local or a URI (needs raw_content)",
                                required=True)
    tokenizer: str = setting(TOKENIZER_DIR, "directory holding tokenizer.model, or the model file")
    output: str | None = setting(None, "shard directory, local or a URI (rerunning resumes it)", required=True)
    master: str | None = master_setting()


FLAGS = {"--input": "input", "--tokenizer": "tokenizer", "--output": "output", "--master": "master"}


def main(argv: list[str] | None = None) -> None:
    settings = parse_command(ShardsCommand, argv, prog="python -m jobs.shards", description=__doc__, flags=FLAGS)
    output = storage.absolute(settings.output)
    try:
        spark = claimed_session("tokenize", output, "shards", settings.master)
    except storage.NotARunDirectory as error:
        exit_with_error(f"--output {error}")
    try:
        stats = run(spark, storage.absolute(settings.input), settings.tokenizer, output,
                    **asdict(part_of(settings, ShardSettings)))
    finally:
        spark.stop()
    print(json.dumps({"splits": stats["splits"], "shards_written": len(stats["shards_written"]),
                      "timings": stats["timings"], "tokens_per_second": stats["tokens_per_second"]}))


if __name__ == "__main__":
    main()
