"""The curate job: CommonCrawl WARC/WET files → curated Parquet by language and bucket, in two phases.

Its files are the run's parts, in the order a run meets them:
    cli.py        `python -m jobs.curate` / `spark-submit jobs/curate.py`: settings, checks, exit codes, summary
    settings.py   CurateSettings: a section per stage (the row-wise ones from curation.stages.ROW_STAGES)
    run.py        one run: `Run` (what the steps share), the models' checks, the inputs, the manifest, stats, report
    layout.py     the run directory: paths, Arrow schemas, markers, what a killed run left
    phase1.py     each input read and extracted (with its line hashes) in a child process of a Spark task
    manifest.py   every input's state, its failure's cause and its runs in a row failed
    units.py      phase 2's tasks: pieces of phase 1's files cut by the size of their text
    phase2.py     per dedup group: its duplicated lines, then line dedup, the row-wise stages and the
                  MinHash signatures, from file to file; a group published with its fingerprint
    selection.py  across groups: the run's own bucket cutoffs, MinHash, RUN/curated/ published

The run directory is resumable: a rerun skips the inputs done, remakes only the groups whose segments
or fingerprint changed, and ends with what a run from scratch would write.
"""

from jobs.curate.layout import ANNOTATED, RunDirectory, segment_id
from jobs.curate.run import model_stages, run
from jobs.curate.settings import CurateSettings

__all__ = ["ANNOTATED", "CurateSettings", "RunDirectory", "model_stages", "run", "segment_id"]
