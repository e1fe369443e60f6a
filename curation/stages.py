"""The curate job's row-wise stages, registered once, in pipeline order.

Each stage class declares what the job needs of it: its `name` (its settings section and its key
in stats.json), its `settings_class`, the columns it `writes` (each in `curation.schema`) and the
`models` it reads (`curation.pipeline.ModelFiles`). From this tuple the job derives its settings
(one section per stage), phase 2's columns, which stages run (a stage whose trainable model is
absent is left out) and the fingerprint that says whether a stored group is still valid (each
stage's settings and its models' files).

Adding a stage touches its module (the Stage with those four declarations, its settings), its line
here, its fields in `curation.schema` and its test.

C4's rules need the language and, when they filter, change the text that perplexity, wikiref and
MinHash then see (the LLaMA paper's order: after language ID).
"""

from __future__ import annotations

from pathlib import Path

from curation.c4 import C4Stage
from curation.langid import LanguageIdStage
from curation.perplexity import PerplexityStage
from curation.pipeline import Stage
from curation.wikiref import WikirefStage

ROW_STAGES: tuple[type[Stage], ...] = (LanguageIdStage, C4Stage, PerplexityStage, WikirefStage)


def model_files(stage: type[Stage], section) -> dict[str, list[Path]]:
    """{setting: files of the model it locates} of a registered stage, for its settings `section`."""
    return {model.setting: model.files(getattr(section, model.setting)) for model in stage.models}
