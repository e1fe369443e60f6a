r"""arXiv on Spark: bulk source tars (`arXiv_src_YYMM_NNN.tar`), one paper's archive or a paper's folder → one
document per paper, its LaTeX kept and cleaned as LLaMA did (comments removed, user macros expanded,
from the first \section on, no bibliography), exact duplicates across inputs removed
(curation.sources.arxiv).

    python -m jobs.sources.arxiv --input TARS_OR_FOLDERS… --output DIR [arxiv.keep_appendix=false]
    spark-submit --py-files dist/ccurate.zip jobs/sources/arxiv.py --input … --output DIR

A folder with a .tex file at its top is one paper; any other folder holds inputs (bulk tars, paper
folders). `--print-settings` lists every setting.
"""

from curation.sources.arxiv import SOURCE
from jobs.sources.engine import main

if __name__ == "__main__":
    raise SystemExit(main(SOURCE, description=__doc__))
