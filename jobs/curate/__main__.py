"""`python -m jobs.curate`: see jobs/curate/cli.py."""

import sys

from jobs.curate.cli import main

sys.exit(main())
