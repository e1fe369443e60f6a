"""GitHub on Spark: repository archives (or exports of files) → one document per source file of the
MIT, Apache and BSD repositories, licence headers cut, low-quality files dropped, each text once across
the inputs (curation.sources.github).

    python -m jobs.sources.github --input ARCHIVES_OR_EXPORTS… --output DIR [github.licenses=[…]]
    spark-submit --py-files dist/ccurate.zip jobs/sources/github.py --input … --output DIR

`--print-settings` lists every setting.
"""

from curation.sources.github import SOURCE
from jobs.sources.engine import main

if __name__ == "__main__":
    raise SystemExit(main(SOURCE, description=__doc__))
