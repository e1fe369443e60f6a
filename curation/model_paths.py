"""Where the project's models live unless a setting says otherwise: one folder, `./models` or the
folder in the environment variable CCURATE_MODELS (how the tests stay clear of a checkout's models,
and how a user keeps one set of models for several checkouts). `make lm`, `make classifier` and
`make tokenizer` write there; the jobs and the trainer read from there."""

from __future__ import annotations

import os

MODELS_DIR = os.environ.get("CCURATE_MODELS") or "models"
LM_DIR = f"{MODELS_DIR}/lm"  # per language: SentencePiece + KenLM (+ cutoff.csv), `make lm`
WIKIREF_DIR = f"{MODELS_DIR}/wikiref"  # the Wikipedia-reference classifier, `make classifier`
WIKIREF_MODEL = f"{WIKIREF_DIR}/wikiref.bin"
TOKENIZER_DIR = f"{MODELS_DIR}/tokenizer"  # the SentencePiece BPE tokenizer, `make tokenizer`
