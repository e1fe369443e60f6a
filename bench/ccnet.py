"""Ours against cc_net itself, per core, on ≥ 40k real WET documents: read → (line dedup) → language
ID → SentencePiece + KenLM perplexity → bucket.

    python -m bench.ccnet [--copies 60] [--repeat 2] [--profile]

The corpus: `--copies` copies of the shared 697-document WET file, one WET file (a segment) each,
every record with a new URL and record id, headers in CommonCrawl's order (which cc_net's reader
needs). Identical text across copies, so with line dedup on nearly every line is a duplicate: that
mode measures reading, hashing and dedup, as in issue #21.

cc_net: its own modules (cc-net==1.0.0) chained in one process as its `mine` does: reader
(min_len=300) → [HashesCollector over the shard, then DuplicatesRemover] → Classifier (lid.176) →
MultiSentencePiece → DocLM → PerplexityBucket. Ours: `jobs.curate` in Spark local[2] (phase 1, then
phase 2 with MinHash, C4 and wikiref off), from the start of the Python process to its end, Spark's
start-up included. Each run is its own process; cc_net and ours alternate, best of `--repeat`.
Per core: cc_net's docs/s over 1 core, ours over 2; also docs per CPU-second (the process tree's
user+sys time), which the load of a shared machine disturbs less. Both on the same models (`make
lm`'s en/de if there, else small ones trained here), the same lid.176.ftz and cutoffs.

Each run's line says where its time went: cc_net's seconds per step (its reader is `reading`), ours
the session start, the run and each stage's own seconds summed over tasks. The `ceiling` line is
the least wall time our run could take: its language ID and perplexity seconds (cc_net's fastText
and SentencePiece + KenLM calls, which any engine makes) spread perfectly over our cores, after our
session start.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import json
import os
import pstats
import subprocess
import sys
import time
import uuid
from pathlib import Path

from bench.common import REPO_ROOT, SHARED_DATA
from curation.model_paths import LM_DIR

WET = SHARED_DATA / "wet" / "CC-MAIN-2019-30-697-docs.warc.wet.gz"
CC_HEADERS = ("WARC-Type", "WARC-Target-URI", "WARC-Date", "WARC-Record-ID", "WARC-Refers-To", "WARC-Block-Digest",
              "Content-Type", "Content-Length")
LANGUAGES = ("en", "de")
WORK = REPO_ROOT / "runs" / "bench-ccnet"
OUR_CORES = 2


def build_corpus(copies: int, out: Path) -> list[Path]:
    """`copies` WET files of the shared file's records, with distinct URLs and record ids."""
    from warcio.archiveiterator import ArchiveIterator

    out.mkdir(parents=True, exist_ok=True)
    records = []
    with open(WET, "rb") as stream:
        for record in ArchiveIterator(stream):
            records.append(({name: record.rec_headers.get_header(name) for name in CC_HEADERS},
                            record.content_stream().read()))
    files = []
    for copy in range(copies):
        path = out / f"CC-MAIN-2019-30-copy{copy:03d}.warc.wet.gz"
        files.append(path)
        if path.exists():
            continue
        with open(path.with_suffix(".tmp"), "wb") as f:
            for n, (headers, content) in enumerate(records):  # one gzip member a record, as CommonCrawl
                headers = dict(headers, **{"WARC-Target-URI": f"{headers['WARC-Target-URI']}?copy={copy}",
                                           "WARC-Record-ID": f"<urn:uuid:{uuid.UUID(int=copy << 32 | n)}>"})
                f.write(gzip.compress(b"WARC/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
                                      + b"\r\n" + content + b"\r\n\r\n", compresslevel=5))
        path.with_suffix(".tmp").rename(path)
    return files


def prepare_models(models: Path) -> Path:
    """en/de SentencePiece + KenLM and a cutoff.csv: `make lm`'s if there, else trained here (small)."""
    from curation.perplexity import available_languages, load_model, write_cutoffs
    from curation.warc import ArchiveReader

    if set(LANGUAGES) <= set(available_languages(models)) and (models / "cutoff.csv").exists():
        return models
    models = WORK / "lm"
    if not (models / "cutoff.csv").exists():
        from jobs.train_lm import train_language

        wiki = SHARED_DATA / "wikipedia"
        train_language("en", [str(wiki / "en" / "wikitext2-valid.tokens.txt")], models, vocab_size=4000, memory="64M")
        train_language("de", sorted(str(p) for p in (wiki / "wikitext").glob("*.txt")
                                    if "BBDO" in p.name or "Mozilla" in p.name), models, memory="64M")
        import numpy as np

        texts = [d["raw_content"] for d in ArchiveReader().read(str(WET)) if len(d["raw_content"]) >= 300]
        write_cutoffs(models / "cutoff.csv", {lang: [float(v) for v in np.percentile(
            load_model(models, lang).perplexities(texts), range(100))] for lang in LANGUAGES})
    return models


# ---- one measured run, in its own process --------------------------------------------------------

def run_ccnet(files: list[Path], models: Path, dedup: bool) -> tuple[int, float, dict]:
    """cc_net's mine chain on one shard (these files), one process; returns documents out, CPU
    seconds, and the seconds of each step (`reading`: the rest of the loop, cc_net's reader)."""
    import numpy as np
    from cc_net import dedup as cc_dedup
    from cc_net import perplexity as cc_perplexity
    from cc_net import process_wet_file, split_by_lang

    from curation.langid import default_model_path

    def predict_with_a_list(model, text: str, k: int = 1):  # fastText's single-string predict fails on numpy 2
        labels, scores = model.predict([text], k=k)
        return [label.replace("__label__", "") for label in labels[0]], np.array(scores[0])

    split_by_lang.predict = predict_with_a_list

    def read():
        for path in files:
            with gzip.open(path, "rt") as lines:
                yield from process_wet_file.parse_warc_file(lines, min_len=300)

    chain = []
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if dedup:  # cc_net's `hashes` step reads the shard once, then `mine` reads it again
        hashes = WORK / f"hashes-{os.getpid()}.bin"
        with cc_dedup.HashesCollector(field="raw_content", output=hashes) as collector:
            for doc in read():
                collector(doc)
        seconds["hashes step (reading + hashing)"] = time.perf_counter() - started
        chain.append(cc_dedup.DuplicatesRemover(field="raw_content", hashes_files=[hashes]))
    chain += [split_by_lang.Classifier(model=default_model_path(), field="raw_content", out_field="language",
                                       threshold=0.5),
              cc_perplexity.MultiSentencePiece({lang: models / f"{lang}.sp.model" for lang in LANGUAGES},
                                               field="raw_content", output_field="tokenized", normalize=True),
              cc_perplexity.DocLM({lang: models / f"{lang}.arpa.bin" for lang in LANGUAGES}, field="tokenized",
                                  output_field="perplexity", normalize=False),
              cc_perplexity.PerplexityBucket(models / "cutoff.csv"),
              cc_perplexity.DropKeys("tokenized")]
    for step in chain:
        step.__enter__()
    out = 0
    names = [type(step).__name__ for step in chain]
    for doc in read():
        for step, name in zip(chain, names):
            step_started = time.perf_counter()
            doc = step(doc)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - step_started
            if doc is None:
                break
        else:
            out += 1
    seconds["reading"] = time.perf_counter() - started - sum(seconds.values())
    if dedup:
        hashes.unlink()
    return out, tree_cpu_seconds(), seconds


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live descendants (Spark's JVM and its
    Python workers, which are alive until the session stops), and of the descendants they have
    reaped (phase 1 extracts each input in a forked child)."""
    import psutil

    processes = [psutil.Process(), *psutil.Process().children(recursive=True)]
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def run_ours(files: list[Path], models: Path, dedup: bool) -> tuple[int, float, dict]:
    """`jobs.curate` on these files in local[2], Spark's start-up included; returns documents out, CPU
    seconds, and seconds: Spark's session start, the run, and each stage's own (summed over tasks)."""
    import shutil

    from curation.langid import LanguageIdStage
    from curation.perplexity import PerplexityStage
    from curation.settings import load_settings
    from jobs import curate
    from jobs.spark import spark_session

    run_dir = WORK / f"run-{os.getpid()}"
    settings = load_settings(curate.CurateSettings, None, [
        f"input.paths={json.dumps([str(f) for f in files])}", f"perplexity.models={models}",
        f"line_dedup.enabled={'true' if dedup else 'false'}", "minhash.enabled=false"])
    started = time.perf_counter()
    spark = spark_session("bench-ccnet", master=f"local[{OUR_CORES}]", log_file=WORK / "spark.log",
                          conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    seconds = {"session start": time.perf_counter() - started}
    stages = (LanguageIdStage, PerplexityStage)  # cc_net's model steps (no C4, no wikiref)
    try:
        stats = curate.run(spark, settings, run_dir, stages)
        seconds["run (wall, report included)"] = stats["seconds"]
        seconds.update((name, stage["seconds"]) for name, stage in stats["stages"].items()
                       if stage.get("seconds") and stage.get("in"))  # not a stage that no document reached
        cpu = tree_cpu_seconds()  # now: Spark's Python workers are gone once it has stopped
    finally:
        stop_started = time.perf_counter()
        spark.stop()
        seconds["stop"] = time.perf_counter() - stop_started
        shutil.rmtree(run_dir, ignore_errors=True)
    return stats["documents_out"], cpu, seconds


def measure(engine: str, files: list[Path], models: Path, dedup: bool, profile: bool, code: Path = REPO_ROOT) -> dict:
    """Runs one engine in a fresh process (ours from the checkout at `code`; `no-DEVICE`: ours with that
    speed device off); its wall time and the CPU time of its process tree."""
    cmd = [sys.executable, "-m", "bench.ccnet", "--one", "ccnet" if engine == "ccnet" else "ours",
           "--dedup", str(dedup).lower(),
           "--models", str(models), *(["--profile"] if profile else []), *map(str, files)]
    devices_off = engine.removeprefix("no-") if engine.startswith("no-") else ""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=code, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(code), CCURATE_DEVICES_OFF=devices_off))
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{engine} failed:\n{done.stderr[-3000:]}")
    if profile:
        (WORK / f"profile-{engine}-{'on' if dedup else 'off'}.txt").write_text(done.stderr)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall": wall, "cpu": result["cpu"], "load": load, "out": result["out"],
            "seconds": result.get("seconds", {})}  # an older checkout's bench (--before) prints none


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=60, help="copies of the 697-document WET file")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each engine per mode; the best counts")
    parser.add_argument("--modes", default="off,on", help="line dedup modes to run: off,on")
    parser.add_argument("--models", type=Path, default=Path(LM_DIR))
    parser.add_argument("--profile", action="store_true", help="cProfile each run's driver process "
                        "(runs/bench-ccnet/profile-*.txt)")
    parser.add_argument("--before", type=Path, help="an export of an older commit: its `jobs.curate` runs too, "
                        "as `before` (with this file copied into it), for before/after figures")
    parser.add_argument("--devices", action="store_true", help="instead of cc_net: ours with each speed device of "
                        "jobs.spark off in turn (CCURATE_DEVICES_OFF), for what each is worth")
    parser.add_argument("--one", choices=["ccnet", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--dedup", default="false", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # a measured child
        run = {"ccnet": run_ccnet, "ours": run_ours}[args.one]
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        out, cpu, seconds = run(args.files, args.models, args.dedup == "true")
        if profiler:
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        print(json.dumps({"out": out, "cpu": cpu, "seconds": seconds}))
        return

    files = build_corpus(args.copies, WORK / f"wet-{args.copies}")
    models = prepare_models(args.models)
    docs = 697 * args.copies
    print(f"{docs} WET documents in {len(files)} files; models {models}; {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    if args.devices:
        return compare_devices(files, models, args)
    for mode in args.modes.split(","):
        dedup = mode == "on"
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for engine in ("ccnet", "ours", *(["before"] if args.before else [])):  # alternating: same load
                result = measure(engine, files, models, dedup, args.profile,
                                 args.before if engine == "before" else REPO_ROOT)
                print(f"  line dedup {mode}, {engine}: {result['wall']:.1f} s wall, {result['cpu']:.1f} s CPU, "
                      f"{result['out']} docs out, load {result['load']:.1f}; seconds: "
                      + ", ".join(f"{name} {value:.1f}" for name, value in result["seconds"].items()), flush=True)
                if engine not in best or result["wall"] < best[engine]["wall"]:
                    best[engine] = result
        cc = best["ccnet"]
        cc_core = docs / cc["wall"]
        print(f"line dedup {mode}: cc_net {cc_core:,.0f} docs/s/core (1 core), {docs / cc['cpu']:,.0f} docs per "
              f"CPU-second, {cc['out']} documents out")
        for engine in best.keys() - {"ccnet"}:
            ours = best[engine]
            ours_core = docs / ours["wall"] / OUR_CORES
            print(f"  {engine}: {ours_core:,.0f} docs/s/core ({OUR_CORES} cores, Spark start-up included), ratio to "
                  f"cc_net {ours_core / cc_core:.2f}; {docs / ours['cpu']:,.0f} docs per CPU-second, ratio "
                  f"{cc['cpu'] / ours['cpu']:.2f}; {ours['out']} documents out")
        # Our language ID and perplexity stages (cc_net's fastText and SentencePiece + KenLM calls on the
        # same text), spread perfectly over our cores after our session start: the least our run could take.
        ours = best.get("ours", {}).get("seconds", {})
        models_seconds = ours.get("langid", 0.0) + ours.get("perplexity", 0.0)
        if models_seconds:
            least = models_seconds / OUR_CORES + ours["session start"]
            print(f"  ceiling: our model stages ({models_seconds:.1f} s) over {OUR_CORES} cores after our session "
                  f"start: {least:.1f} s, at most {docs / least / OUR_CORES / cc_core:.2f}x cc_net per core")


def compare_devices(files: list[Path], models: Path, args) -> None:
    """Ours, and ours with each speed device off, alternating, best of `--repeat`: each device's gain."""
    from jobs.spark import DEVICES

    for mode in args.modes.split(","):
        best: dict[str, dict] = {}
        for _ in range(args.repeat):
            for engine in ("ours", *(f"no-{device}" for device in DEVICES)):
                result = measure(engine, files, models, mode == "on", False)
                print(f"  line dedup {mode}, {engine}: {result['wall']:.1f} s wall, {result['cpu']:.1f} s CPU, "
                      f"load {result['load']:.1f}", flush=True)
                if engine not in best or result["wall"] < best[engine]["wall"]:
                    best[engine] = result
        ours = best["ours"]
        for device in DEVICES:
            without = best[f"no-{device}"]
            print(f"line dedup {mode}: {device}: {without['wall']:.1f} s without, {ours['wall']:.1f} s with: "
                  f"{(without['wall'] - ours['wall']) / without['wall']:+.1%} of the wall time; CPU "
                  f"{without['cpu']:.1f} → {ours['cpu']:.1f} s")


if __name__ == "__main__":
    main()
