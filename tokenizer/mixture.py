"""LLaMA's pretraining mixture (the LLaMA paper, Table 1): its settings (`config/mixture.yaml`) and its plan,
shared by the job that builds it (`python -m jobs.mixture`: one tokenizer, token shards per source) and the
trainer that draws from it (`python -m trainer.train mixture=config/mixture.yaml`).

Each source is a section of the settings: where its documents are (Parquet with `raw_content`), an optional
boolean column that selects among them (`wikiref_keep`, `c4_keep`), its share of the training tokens and, for
the report, LLaMA's epochs over it. The shares sum to 1. A source whose documents are missing is an error that
names the make target making them, or, with `missing=drop`, left out: its share goes to the others in
proportion, and the job, the trainer and mixture.json say so.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import storage
from curation.settings import section, setting
from tokenizer.encode import ShardSettings
from tokenizer.train import TokenizerSettings

# What makes each source's documents, named when they are missing (wikiref_keep is null in a run curated
# without the classifier).
MAKES = {
    "commoncrawl": "`make classifier`, then `make curate`",
    "c4": "`make curate`",
    **{name: f"`make sources SOURCES={name}`" for name in ("github", "wikipedia", "books", "arxiv", "stackexchange")},
}
SELECTED_COLUMNS = ("raw_content", "language", "bucket")  # what the shards read of a document


class MixtureError(ValueError):
    """A mixture that cannot be built or drawn from, said in one line."""


@dataclasses.dataclass(frozen=True)
class SourceSettings:
    """One source of the mixture."""
    documents: str = setting("", "its documents: Parquet with raw_content (a folder, a file or a URI)")
    keep: str | None = setting(None, "a boolean column of the documents: only those where it is true (null: all)")
    proportion: float = setting(0.0, "its share of the training tokens (the shares sum to 1)", minimum=0, maximum=1)
    llama_epochs: float = setting(0.0, "LLaMA's epochs over it in 1.4T tokens (Table 1), shown beside the run's",
                                  minimum=0)


def source_settings(title: str, documents: str, proportion: float, llama_epochs: float,
                    keep: str | None = None) -> type:
    """SourceSettings with these defaults, as a class of its own: the settings loader fills a section from its
    class's defaults, so `github.proportion=0.1` keeps github's other defaults."""
    defaults = {"documents": documents, "keep": keep, "proportion": proportion, "llama_epochs": llama_epochs}
    kinds = typing.get_type_hints(SourceSettings)
    fields = [(f.name, kinds[f.name], setting(defaults[f.name], f.metadata["doc"], minimum=f.metadata["minimum"],
                                               maximum=f.metadata["maximum"]))
              for f in dataclasses.fields(SourceSettings)]
    cls = dataclasses.make_dataclass(title.split(":")[0].replace(" ", "") + "Source", fields,
                                     bases=(SourceSettings,), frozen=True)
    cls.__doc__ = title
    return cls


CommonCrawl = source_settings("CommonCrawl: a curate run's documents the Wikipedia-reference classifier keeps",
                              "runs/local/curated", 0.67, 1.10, keep="wikiref_keep")
C4 = source_settings("C4: a curate run's documents that pass C4's rules", "runs/local/curated", 0.15, 1.06,
                     keep="c4_keep")
GitHub = source_settings("GitHub: permissively licensed code (jobs.sources.github)", "runs/sources/github/documents",
                         0.045, 0.64)
Wikipedia = source_settings("Wikipedia: 20 languages (jobs.sources.wikipedia)", "runs/sources/wikipedia/documents",
                            0.045, 2.45)
Books = source_settings("Books: Project Gutenberg (jobs.sources.books)", "runs/sources/books/documents", 0.045, 2.23)
ArXiv = source_settings("ArXiv: LaTeX papers (jobs.sources.arxiv)", "runs/sources/arxiv/documents", 0.025, 1.06)
StackExchange = source_settings("StackExchange: the 28 largest sites (jobs.sources.stackexchange)",
                                "runs/sources/stackexchange/documents", 0.02, 1.03)


@dataclasses.dataclass(frozen=True)
class MixtureTokenizer:
    """The one tokenizer of every source: tokenizer.train's BPE with LLaMA's settings."""
    model: str | None = setting(None, "a tokenizer.model (or its folder) to encode with; null: train one into "
                                      "OUTPUT/tokenizer over a sample of every source, in proportion")
    vocab_size: int = setting(TokenizerSettings.vocab_size, "pieces of the one trained (fewer, with a message, when "
                                                            "the sample is too small for them)", minimum=260)
    max_chars: int = setting(TokenizerSettings.max_chars, "characters of its sample: each source gives up to this "
                                                          "times its share", minimum=1)
    character_coverage: float = setting(TokenizerSettings.character_coverage, "LLaMA's: the rarest characters are "
                                        "left to byte fallback (lower it for a small vocabulary)", minimum=0, maximum=1)
    seed: int = setting(TokenizerSettings.seed, "draws the sample and SentencePiece's sentence order")


@dataclasses.dataclass(frozen=True)
class MixtureSettings:
    """LLaMA's pretraining mixture: `make mixture` builds it, `make pretrain MIXTURE=…` draws from it."""
    output: str = setting("runs/local/mixture", "what make mixture writes (tokenizer/, shards/NAME/, mixture.json) "
                                                "and the trainer reads; rerunning resumes it")
    missing: Literal["error", "drop"] = setting("error", "a source without documents: error (naming the make target "
                                                         "that makes them), or drop (its share goes to the others)")
    master: str | None = setting(None, "Spark master of a local make mixture (null: local[*]); spark-submit's stands")
    tokenizer: MixtureTokenizer = section(MixtureTokenizer)
    shards: ShardSettings = section(ShardSettings)
    commoncrawl: CommonCrawl = section(CommonCrawl)
    c4: C4 = section(C4)
    github: GitHub = section(GitHub)
    wikipedia: Wikipedia = section(Wikipedia)
    books: Books = section(Books)
    arxiv: ArXiv = section(ArXiv)
    stackexchange: StackExchange = section(StackExchange)


SOURCES = tuple(f.name for f in dataclasses.fields(MixtureSettings) if isinstance(f.default_factory, type)
                and issubclass(f.default_factory, SourceSettings))


def sources(settings: MixtureSettings) -> dict[str, SourceSettings]:
    """Every source of the mixture by name, in the order of Table 1."""
    return {name: getattr(settings, name) for name in SOURCES}


def check_proportions(settings: MixtureSettings) -> None:
    """A MixtureError unless the sources' proportions sum to 1."""
    shares = {name: source.proportion for name, source in sources(settings).items()}
    total = sum(shares.values())
    if abs(total - 1) > 1e-6:
        listed = " + ".join(f"{name} {share:g}" for name, share in shares.items())
        raise MixtureError(f"the proportions sum to {total:g}, not 1: {listed}")


def plan(settings: MixtureSettings, missing: dict[str, str]) -> tuple[dict[str, float], dict[str, str]]:
    """(the share each source is drawn with, {source left out: why}). `missing`: {source: why it cannot be
    read}. A missing source with a share is a MixtureError, unless `missing` is drop: then it is left out and
    the others' shares grow in proportion."""
    check_proportions(settings)
    wanted = {name: source.proportion for name, source in sources(settings).items() if source.proportion > 0}
    left_out = {name: why for name, why in missing.items() if name in wanted}
    if left_out and settings.missing == "error":
        name, why = next(iter(left_out.items()))
        raise MixtureError(f"{name}: {why} (or set missing=drop to leave it out)")
    kept = {name: share for name, share in wanted.items() if name not in left_out}
    if not kept:
        reasons = "; ".join(f"{name}: {why}" for name, why in left_out.items())
        raise MixtureError(f"no source of the mixture can be read: {reasons}")
    total = sum(kept.values())
    return {name: share / total for name, share in kept.items()}, left_out


def keep_rows(source_file: str, target_file: str, keep: str) -> int:
    """Writes the rows of the Parquet `source_file` whose `keep` column is true (null is not) to `target_file`,
    with the columns the shards read, batch by batch, published whole; returns how many. A target already
    there was written by an earlier run: it is counted, not written again."""
    if storage.exists(target_file):
        with storage.open_input(target_file) as done:
            return pq.ParquetFile(done).metadata.num_rows
    with storage.open_input(source_file) as source:
        parquet = pq.ParquetFile(source)
        columns = [c for c in SELECTED_COLUMNS if c in parquet.schema_arrow.names]
        schema = pa.schema([parquet.schema_arrow.field(c) for c in columns])
        rows = 0
        with storage.atomic_output(target_file) as out, pq.ParquetWriter(out, schema, compression="zstd") as writer:
            for batch in parquet.iter_batches(columns=[*columns, keep], batch_size=1000):
                kept = batch.filter(pc.fill_null(batch.column(keep), False)).select(columns)
                writer.write_batch(kept)
                rows += kept.num_rows
    return rows
