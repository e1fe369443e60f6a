"""Every setting of the curate job: the run's own, then one section per stage in pipeline order (the
row-wise stages' sections come from the registry, `curation.stages.ROW_STAGES`: a new stage brings its
own). Defaults and meanings live in the stage modules; `python -m jobs.curate --print-settings` lists
them, and config/curate.yaml is that listing."""

from __future__ import annotations

import dataclasses

from curation.dedup_lines import LineDedupSettings
from curation.extract import ExtractSettings
from curation.minhash import MinHashSettings
from curation.settings import InputSettings, PartitionSettings, RunSettings, section, setting
from curation.stages import ROW_STAGES
from curation.warc import ReadSettings
from jobs.spark import master_setting

CurateSettings = dataclasses.make_dataclass("CurateSettings", [
    ("output", str | None, setting(None, "the run directory, a local path or URI (re-using one resumes it)",
                                   required=True)),
    ("master", str | None, master_setting()),
    ("input", InputSettings, section(InputSettings)),
    ("read", ReadSettings, section(ReadSettings)),
    ("extract", ExtractSettings, section(ExtractSettings)),
    ("line_dedup", LineDedupSettings, section(LineDedupSettings)),
    *((stage.name, stage.settings_class, section(stage.settings_class)) for stage in ROW_STAGES),
    ("minhash", MinHashSettings, section(MinHashSettings)),
    ("partitions", PartitionSettings, section(PartitionSettings)),
    ("run", RunSettings, section(RunSettings)),
], frozen=True)
CurateSettings.__doc__ = "Every setting of the curate job, one section per stage, in pipeline order."
CurateSettings.__module__ = __name__  # pickled by reference, as a class written here would be
