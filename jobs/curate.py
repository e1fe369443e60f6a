"""`spark-submit jobs/curate.py …`: the curate job's entry for spark-submit, which runs a file. The job
is the package jobs/curate/ (`python -m jobs.curate` runs the same `main`); spark-submit finds it in
the code shipped with --py-files (`make package`)."""

import sys

from jobs.curate.cli import main

if __name__ == "__main__":
    sys.exit(main())
