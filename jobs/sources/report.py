"""DIR/report.html of a source job: the source's section (documents in and out of each stage, drops by
reason, documents per input, throughput, the inputs that failed), drawn from DIR/stats.json and
DIR/manifest.json alone, with `curation.report`'s plots. `source_section` is the section, for a page
that shows several sources."""

from __future__ import annotations

import html
import json
import os

from curation import storage
from curation.report import drop_table, plot_funnel, plot_throughput, save, subplots
from jobs.sources.inputs import readable_name

TOP_INPUTS = 25


def plot_inputs(entries: list[dict], out: str, name: str) -> str:
    """Documents of the inputs that gave the most."""
    done = sorted((e for e in entries if e["state"] == "done"), key=lambda e: -e["documents"])[:TOP_INPUTS]
    fig, ax = subplots(figsize=(8, 0.3 * len(done) + 1.2))
    ax.barh([readable_name(e["id"]) for e in reversed(done)], [e["documents"] for e in reversed(done)],
            color="#4c72b0")
    ax.set_xlabel("documents")
    ax.set_title(f"Documents per input (top {TOP_INPUTS})")
    return save(fig, storage.join(out, f"{name}-inputs.png"))


def source_section(stats: dict, manifest: dict, out: str) -> str:
    """The HTML of one source's section; its plots are written under `out` (report/)."""
    name, stages = stats["source"], stats["stages"]
    plots = []
    if stages:
        plots.append(("Documents after each stage", plot_funnel(stages, out)))
    if any(entry["state"] == "done" for entry in manifest["inputs"]):
        plots.append(("Documents per input", plot_inputs(manifest["inputs"], out, name)))
    if any(stage.get("seconds") for stage in stages.values()):
        plots.append(("Throughput", plot_throughput(stages, out)))
    failed = "".join(f"<li>{html.escape(f['source'])}: {html.escape(str(f['error']))}</li>"
                     for f in stats["failed_inputs"])
    left_out = [entry for entry in manifest["inputs"] if entry["state"] == "left_out"]
    figures = "".join(f'<h3>{html.escape(title)}</h3><img src="report/{file}" alt="{html.escape(title)}">'
                      for title, file in plots)
    return (f'<section id="source-{html.escape(name)}"><h2>{html.escape(name)}</h2>'
            f"<p>{stats['documents_out']:,} documents, {stats['characters_out']:,} characters, from "
            f"{stats['inputs_read']}/{stats['inputs']} inputs ({len(left_out)} left out, "
            f"{len(stats['failed_inputs'])} failed) in {stats['seconds']} s.</p>{drop_table(stages)}"
            + (f"<h3>Failed inputs</h3><ul>{failed}</ul>" if failed else "")
            + (f"<details><summary>{len(left_out)} inputs left out</summary><ul>"
               + "".join(f"<li>{html.escape(e['source'])}: {html.escape(e['error'])}</li>" for e in left_out)
               + "</ul></details>" if left_out else "")
            + f"{figures}</section>")


def write_report(run_dir: str) -> str:
    """Writes DIR/report.html and DIR/report/*.png; returns the HTML's location."""
    stats = json.loads(storage.read_text(storage.join(run_dir, "stats.json")))
    manifest = json.loads(storage.read_text(storage.join(run_dir, "manifest.json")))
    title = f"Source report: {os.path.basename(run_dir.rstrip('/'))}"
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>'
            "body{font-family:sans-serif;max-width:900px;margin:2em auto}td,th{padding:2px 8px;text-align:left}"
            f"img{{max-width:100%}}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{source_section(stats, manifest, storage.join(run_dir, 'report'))}</body></html>")
    location = storage.join(run_dir, "report.html")
    storage.write_text(location, page)
    return location
