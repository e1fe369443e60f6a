"""Train CCNet-style perplexity models for one or more languages from Wikipedia text.

    python -m jobs.train_lm --lang en --input PATH… [--output DIR] [KEY=VALUE…]  (--print-settings: them all)
    python -m jobs.train_lm --lang en,de          (the dump from Wikimedia, or offline the text under
                                                   ../shared/data/wikipedia)
    make lm LANGS=en,de WIKI="PATH…" ARGS="vocab=32000 filter_language=true"

Per language: read Wikipedia articles (XML dump, wikitext, WikiText tokens, SQuAD JSON or plain
text; see curation/wikipedia.py), normalize each paragraph with CCNet's `normalize`, train a
SentencePiece unigram model (CCNet: vocabulary 65536, shrunk automatically when the text is too
small, with a message), encode, train a 5-gram with KenLM's `lmplz`, `build_binary` it. Writes
`{lang}.sp.model`, `{lang}.arpa.bin` and updates `manifest.json` in the output directory, the
layout CCNet's published models use, so both load the same way (curation/perplexity.py).

Runs on one machine (no Spark): the work is SentencePiece and KenLM, both single-process tools.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
from tqdm import tqdm

from curation import storage, wikipedia
from curation.model_paths import LM_DIR
from curation.normalize import normalize
from curation.redact import install_redaction, redact_config, redact_text
from curation.settings import parse_command, setting

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_WIKIPEDIA = (REPO_ROOT / ".." / "shared" / "data" / "wikipedia").resolve()
CJK_LANGS = {"zh", "ja", "ko", "yue", "wuu"}


@dataclass(frozen=True)
class TrainLmSettings:
    """Settings of `python -m jobs.train_lm`."""
    lang: str | None = setting(None, "language code(s), comma-separated: en,de", required=True)
    input: list[str] = setting([], "Wikipedia sources (dump .xml.bz2 path or URL, wikitext, .tokens, SQuAD .json, "
                                   "text, folders); LANG=PATH for one language only; []: the latest dump from "
                                   "base_url, or offline the text under ../shared/data/wikipedia")
    output: str = setting(LM_DIR, "directory of {lang}.sp.model, {lang}.arpa.bin and manifest.json")
    vocab: int = setting(65536, "SentencePiece vocabulary (CCNet's; shrunk, with a message, when the text is "
                                "too small)", minimum=2)
    order: int = setting(5, "n-gram order of the KenLM model", minimum=1)
    articles: int = setting(1_000_000, "articles read per language at most (CCNet: the first 1M)", minimum=1)
    base_url: str = setting(os.environ.get("WIKIMEDIA_BASE_URL", wikipedia.DEFAULT_WIKIMEDIA_BASE_URL),
                            "mirror of Wikimedia's dumps (default: $WIKIMEDIA_BASE_URL, else Wikimedia's)")
    memory: str = setting("20%", "lmplz/build_binary -S: memory for sorting (20%, 1G, …)")
    threads: int = setting(1, "SentencePiece training threads", minimum=1)
    filter_language: bool = setting(False, "keep only the local articles fastText lid.176 assigns to the language")
    keep_arpa: bool = setting(False, "keep the ARPA text model beside the binary one")


def find_kenlm_binary(name: str) -> str:
    """lmplz / build_binary: next to the running Python (the venv `make setup` fills), else PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"KenLM's {name} not found next to {sys.executable} nor on PATH: run `make setup`")
    return found


def offline_sources(lang: str, root: Path = SHARED_WIKIPEDIA) -> list[Path]:
    """The language's text under ../shared/data/wikipedia: root/{lang}/* and the mixed-language raw
    wikitext articles of root/wikitext/ (the caller keeps those language ID assigns to `lang`)."""
    sources = sorted(p for p in (root / lang).glob("*") if p.is_file()) if (root / lang).is_dir() else []
    if (root / "wikitext").is_dir():
        sources.append(root / "wikitext")
    return sources


def select_language(articles: Iterable[wikipedia.Article], lang: str) -> Iterator[wikipedia.Article]:
    """Keeps the articles fastText lid.176 assigns to `lang` (for mixed-language folders)."""
    from curation.langid import LanguageIdentifier

    identifier = LanguageIdentifier()
    for article in articles:
        (predicted, _score), = identifier.predict([article.text[:5000]])
        if predicted == lang:
            yield article


def iter_articles(lang: str, inputs: list[str], limit: int, base_url: str,
                  filter_language: bool) -> tuple[Iterator[wikipedia.Article], list[str]]:
    """Articles for `lang` and the list of sources they come from."""
    if inputs:
        sources = inputs
    else:
        url = wikipedia.dump_url(lang, base_url)
        try:
            stream = wikipedia.open_maybe_compressed(url)
            stream.close()
            sources = [url]
        except (urllib.error.URLError, OSError) as err:
            sources = [str(p) for p in offline_sources(lang)]
            if not sources:
                raise SystemExit(redact_text(
                    f"{lang}: cannot reach {url} ({err}) and no text under {SHARED_WIKIPEDIA}; "
                    f"pass --input PATH… (make lm WIKI=PATH…): an XML dump, wikitext, or text files")) from None
            print(redact_text(f"{lang}: {url} unreachable ({err}); using {', '.join(sources)}"), file=sys.stderr)
            filter_language = True

    def articles() -> Iterator[wikipedia.Article]:
        count = 0
        for source in sources:
            found = wikipedia.read_articles(source)
            if filter_language and not source.startswith(("http://", "https://")):
                found = select_language(found, lang)
            for article in found:
                yield article
                count += 1
                if count >= limit:
                    return

    return articles(), sources


def write_normalized(articles: Iterable[wikipedia.Article], path: Path, exclude: set[str]) -> dict:
    """One normalized paragraph per line; returns counts and the SHA-256 of what was written."""
    digest = hashlib.sha256()
    n_articles = n_lines = n_chars = 0
    with open(path, "w", encoding="utf-8") as out:
        for article in tqdm(articles, desc=f"articles → {path.name}", unit=" articles", mininterval=2):
            if article.title in exclude:
                continue
            n_articles += 1
            for line in article.text.split("\n"):
                line = normalize(line)
                if not line:
                    continue
                data = (line + "\n").encode("utf-8")
                digest.update(data)
                out.write(line + "\n")
                n_lines += 1
                n_chars += len(line)
    return {"articles": n_articles, "lines": n_lines, "chars": n_chars, "sha256": digest.hexdigest()}


def train_sentencepiece(text_file: Path, prefix: Path, lang: str, vocab_size: int, threads: int,
                        max_sentences: int) -> int:
    """Unigram SentencePiece (CCNet's choice). When the text cannot fill `vocab_size`, SentencePiece
    says the largest size it can; train again with that and say so. Returns the vocabulary size."""
    args = dict(input=str(text_file), model_prefix=str(prefix), model_type="unigram",
                character_coverage=0.9995 if lang in CJK_LANGS else 1.0, num_threads=threads,
                input_sentence_size=max_sentences, shuffle_input_sentence=True,
                train_extremely_large_corpus=False, minloglevel=2)
    size = vocab_size
    for _ in range(3):
        try:
            spm.SentencePieceTrainer.train(vocab_size=size, **args)
            return size
        except RuntimeError as err:
            match = re.search(r"value <= (\d+)", str(err))
            if not match:
                raise
            smaller = int(match.group(1))
            print(f"{lang}: the text is too small for a {size}-piece vocabulary; using {smaller}", file=sys.stderr)
            size = smaller
    raise RuntimeError(f"{lang}: SentencePiece training failed")


def encode_file(sp_model: Path, text_file: Path, out_file: Path) -> int:
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    pieces = 0
    with open(text_file, encoding="utf-8") as src, open(out_file, "w", encoding="utf-8") as out:
        batch: list[str] = []

        def flush() -> None:
            nonlocal pieces
            for encoded in sp.encode(batch, out_type=str):
                pieces += len(encoded)
                out.write(" ".join(encoded) + "\n")
            batch.clear()

        for line in tqdm(src, desc="sentencepiece encode", unit=" lines", mininterval=2):
            batch.append(line.rstrip("\n"))
            if len(batch) >= 4096:
                flush()
        flush()
    return pieces


def train_kenlm(encoded: Path, arpa: Path, binary: Path, order: int, memory: str, tmpdir: Path) -> None:
    lmplz = [find_kenlm_binary("lmplz"), "-o", str(order), "-S", memory, "-T", str(tmpdir),
             "--discount_fallback"]
    print(" ".join(lmplz), f"< {encoded} > {arpa}", file=sys.stderr)
    with open(encoded, "rb") as src, open(arpa, "wb") as out:
        subprocess.run(lmplz, stdin=src, stdout=out, check=True)
    build = [find_kenlm_binary("build_binary"), "-S", memory, "-T", str(tmpdir), str(arpa), str(binary)]
    print(" ".join(build), file=sys.stderr)
    subprocess.run(build, check=True, stdout=subprocess.DEVNULL)


def update_manifest(output: Path, lang: str, entry: dict) -> None:
    path = output / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.setdefault("languages", {})[lang] = entry
    storage.write_text(path, json.dumps(redact_config(manifest), indent=2, sort_keys=True) + "\n")


def train_language(lang: str, inputs: list[str], output: Path, *, vocab_size: int = TrainLmSettings.vocab,
                   order: int = TrainLmSettings.order, articles: int = TrainLmSettings.articles,
                   base_url: str = wikipedia.DEFAULT_WIKIMEDIA_BASE_URL, memory: str = TrainLmSettings.memory,
                   threads: int = TrainLmSettings.threads, max_sentences: int = 2_000_000,
                   exclude_titles: Iterable[str] = (), filter_language: bool = False, keep_arpa: bool = False) -> dict:
    """Trains `{lang}.sp.model` + `{lang}.arpa.bin` in `output`; returns the manifest entry."""
    output.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    found, sources = iter_articles(lang, list(inputs), articles, base_url, filter_language)
    with tempfile.TemporaryDirectory(prefix=f"lm-{lang}-", dir=output) as tmp:
        tmp = Path(tmp)
        text_file = tmp / f"{lang}.txt"
        counts = write_normalized(found, text_file, set(exclude_titles))
        if counts["lines"] == 0:
            raise SystemExit(redact_text(f"{lang}: no text found in {', '.join(sources)}"))
        used_vocab = train_sentencepiece(text_file, tmp / lang, lang, vocab_size, threads, max_sentences)
        encoded = tmp / f"{lang}.sp.txt"
        n_pieces = encode_file(tmp / f"{lang}.model", text_file, encoded)
        arpa = tmp / f"{lang}.arpa"
        train_kenlm(encoded, arpa, tmp / f"{lang}.arpa.bin", order, memory, tmp)
        # Publish: the models are replaced together, the manifest last.
        os.replace(tmp / f"{lang}.model", output / f"{lang}.sp.model")
        os.replace(tmp / f"{lang}.arpa.bin", output / f"{lang}.arpa.bin")
        if keep_arpa:
            os.replace(arpa, output / f"{lang}.arpa")
    entry = {
        "sp_model": f"{lang}.sp.model", "lm": f"{lang}.arpa.bin", "order": order,
        "vocab_size": used_vocab, "requested_vocab_size": vocab_size, "model_type": "unigram",
        "sources": sources, "articles": counts["articles"], "lines": counts["lines"],
        "chars": counts["chars"], "pieces": n_pieces, "data_sha256": counts["sha256"],
        "sizes": {"sp_model": (output / f"{lang}.sp.model").stat().st_size,
                  "lm": (output / f"{lang}.arpa.bin").stat().st_size},
        "created": started.isoformat(timespec="seconds"),
        "seconds": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
    }
    update_manifest(output, lang, entry)
    print(f"{lang}: {counts['articles']} articles, {counts['lines']} lines, vocab {used_vocab}, "
          f"{n_pieces} pieces → {output / (lang + '.arpa.bin')}", file=sys.stderr)
    return entry


def main(argv: list[str] | None = None) -> int:
    settings = parse_command(TrainLmSettings, argv, prog="python -m jobs.train_lm", description=__doc__,
                             flags={"--lang": "lang", "--input": "input", "--output": "output"})
    install_redaction()
    langs = [lang.strip() for lang in settings.lang.split(",") if lang.strip()]
    routed = route_inputs(settings.input, langs)
    for lang in langs:
        inputs, shared = routed[lang]
        if settings.input and not inputs:
            print(f"{lang}: no input given for it; skipped", file=sys.stderr)
            continue
        # Paths given to several languages at once are split between them by language ID.
        train_language(lang, inputs, Path(settings.output), vocab_size=settings.vocab, order=settings.order,
                       articles=settings.articles, base_url=settings.base_url, memory=settings.memory,
                       threads=settings.threads, filter_language=settings.filter_language or shared,
                       keep_arpa=settings.keep_arpa)
    return 0


def route_inputs(inputs: list[str], langs: list[str]) -> dict[str, tuple[list[str], bool]]:
    """`LANG=PATH` goes to that language only; a bare PATH goes to every language (then filtered by
    language ID when there are several). Returns {lang: (paths, filtered)}."""
    routed: dict[str, tuple[list[str], bool]] = {}
    for lang in langs:
        own = [item.split("=", 1)[1] for item in inputs if re.match(rf"^{re.escape(lang)}=", item)]
        bare = [item for item in inputs if not re.match(r"^[a-z]{2,3}(_[a-z]+)?=", item)]
        routed[lang] = (own + bare, bool(bare) and len(langs) > 1)
    return routed


if __name__ == "__main__":
    sys.exit(main())
