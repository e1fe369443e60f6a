"""Wikipedia on Spark: pages-articles dumps (or raw wikitext files, one article each) → one document
per article of LLaMA's 20 languages, as plain text: no link markup, template, comment or table
(curation.sources.wikipedia).

    python -m jobs.sources.wikipedia --input DUMPS_OR_WIKITEXT_FILES… --output DIR [wikipedia.languages=[…]]
    spark-submit --py-files dist/ccurate.zip jobs/sources/wikipedia.py --input … --output DIR

`--print-settings` lists every setting.
"""

from curation.sources.wikipedia import SOURCE
from jobs.sources.engine import main

if __name__ == "__main__":
    raise SystemExit(main(SOURCE, description=__doc__))
