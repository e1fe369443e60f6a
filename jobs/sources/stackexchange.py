"""Stack Exchange on Spark: a dump's site archives (or Posts.xml files) → one document per question,
its answers by score, highest first (curation.sources.stackexchange).

    python -m jobs.sources.stackexchange --input DUMP_FOLDER_OR_FILES… --output DIR [stackexchange.sites=[…]]
    spark-submit --py-files dist/ccurate.zip jobs/sources/stackexchange.py --input … --output DIR

By default the 28 largest sites given (LLaMA's); `--print-settings` lists every setting.
"""

from curation.sources.stackexchange import SOURCE
from jobs.sources.engine import main

if __name__ == "__main__":
    raise SystemExit(main(SOURCE, description=__doc__))
