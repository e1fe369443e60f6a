"""KenLM perplexity and head/middle/tail buckets, CCNet semantics (cc_net/perplexity.py).

A models directory holds, per language, `{lang}.sp.model` (SentencePiece) and `{lang}.arpa.bin`
(KenLM), and `cutoff.csv` (rows 0-99 = percentiles, one column per language). That is the layout of
CCNet's published models too, so they load unchanged; `make lm` writes the same names.

Perplexity of a document: `normalize` (which removes newlines, so the document is one line, as in
cc_net), SentencePiece pieces joined by spaces, `kenlm.Model.score` (log10, with <s> and </s>),
length = pieces + 1 per line, `round(10 ** (-Σlog10 / Σlength), 1)`. `per_line=True` scores each
`\\n` line on its own and sums (what cc_net's code would do without its normalizer joining lines).

Bucket: `head` if perplexity < p30, `middle` if < p60, else `tail`; `all` for a language without a
model or without cutoffs (and `perplexity` is then -1.0, cc_net's "no score" value).
"""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import kenlm
import sentencepiece as spm

from curation import storage
from curation.model_paths import LM_DIR
from curation.normalize import normalize
from curation.pipeline import ModelFiles, Stage
from curation.settings import setting

HEAD_PERCENTILE = 30
TAIL_PERCENTILE = 60
NO_SCORE = -1.0
# A document is scored on its first 100,000 characters (perplexity.max_chars): enough for a stable
# estimate, and a multi-MB document never holds its millions of pieces in memory at once.
MAX_CHARS = 100_000
CUTOFF_FILE = "cutoff.csv"

_lock = threading.Lock()
_models: dict[tuple[str, str], LanguageModel | None] = {}
_cutoffs: dict[str, dict[str, list[float]]] = {}


@dataclass(frozen=True)
class PerplexitySettings:
    """KenLM perplexity and buckets."""
    models: str = setting(LM_DIR, "{lang}.sp.model + {lang}.arpa.bin (+ cutoff.csv); `make lm` trains them")
    per_line: bool = setting(False, "false: the document is one line, as cc_net in fact scores it")
    max_chars: int | None = setting(MAX_CHARS, "a document is scored on this many first characters (memory bound)",
                                    minimum=1)


def pp(log_score: float, length: int) -> float:
    """cc_net's perplexity from a summed log10 score and a summed length."""
    return round(10 ** (-log_score / length), 1)


class LanguageModel:
    """One language's SentencePiece + KenLM pair."""

    def __init__(self, sp_model: str | Path, lm: str | Path):
        self.sp = spm.SentencePieceProcessor(model_file=str(sp_model))
        config = kenlm.Config()
        config.load_method = kenlm.LoadMethod.LAZY  # mmap: workers on one machine share the pages
        self.lm = kenlm.Model(str(lm), config)

    def score_lines(self, lines: list[str]) -> tuple[float, int]:
        """(Σ log10, Σ length) over already normalized lines."""
        log_score, length = 0.0, 0
        for pieces in self.sp.encode(lines, out_type=str):
            log_score += self.lm.score(" ".join(pieces))
            length += len(pieces) + 1
        return log_score, length

    def perplexity(self, text: str, per_line: bool = False) -> float:
        if per_line:
            lines = [line for line in map(normalize, text.split("\n")) if line]
            if not lines:
                lines = [""]
        else:
            lines = [normalize(text)]
        return pp(*self.score_lines(lines))

    def perplexities(self, texts: list[str], per_line: bool = False) -> list[float]:
        """`perplexity` over a list. One SentencePiece call per text: its batch call starts a thread
        pool per call, which costs more than it gains on a busy executor (measured by bench/perplexity.py)."""
        if per_line:
            return [self.perplexity(text, per_line=True) for text in texts]
        encode, lm_score = self.sp.encode, self.lm.score
        out = []
        for text in texts:
            pieces = encode(normalize(text), out_type=str)
            out.append(pp(lm_score(" ".join(pieces)), len(pieces) + 1))
        return out


def model_paths(models_dir: str | Path, lang: str) -> tuple[Path, Path]:
    models_dir = Path(models_dir)
    return models_dir / f"{lang}.sp.model", models_dir / f"{lang}.arpa.bin"


def load_model(models_dir: str | Path, lang: str) -> LanguageModel | None:
    """The language's models, loaded once per process (Spark reuses Python workers); None when the
    directory has no model for the language."""
    key = (str(Path(models_dir).resolve()), lang)
    if key not in _models:
        with _lock:
            if key not in _models:
                sp_model, lm = model_paths(models_dir, lang)
                _models[key] = LanguageModel(sp_model, lm) if sp_model.exists() and lm.exists() else None
    return _models[key]


def available_languages(models_dir: str | Path) -> list[str]:
    return sorted(p.name.removesuffix(".arpa.bin") for p in Path(models_dir).glob("*.arpa.bin")
                  if (Path(models_dir) / p.name.replace(".arpa.bin", ".sp.model")).exists())


def model_files(models_dir: str | Path) -> list[Path]:
    """Every file of a models directory that holds a language's model (cutoffs included), else []."""
    if not Path(models_dir).is_dir() or not available_languages(models_dir):
        return []
    return sorted(path for path in Path(models_dir).rglob("*") if path.is_file())


def read_cutoffs(path: str | Path) -> dict[str, list[float]]:
    """CCNet's cutoff.csv (a local path or URI): {lang: [p0, …, p99]}."""
    rows = list(csv.reader(io.StringIO(storage.read_text(path), newline="")))
    header, body = rows[0], rows[1:]
    body.sort(key=lambda row: int(float(row[0])))
    return {lang: [float(row[i]) for row in body] for i, lang in enumerate(header) if i > 0 and lang}


def write_cutoffs(path: str | Path, cutoffs: dict[str, list[float]]) -> None:
    """Writes {lang: [p0..p99]} in CCNet's cutoff.csv format (atomically; a local path or URI)."""
    langs = sorted(cutoffs)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["", *langs])
    for i in range(100):
        writer.writerow([i, *(_fmt(cutoffs[lang][i]) for lang in langs)])
    storage.write_text(path, text.getvalue())


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def load_cutoffs(models_dir: str | Path, path: str | Path | None = None) -> dict[str, list[float]]:
    """Cutoffs beside the models (or at `path`), once per process; {} when there are none."""
    path = Path(path) if path else Path(models_dir) / CUTOFF_FILE
    key = str(path.resolve())
    if key not in _cutoffs:
        with _lock:
            _cutoffs[key] = read_cutoffs(path) if path.exists() else {}
    return _cutoffs[key]


def bucket(perplexity: float, cutoffs: list[float] | None) -> str:
    if not cutoffs or perplexity < 0:
        return "all"
    if perplexity < cutoffs[HEAD_PERCENTILE]:
        return "head"
    if perplexity < cutoffs[TAIL_PERCENTILE]:
        return "middle"
    return "tail"


def clear_cache() -> None:
    """Forget loaded models and cutoffs (after retraining in the same process)."""
    with _lock:
        _models.clear()
        _cutoffs.clear()


class PerplexityStage(Stage):
    """Adds `perplexity` (float) and `bucket` (head/middle/tail/all) to each document, by its
    `language`. Never drops a document. Models are loaded lazily, once per process per language."""

    name = "perplexity"
    writes = ("perplexity", "bucket")
    settings_class = PerplexitySettings
    models = (ModelFiles("models", model_files, train="make lm"),)

    def __init__(self, settings: PerplexitySettings = PerplexitySettings(), cutoffs: str | Path | None = None,
                 field: str = "raw_content", batch_size: int = 256):
        super().__init__()
        self.models_dir = str(settings.models)
        self.per_line = settings.per_line
        self.max_chars = settings.max_chars
        self.cutoffs_path = str(cutoffs) if cutoffs else None
        self.field = field
        self.batch_size = batch_size

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        cutoffs = load_cutoffs(self.models_dir, self.cutoffs_path)
        batch: list[dict] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= self.batch_size:
                yield from self._score(batch, cutoffs)
                batch = []
        if batch:
            yield from self._score(batch, cutoffs)

    def _score(self, batch: list[dict], cutoffs: dict[str, list[float]]) -> Iterator[dict]:
        by_lang: dict[str | None, list[dict]] = {}
        for doc in batch:
            by_lang.setdefault(doc.get("language"), []).append(doc)
        for lang, docs in by_lang.items():
            model = load_model(self.models_dir, lang) if lang else None
            if model is None:
                self.stats["no_model"] += len(docs)
                for doc in docs:
                    doc["perplexity"], doc["bucket"] = NO_SCORE, "all"
                continue
            texts = [doc.get(self.field) or "" for doc in docs]
            if self.max_chars is not None and any(len(text) > self.max_chars for text in texts):
                self.stats["text_capped"] += sum(len(text) > self.max_chars for text in texts)
            values = model.perplexities([text[:self.max_chars] for text in texts], self.per_line)
            lang_cutoffs = cutoffs.get(lang)
            for doc, value in zip(docs, values):
                doc["perplexity"] = value
                doc["bucket"] = bucket(value, lang_cutoffs)
                self.stats[f"bucket.{doc['bucket']}"] += 1
        yield from batch  # input order kept
