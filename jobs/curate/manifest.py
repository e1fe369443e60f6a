"""RUN/manifest.json: every input with its state (done, failed, skipped), the cause of a failure, its
counts of bad input, and the runs in a row it failed in (a segment that fails every time is reported
as such, and `run.skip_after_failures` stops retrying it)."""

from __future__ import annotations

from curation.extract import ExtractStage
from curation.warc import ArchiveReader
from jobs.curate.layout import RunDirectory, segment_id

BAD_INPUT = {*ArchiveReader.bad_input_reasons, *ExtractStage.bad_input_reasons}


def previous_failed_runs(run: RunDirectory) -> dict[str, int]:
    """{source: runs in a row it failed in}, from the manifest the previous run left."""
    manifest = run.read_json("manifest.json") or {"segments": []}
    return {seg["source"]: seg.get("failed_runs", 0) for seg in manifest["segments"]}


def skipped_inputs(inputs: list[str], done: set[str], failed_runs: dict[str, int], skip_after: int) -> set[str]:
    """The inputs not done that failed in `skip_after` runs in a row (0: none is skipped)."""
    return {source for source in inputs if skip_after and failed_runs.get(source, 0) >= skip_after
            and source not in done}


def bad_input(stages: dict) -> dict:
    """A segment's counts of bad input (damaged records, oversized or non-text pages), by reason."""
    return {reason: n for stage in stages.values() for reason, n in stage["dropped"].items() if reason in BAD_INPUT}


def segment_entry(source: str, stages: dict | None, skipped: bool, error: str | None, failed_before: int) -> dict:
    """A segment's line in the manifest; `stages`: its phase-1 counts when it is done."""
    entry = {"source": source, "id": segment_id(source)}
    if stages is not None:
        return {**entry, "state": "done", "error": None, "failed_runs": 0, "bad_input": bad_input(stages)}
    if skipped:
        error = f"skipped: failed in {failed_before} runs in a row (run.skip_after_failures)"
    return {**entry, "state": "skipped" if skipped else "failed", "error": error,
            "failed_runs": failed_before + (not skipped), "bad_input": {}}
