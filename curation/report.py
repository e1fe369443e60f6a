"""The run report: DIR/report.html with PNG plots, readable in any browser without this project.

    python -m curation.report RUN_DIR

Reads DIR/stats.json and only the score columns of DIR/curated (row group by row group), so it
stays small whatever the size of the run. Plots what the run has: the funnel with drop reasons,
documents per language, perplexity per language with the bucket cutoffs, wikiref scores, MinHash
cluster sizes, throughput per stage."""

from __future__ import annotations

import argparse
import html
import io
import json
import os
from collections import Counter, defaultdict

import numpy as np

from curation import schema, storage
from curation.redact import redact_text

SCORE_COLUMNS = ["language", *schema.SCORES]
MAX_SAMPLES_PER_LANGUAGE = 100_000


def read_columns(curated: str) -> dict:
    """Counts per language plus a bounded sample of each score, batch by batch."""
    columns: dict = {"languages": Counter(), "characters": 0, "perplexity": defaultdict(list),
                     "wikiref_score": [], "cluster_sizes": Counter()}
    files = storage.parquet_files(curated) if storage.is_dir(curated) else []
    if not files:
        return columns
    dataset = storage.parquet_dataset(curated, files)
    present = [name for name in SCORE_COLUMNS if name in dataset.schema.names]
    for batch in dataset.to_batches(columns=present):
        data = batch.to_pydict()
        languages = [str(lang) for lang in data["language"]]
        columns["languages"].update(languages)
        columns["characters"] += sum(data.get("length", []))
        for lang, ppl in zip(languages, data.get("perplexity", [])):
            if ppl is not None and ppl >= 0 and len(columns["perplexity"][lang]) < MAX_SAMPLES_PER_LANGUAGE:
                columns["perplexity"][lang].append(ppl)
        if "wikiref_score" in data and len(columns["wikiref_score"]) < MAX_SAMPLES_PER_LANGUAGE:
            columns["wikiref_score"].extend(s for s in data["wikiref_score"] if s is not None)
        columns["cluster_sizes"].update(s for s in data.get("minhash_cluster_size", []) if s is not None)
    return columns


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use: every Spark Python worker imports
    this module (through jobs.curate) and none of them plots (about 0.4 s of CPU each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def subplots(*args, **kwargs):
    return pyplot().subplots(*args, **kwargs)


def save(fig, location: str) -> str:
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    pyplot().close(fig)
    storage.write_bytes(location, png.getvalue())
    return os.path.basename(location)


def plot_funnel(stages: dict, out: str) -> str:
    names = list(stages)
    fig, ax = subplots(figsize=(8, 3.5))
    ax.bar(["input records"] + names, [stages[names[0]].get("in", 0)] + [stages[n].get("out", 0) for n in names],
           color="#4c72b0")
    ax.set_ylabel("documents")
    ax.set_title("Documents after each stage")
    return save(fig, storage.join(out, "funnel.png"))


def plot_languages(languages: Counter, out: str) -> str:
    top = languages.most_common(25)
    fig, ax = subplots(figsize=(8, 3.5))
    ax.bar([lang for lang, _ in top], [n for _, n in top], color="#55a868")
    ax.set_ylabel("documents")
    ax.set_title("Documents per language (top 25)")
    return save(fig, storage.join(out, "languages.png"))


def plot_perplexity(perplexity: dict, cutoffs: dict, out: str) -> str:
    langs = sorted(perplexity, key=lambda lang: -len(perplexity[lang]))[:6]
    fig, axes = subplots(len(langs), 1, figsize=(8, 2.2 * len(langs)), squeeze=False)
    for ax, lang in zip(axes[:, 0], langs):
        values = np.asarray(perplexity[lang])
        ax.hist(values, bins=np.geomspace(max(values.min(), 1), values.max() + 1, 40), color="#8172b2")
        ax.set_xscale("log")
        for name, value in cutoffs.get(lang, {}).items():
            ax.axvline(value, color="#c44e52", linestyle="--")
            ax.text(value, ax.get_ylim()[1] * 0.9, f" {name}", color="#c44e52")
        ax.set_title(f"{lang}: perplexity ({len(values)} documents)")
    return save(fig, storage.join(out, "perplexity.png"))


def plot_histogram(values, title: str, xlabel: str, out: str, name: str, log: bool = False) -> str:
    fig, ax = subplots(figsize=(8, 3))
    ax.hist(values, bins=40, color="#64b5cd", log=log)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    return save(fig, storage.join(out, name))


def plot_throughput(stages: dict, out: str) -> str:
    rates = {name: s["in"] / s["seconds"] for name, s in stages.items() if s.get("seconds") and s.get("in")}
    fig, ax = subplots(figsize=(8, 3))
    ax.bar(list(rates), list(rates.values()), color="#ccb974")
    ax.set_ylabel("documents / s (one core)")
    ax.set_title("Throughput per stage")
    return save(fig, storage.join(out, "throughput.png"))


def plot_rule_hits(name: str, stage: dict, out: str) -> str:
    """Lines removed and documents failed by each rule of a stage that counts them (C4's)."""
    hits = {key: n for key, n in stage.items() if key.startswith(("lines_removed.", "pages_hit.")) and n}
    fig, ax = subplots(figsize=(8, 3))
    ax.barh(list(hits), list(hits.values()), color="#dd8452", log=True)
    ax.set_xlabel("lines (lines_removed.*) or documents (pages_hit.*)")
    ax.set_title(f"{name}: hits per rule")
    return save(fig, storage.join(out, f"{name}-rules.png"))


def drop_table(stages: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{s.get('in', 0)}</td><td>{s.get('out', 0)}</td>"
                   f"<td>{html.escape(', '.join(f'{r}: {n}' for r, n in sorted(s.get('dropped', {}).items())))}"
                   "</td></tr>"
                   for name, s in stages.items())
    return f"<table><tr><th>stage</th><th>in</th><th>out</th><th>dropped, by reason</th></tr>{rows}</table>"


def ablation_section(run_dir: str) -> str:
    """The table and plot of `make ablate` (RUN/ablate/results.json) when it has run."""
    path = storage.join(run_dir, "ablate", "results.json")
    if not storage.exists(path):
        return ""
    results = json.loads(storage.read_text(path))
    sets = list(results["eval_sets"])
    rows = "".join(f"<tr><td>{html.escape(arm)}</td><td>{results['arms'][arm]['tokens']:,}</td>"
                   + "".join(f"<td>{summary[s]['loss']['mean']:.3f} ± {summary[s]['loss']['std']:.3f}</td>"
                             for s in sets) + "</tr>"
                   for arm, summary in results["summary"].items())
    head = "".join(f"<th>held-out {html.escape(s)} loss</th>" for s in sets)
    return (f"<h2>Ablation: the same LLaMA trained on each arm ({len(results['settings']['seeds'])} seeds, "
            f"mean ± std)</h2><table><tr><th>arm</th><th>tokens</th>{head}</tr>{rows}</table>"
            '<img src="ablate/ablate.png" alt="held-out loss per arm">')


def write_report(run_dir: str | os.PathLike, cutoffs: dict | None = None) -> str:
    """Writes RUN_DIR/report.html and RUN_DIR/report/*.png; returns the HTML path.
    `cutoffs`: {language: {"p30": value, "p60": value}} drawn on the perplexity plots."""
    run_dir = str(run_dir)
    stats = json.loads(storage.read_text(storage.join(run_dir, "stats.json")))
    stages = stats.get("stages", {})
    out = storage.join(run_dir, "report")
    columns = read_columns(storage.join(run_dir, "curated"))
    plots = [("Funnel", plot_funnel(stages, out))] if stages else []
    if columns["languages"]:
        plots.append(("Languages", plot_languages(columns["languages"], out)))
    if columns["perplexity"]:
        plots.append(("Perplexity", plot_perplexity(columns["perplexity"], cutoffs or {}, out)))
    if columns["wikiref_score"]:
        plots.append(("Wikipedia-reference score", plot_histogram(
            columns["wikiref_score"], "wikiref_score", "probability of the reference class", out, "wikiref.png")))
    if columns["cluster_sizes"]:
        sizes = [size for size, n in columns["cluster_sizes"].items() for _ in range(n)]
        plots.append(("MinHash clusters", plot_histogram(
            sizes, "MinHash cluster size per document", "cluster size", out, "clusters.png", log=True)))
    for name, stage in stages.items():
        if any(key.startswith(("lines_removed.", "pages_hit.")) and n for key, n in stage.items()):
            plots.append((f"Rules of {name}", plot_rule_hits(name, stage, out)))
    if stages:
        plots.append(("Throughput", plot_throughput(stages, out)))
    # stats.json is written redacted; a run directory from before redaction existed may not be.
    failed = "".join("<li>" + html.escape(redact_text(f"{f['source']}: {f.get('error')}")) + "</li>"
                     for f in stats.get("failed_segments", []))
    figures = "".join(f'<h2>{html.escape(title)}</h2><img src="report/{name}" alt="{html.escape(title)}">'
                      for title, name in plots)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Curation report: {html.escape(os.path.basename(run_dir.rstrip("/")))}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 8px;text-align:left}}
img{{max-width:100%}}</style></head>
<body><h1>Curation report: {html.escape(str(run_dir))}</h1>
<p>{stats.get('documents_out', 0)} documents, {columns['characters']:,} characters, in {len(columns['languages'])}
languages, from {stats.get('segments_done', 0)}/{stats.get('inputs', 0)} segments in {stats.get('seconds', 0)} s.</p>
{drop_table(stages)}
{f'<h2>Failed segments</h2><ul>{failed}</ul>' if failed else ''}
{figures}
{ablation_section(run_dir)}
<script>window.addEventListener("load", () => {{
  const images = [...document.images];
  const loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = loaded + "/" + images.length;
}});</script>
</body></html>"""
    path = storage.join(run_dir, "report.html")
    storage.write_text(path, page)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    print(write_report(parser.parse_args(argv).run_dir))


if __name__ == "__main__":
    main()
