"""The Wikipedia-reference quality classifier (LLaMA's addition to CCNet): cited-URL extraction from
Wikipedia, URL keys, and the scoring stage.

- `cited_urls(wikitext)`: the external URLs an article cites — `{{cite …|url=…}}` template
  parameters, links inside `<ref>` tags, bracketed and bare external links. Web-archive copies
  (`web.archive.org/web/…/URL`) count as the URL they archive.
- `url_key(url)`: a normalised key for joining cited URLs with crawled pages: scheme, `www.`,
  default port, fragment, tracking parameters (`utm_*`, `fbclid`, …) and trailing slash removed,
  host lowercased, remaining query parameters sorted.
- `WikirefStage`: adds `wikiref_score` (fastText probability of the reference class) and
  `wikiref_keep` (score ≥ threshold); it never drops a document, so users can re-threshold.

`python -m curation.wikiref extract-urls FILE…` prints the URL keys cited by wikitext files or
MediaWiki XML dumps (`.xml`, `.xml.bz2`), one a line (read by `curation.wikipedia.read_wikitext`).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from curation.langid import load_model as load_fasttext_model
from curation.model_paths import WIKIREF_MODEL
from curation.pipeline import ModelFiles, Stage
from curation.settings import setting
from curation.wikipedia import read_wikitext

LABEL_PREFIX = "__label__"
POSITIVE = "wikiref"
NEGATIVE = "random"
BATCH_SIZE = 512

# Template parameters that hold the cited URL (not the archive copy, not the author's page).
URL_PARAMS = {"url", "chapter-url", "chapterurl", "contribution-url", "conference-url", "article-url",
              "section-url", "transcript-url", "lay-url", "layurl"}
TRACKING_PARAMS = {"fbclid", "gclid", "dclid", "msclkid", "mc_cid", "mc_eid", "igshid", "yclid",
                   "_ga", "_hsenc", "_hsmi", "ref_src", "spm", "cmpid", "wt.mc_id", "ito"}
TRACKING_PREFIXES = ("utm_", "pk_", "mtm_")
ARCHIVE_RE = re.compile(r"^https?://(?:web\.)?archive\.org/web/[0-9a-z_*]+/(.+)$", re.I)
BARE_URL_RE = re.compile(r"(?:https?:)?//[^\s\[\]<>\"{}|]+", re.I)
DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass(frozen=True)
class WikirefSettings:
    """The Wikipedia-reference classifier."""
    model: str = setting(WIKIREF_MODEL, "`make classifier` trains it")
    threshold: float = setting(0.25, "wikiref_keep = score ≥ threshold (RedPajama v2's cut); the score is kept",
                               minimum=0, maximum=1)
    drop: bool = setting(False, "true: drop documents below the threshold instead of marking them")


# --- URL keys ---------------------------------------------------------------------------------

def unwrap_archive(url: str) -> str:
    """`https://web.archive.org/web/2014…/http://x.org/a` → `http://x.org/a`."""
    match = ARCHIVE_RE.match(url)
    if not match:
        return url
    inner = match[1]
    return inner if "://" in inner else "http://" + inner


def url_key(url: str) -> str | None:
    """A normalised join key for `url`, or None when it is not an http(s) URL with a host.

    `HTTPS://WWW.Example.org:443/a/b/?utm_source=x&b=2&a=1#top` → `example.org/a/b?a=1&b=2`.
    The path keeps its case (servers are case-sensitive there); percent-escapes are decoded."""
    url = unwrap_archive(url.strip().strip("'\"<>"))
    if url.startswith("//"):
        url = "http:" + url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in DEFAULT_PORTS or not host or "." not in host:
        return None
    if host.startswith("www."):
        host = host[4:]
    elif re.match(r"^www\d\.", host):
        host = host[5:]
    if port is not None and str(port) not in DEFAULT_PORTS.values():
        host = f"{host}:{port}"
    path = unquote(parts.path)
    path = re.sub(r"/{2,}", "/", path).rstrip("/")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k.lower() not in TRACKING_PARAMS and not k.lower().startswith(TRACKING_PREFIXES)]
    key = host + path
    if query:
        key += "?" + urlencode(sorted(query))
    return key


# --- cited URLs ---------------------------------------------------------------------------------

def _clean_url(text: str) -> str | None:
    text = re.split(r"&(?:lt|gt|quot);", text.strip(), maxsplit=1)[0]
    match = BARE_URL_RE.search(text)
    if not match:
        return None
    url = match.group(0).rstrip(".,;:'")
    while url.endswith(")") and url.count(")") > url.count("("):
        url = url[:-1].rstrip(".,;:'")
    if url.startswith("//"):
        url = "http:" + url
    return url


def cited_urls(wikitext: str) -> list[str]:
    """The external URLs cited by an article, in order of first appearance, not yet keyed."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    found: list[str] = []
    for template in code.filter_templates(recursive=True):
        for param in template.params:
            name = str(param.name).strip().lower().replace("_", "-")
            if name in URL_PARAMS or name.replace("-", "") in URL_PARAMS:
                url = _clean_url(str(param.value))
                if url:
                    found.append(url)
    for link in code.filter_external_links(recursive=True):
        url = str(link.url).strip()
        if url.lower().startswith(("http://", "https://", "//")):
            url = _clean_url(url)
            if url:
                found.append(url)
    seen: set[str] = set()
    out = []
    for url in found:
        if url not in seen:
            seen.add(url)
            out.append(url)
    return out


def cited_url_keys(wikitext: str) -> list[str]:
    """Distinct URL keys cited by an article, in order of first appearance."""
    keys: dict[str, None] = {}
    for url in cited_urls(wikitext):
        key = url_key(url)
        if key:
            keys.setdefault(key)
    return list(keys)


def article_text(wikitext: str) -> str:
    """Plain text of an article (templates, tags, references and markup removed) with mwparserfromhell."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    for tag in code.filter_tags(recursive=False):
        if str(tag.tag).strip().lower() in {"ref", "gallery", "math", "references"}:
            try:
                code.remove(tag)
            except ValueError:
                pass
    text = code.strip_code(normalize=True, collapse=True)
    lines = [line.strip() for line in text.split("\n")]
    # Drop table/list debris: keep lines that read as prose.
    lines = [line for line in lines if len(line) >= 40 or (line and line[-1:] in ".!?:")]
    return "\n".join(lines)


def article_passages(wikitext: str, min_chars: int = 300, max_chars: int = 3000) -> list[str]:
    """The article's plain text cut at section headings into passages of at least `min_chars`
    (short sections are merged with the next), each at most about `max_chars`."""
    sections = re.split(r"\n=+[^=\n]+=+[ \t]*\n", "\n" + wikitext)
    passages, current = [], ""
    for section in sections:
        text = article_text(section)
        if not text:
            continue
        current = f"{current}\n{text}" if current else text
        if len(current) >= min_chars:
            while len(current) > max_chars:
                cut = current.rfind("\n", min_chars, max_chars)
                cut = cut if cut > 0 else max_chars
                passages.append(current[:cut].strip())
                current = current[cut:].strip()
            if len(current) >= min_chars:
                passages.append(current)
                current = ""
    if len(current) >= min_chars:
        passages.append(current)
    return passages


# --- the classifier -----------------------------------------------------------------------------

# Punctuation that marks encyclopedic prose becomes a word of its own (`city.` → `city .`,
# `(born` → `( born`); other ASCII punctuation and whitespace become spaces. Done on UTF-8 bytes,
# one C pass per character replaced, no regex: it runs on every document.
_SPLIT = [c.encode() for c in ".,()\";:!?'"]
_REMOVE = ("#$%&*+-/<=>@[\\]^_`{|}~" + "\n\r\t\v\f").encode()
_BYTE_TABLE = bytes.maketrans(_REMOVE, b" " * len(_REMOVE))


def fasttext_line(text: str) -> str:
    """What the classifier sees of a document, in training and in scoring: one line, ASCII
    lowercased, prose punctuation split off words, other ASCII punctuation removed."""
    data = text.encode("utf-8", "replace").lower().translate(_BYTE_TABLE)
    for char in _SPLIT:
        data = data.replace(char, b" " + char + b" ")
    return data.decode("utf-8", "replace")


def load_model(path: str):
    """The classifier, through the per-process fastText model cache shared with language ID."""
    if not Path(path).exists():
        raise FileNotFoundError(f"wikiref model {path} not found: train it with `make classifier`")
    return load_fasttext_model(path)


def reference_probabilities(model, texts: list[str]) -> list[float]:
    """P(reference class) per text, one batched predict over both labels."""
    if not texts:
        return []
    labels, probs = model.predict([fasttext_line(t) for t in texts], k=2)
    positive = LABEL_PREFIX + POSITIVE
    out = []
    for label, prob in zip(labels, probs):
        if label[0] == positive:
            out.append(float(prob[0]))
        elif len(label) > 1 and label[1] == positive:
            out.append(float(prob[1]))
        else:
            out.append(0.0)
    return out


class WikirefStage(Stage):
    """Adds `wikiref_score` (probability of the reference class) and `wikiref_keep`
    (score ≥ threshold). Drops the documents below the threshold only when `drop` is set: by
    default the score stays a column to re-threshold."""

    name = "wikiref"
    writes = ("wikiref_score", "wikiref_keep")
    settings_class = WikirefSettings
    models = (ModelFiles("model", lambda path: [p for p in [Path(path)] if p.is_file()], train="make classifier"),)

    def __init__(self, settings: WikirefSettings = WikirefSettings(), batch_size: int = BATCH_SIZE,
                 text_field: str = "raw_content"):
        super().__init__()
        self.model = load_model(settings.model)
        self.threshold, self.drop_below = settings.threshold, settings.drop
        self.batch_size = batch_size
        self.text_field = text_field

    def process(self, docs: Iterable[dict]) -> Iterator[dict]:
        docs = iter(docs)
        while batch := list(islice(docs, self.batch_size)):
            scores = reference_probabilities(self.model, [doc.get(self.text_field) or "" for doc in batch])
            for doc, score in zip(batch, scores):
                doc["wikiref_score"] = round(score, 4)
                doc["wikiref_keep"] = score >= self.threshold
                if doc["wikiref_keep"]:
                    yield doc
                elif self.drop_below:
                    self.drop("below_threshold")
                else:
                    self.stats["below_threshold"] += 1
                    yield doc


# --- CLI ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m curation.wikiref")
    sub = parser.add_subparsers(dest="command", required=True)
    extract = sub.add_parser("extract-urls", help="print the normalised URLs cited by articles, one a line")
    extract.add_argument("files", nargs="+", help="wikitext files or MediaWiki XML dumps (.xml, .xml.bz2)")
    extract.add_argument("--raw", action="store_true", help="print the URLs as cited, not their keys")
    args = parser.parse_args(argv)
    seen: set[str] = set()
    for article in read_wikitext(args.files):
        text = article.text
        for url in (cited_urls(text) if args.raw else cited_url_keys(text)):
            if url not in seen:
                seen.add(url)
                sys.stdout.write(url + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
