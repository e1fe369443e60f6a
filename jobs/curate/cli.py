"""`python -m jobs.curate` and `spark-submit jobs/curate.py`: the settings, the checks that fail before
Spark starts (exit 2), the run, its summary, and the exit code (1 when more segments failed than
`run.max_failed_share` allows)."""

from __future__ import annotations

from curation import storage
from curation.redact import install_redaction, redact_text
from curation.settings import RunSettings, exit_with_error, parse_command
from jobs.curate.run import model_stages, resolve_inputs, run
from jobs.curate.settings import CurateSettings
from jobs.spark import claimed_session

USAGE = """The curation job: CommonCrawl WARC/WET → text → line dedup → language ID → C4's rules → KenLM
perplexity → Wikipedia-reference score → MinHash near-duplicate removal → Parquet by language and bucket.

    python -m jobs.curate --output DIR input.snapshot=2020-05 input.segments=2     (local mode)
    python -m jobs.curate --output DIR --input FILE_OR_URL…
    spark-submit jobs/curate.py --output DIR …                                      (any cluster)

DIR is resumable: running the same command again skips what is done. Every setting, its default and
meaning: --print-settings (config/curate.yaml)."""


def main(argv: list[str] | None = None) -> int:
    install_redaction()
    settings = parse_command(CurateSettings, argv, prog="python -m jobs.curate", description=USAGE,
                             flags={"--output": "output", "--input": "input.paths", "--master": "master"})
    try:
        resolve_inputs(settings.input)  # fail fast on a bad snapshot name, an unreachable URL, no input
        stages = model_stages(settings)  # … and on a model path that is not there
    except (ValueError, FileNotFoundError, ConnectionError) as error:
        exit_with_error(redact_text(str(error)))
    output = storage.absolute(settings.output)
    try:
        spark = claimed_session("ccurate-curate", output, "curate", settings.master)
    except (storage.NotARunDirectory, OSError) as error:
        exit_with_error(f"--output {redact_text(str(error))}")
    try:
        stats = run(spark, settings, output, stages)
    finally:
        spark.stop()
    print_summary(stats, output)
    return exit_code(stats, settings.run)


def exit_code(stats: dict, run_settings: RunSettings) -> int:
    """1 when more than `run.max_failed_share` of the segments failed or were skipped, else 0."""
    failed_share = len(stats["failed_segments"]) / max(1, stats["inputs"])
    return 1 if failed_share > run_settings.max_failed_share else 0


def print_summary(stats: dict, output: str) -> None:
    print(f"\ncurated {stats['documents_out']} documents from {stats['segments_done']}/{stats['inputs']} segments "
          f"({stats['segments_resumed']} already done) in {stats['seconds']} s")
    for name, stage in stats.get("stages", {}).items():
        dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(stage.get("dropped", {}).items()))
        print(f"  {name:<10} in {stage.get('in', 0):>8}  out {stage.get('out', 0):>8}  {dropped}")
    print(f"  output:   {stats['output']}\n  stats:    {storage.join(output, 'stats.json')}"
          f"\n  manifest: {storage.join(output, 'manifest.json')}"
          f"\n  report:   {stats['report']}")
    for failure in stats["failed_segments"]:
        print(redact_text(f"  FAILED {failure['source']}: {failure['error']}"))
