"""Build LLaMA's mixture (`make mixture`):

    python -m jobs.mixture --config config/mixture.yaml [--output DIR] [KEY=VALUE…]   (--print-settings: them all)

The settings are tokenizer.mixture.MixtureSettings (config/mixture.yaml is their --print-settings). Four steps,
each resumed by a rerun:
1. Each source with a share is read where it is, unless a `keep` column selects among its documents: then a
   Spark task per Parquet file writes the file's kept rows to OUTPUT/documents/NAME/ under the file's own
   relative name (language=xx/bucket=yy/ stay partitions), published by the folder's marker; a file already
   written is kept.
2. One tokenizer in OUTPUT/tokenizer (tokenizer.train's, LLaMA's settings), trained on a sample of every source:
   each gives up to `tokenizer.max_chars` × its share characters, drawn by a seeded hash of each document
   (tokenizer.train's sampling). Kept when its manifest records the same sample; `tokenizer.model` gives one.
3. Token shards per source in OUTPUT/shards/NAME/, by jobs.shards (which resumes itself), the same settings for all.
4. OUTPUT/mixture.json: per source its share (after any left out), where it was read, its documents and tokens
   per split; the sources left out and why; the tokenizer. The trainer reads it (`mixture=` these settings).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from pyspark.sql import SparkSession

from curation import storage
from curation.settings import exit_with_error, parse_command
from jobs import shards
from jobs.spark import claimed_session
from tokenizer.encode import write_json_atomically
from tokenizer.mixture import (
    MAKES,
    MixtureError,
    MixtureSettings,
    SourceSettings,
    keep_rows,
    plan,
    sources,
)
from tokenizer.shards import tokenizer_hash
from tokenizer.train import train_on_sample, write_sample

FLAGS = {"--output": "output", "--tokenizer": "tokenizer.model", "--master": "master"}


def documents_problem(name: str, source: SourceSettings) -> str | None:
    """Why `source`'s documents cannot be read, naming the make target that makes them; None when they can."""
    files = storage.parquet_files(source.documents) if storage.exists(source.documents) else []
    if not files:
        return f"no documents at {source.documents} (made by {MAKES[name]})"
    columns = storage.parquet_dataset(source.documents, files).schema.names
    absent = [column for column in ("raw_content", source.keep) if column and column not in columns]
    if absent:
        return f"{source.documents} has no column {', '.join(absent)} (made by {MAKES[name]})"
    return None


def planned_shares(settings: MixtureSettings, more_missing: dict[str, str] | None = None) -> tuple[dict, dict]:
    """`tokenizer.mixture.plan` over the sources whose documents are there (and not in `more_missing`)."""
    missing = {name: why for name, source in sources(settings).items()
               if source.proportion > 0 and (why := documents_problem(name, source))}
    return plan(settings, {**missing, **(more_missing or {})})


def select_documents(spark: SparkSession, name: str, source: SourceSettings, output: str) -> tuple[str, int | None]:
    """(where the shards read `source`, how many documents its `keep` column selected): the documents
    themselves without a `keep`, else OUTPUT/documents/NAME/, written by a Spark task per Parquet file."""
    if not source.keep:
        return storage.absolute(source.documents), None
    root, target, keep = storage.absolute(source.documents), storage.join(output, "documents", name), source.keep
    files = storage.parquet_files(root)
    names = [os.path.basename(f) if f == root else f[len(storage.join(root, "")):] for f in files]
    storage.remove_temporaries(target, recursive=True)  # a killed task's half-written file

    def select(indices):
        for i in indices:
            yield storage.join(target, names[i]), keep_rows(files[i], storage.join(target, names[i]), keep)

    written = dict(spark.sparkContext.parallelize(range(len(files)), len(files)).mapPartitions(select).collect())
    storage.publish_files(target, written, about={"documents": root, "keep": keep})
    return target, sum(written.values())


def sample_writer(read_from: dict[str, str], shares: dict[str, float], settings: MixtureSettings):
    """What writes the tokenizer's sample (tokenizer.train.train_on_sample's `write`): tokenizer.train's sample
    of each source, up to `max_chars` × its share characters, one after the other; the counts are the sums,
    with each source's under `sources`."""
    seed, max_chars = settings.tokenizer.seed, settings.tokenizer.max_chars

    def write(sample_file: str) -> dict:
        per_source = {}
        with open(sample_file, "w", encoding="utf-8") as sample:
            for name, location in read_from.items():
                part = f"{sample_file}.{name}"
                per_source[name] = write_sample(location, part, seed, max(1, round(max_chars * shares[name])), {})
                with open(part, encoding="utf-8") as lines:
                    shutil.copyfileobj(lines, sample)
                os.remove(part)
        counts = {key: sum(c[key] for c in per_source.values()) for key in ("documents", "characters", "sentences")}
        long_lines = {key: sum(c["long_lines_left_out"][key] for c in per_source.values())
                      for key in ("lines", "characters")}
        return {**counts, "long_lines_left_out": long_lines, "sources": per_source}

    return write


def mixture_tokenizer(read_from: dict[str, str], shares: dict[str, float], settings: MixtureSettings) -> dict:
    """The tokenizer every source is encoded with, {"model": path, "sha256", "sample_characters": per source}:
    `tokenizer.model`, or OUTPUT/tokenizer's, trained on a sample of every source unless an earlier run trained
    it on the same sample."""
    if settings.tokenizer.model:
        model = shards.model_file(settings.tokenizer.model)
        return {"model": str(model), "sha256": tokenizer_hash(model).hex()}
    local = storage.local_path(settings.output)
    if local is None:
        raise MixtureError(f"{settings.output} is not on this machine's disk: train the tokenizer with OUTPUT on a "
                           f"local disk, or give one (tokenizer.model=…)")
    folder, wanted = Path(local) / "tokenizer", settings.tokenizer
    about = {"input": read_from, "max_chars": wanted.max_chars, "mix": shares, "mixture": dataclasses.asdict(wanted)}
    manifest_file = folder / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else {}
    if any(manifest.get(k) != v for k, v in about.items()):
        manifest = train_on_sample(sample_writer(read_from, shares, settings), folder, wanted.vocab_size, wanted.seed,
                                   wanted.character_coverage, None, about)
    return {"model": str(folder / "tokenizer.model"), "sha256": manifest["sha256"],
            "sample_characters": {name: c["characters"] for name, c in manifest["sample"]["sources"].items()}}


def run(spark: SparkSession, settings: MixtureSettings) -> dict:
    """Builds (or resumes) the mixture of `settings` in its output; returns (and writes) mixture.json."""
    output = storage.absolute(settings.output)
    shares, left_out = planned_shares(settings)
    storage.claim_run_directory(output, "mixture")
    selected = {name: select_documents(spark, name, getattr(settings, name), output) for name in shares}
    empty = {name: f"no document of {getattr(settings, name).documents} has {getattr(settings, name).keep} true "
                   f"(made by {MAKES[name]})" for name, (_, rows) in selected.items() if rows == 0}
    if empty:
        shares, left_out = planned_shares(settings, empty)
    read_from = {name: selected[name][0] for name in shares}
    tokenizer = mixture_tokenizer(read_from, shares, settings)
    built = {name: shards.run(spark, read_from[name], tokenizer["model"], storage.join(output, "shards", name),
                              **dataclasses.asdict(settings.shards)) for name in shares}
    mixture = {"sources": {name: source_record(getattr(settings, name), shares[name], read_from[name],
                                               selected[name][1], built[name]) for name in shares},
               "left_out": left_out,
               "tokenizer": tokenizer,
               "shards": dataclasses.asdict(settings.shards)}
    write_json_atomically(storage.join(output, "mixture.json"), mixture)
    return mixture


def source_record(source: SourceSettings, share: float, read_from: str, selected: int | None, stats: dict) -> dict:
    """A source's entry in mixture.json."""
    splits = stats["splits"]
    return {"share": share, "proportion": source.proportion, "llama_epochs": source.llama_epochs,
            "documents": source.documents, "keep": source.keep, "read_from": read_from, "selected_documents": selected,
            "tokens": {split: splits[split]["num_tokens"] for split in splits},
            "documents_per_split": {split: splits[split]["num_docs"] for split in splits}}


def main(argv: list[str] | None = None) -> None:
    settings = parse_command(MixtureSettings, argv, prog="python -m jobs.mixture", description=__doc__, flags=FLAGS)
    settings = dataclasses.replace(settings, output=storage.absolute(settings.output))
    try:
        planned_shares(settings)  # a wrong share or a missing source: said before Spark starts
        spark = claimed_session("mixture", settings.output, "mixture", settings.master)
    except (MixtureError, storage.NotARunDirectory) as error:
        exit_with_error(str(error))
    try:
        mixture = run(spark, settings)
    except MixtureError as error:
        exit_with_error(str(error))
    finally:
        spark.stop()
    for name, why in mixture["left_out"].items():
        print(f"left out {name}: {why}; the others' shares grew in proportion")
    print(f"{'source':<14} {'share':>7} {'documents':>10} {'train tokens':>14} {'val tokens':>11}")
    for name, source in mixture["sources"].items():
        documents = sum(source["documents_per_split"].values())
        print(f"{name:<14} {source['share']:>7.2%} {documents:>10,} {source['tokens']['train']:>14,} "
              f"{source['tokens']['val']:>11,}")
    print(f"mixture: {storage.join(settings.output, 'mixture.json')}")


if __name__ == "__main__":
    main()
