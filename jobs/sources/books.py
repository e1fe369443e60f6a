"""Books on Spark: Project Gutenberg plain texts (.txt, .txt.gz, .zip of them) → one document per book, the
PG header and licence footer removed, book-level near-duplicates (more than 90 % of one book's word
n-grams found in another) removed across all inputs, each dropped book listed in DIR/stats.json with
the book kept in its place (curation.sources.books).

    python -m jobs.sources.books --input BOOKS… --output DIR [books.overlap_threshold=0.9]
    spark-submit --py-files dist/ccurate.zip jobs/sources/books.py --input … --output DIR

`--print-settings` lists every setting.
"""

from curation.sources.books import SOURCE
from jobs.sources.engine import main

if __name__ == "__main__":
    raise SystemExit(main(SOURCE, description=__doc__))
