"""The daemon of a local run's Python workers: Spark's `pyspark.daemon`, importing this machine's
installed pyspark instead of the copy zipped inside it.

Spark puts `SPARK_HOME/python/lib/pyspark.zip` (and py4j's) first on its workers' PYTHONPATH. A zip
of sources has no compiled files, so every Python worker process compiled pyspark again: about 1 s
in the daemon before a first task could start, and 1.3 s in each worker that imports `jobs` (2 cores:
~2 s of every local run, ~3.5 s of CPU). When the zip belongs to a pip-installed pyspark (SPARK_HOME
is the package), the package is the same code with its bytecode cached: the zips go last instead.
`jobs.spark.local_conf` sets this module (sessions started by `python -m jobs.X`, local or on a
standalone master); under spark-submit the cluster's workers keep Spark's own daemon.
"""

import sys
from pathlib import Path


def installed_pyspark_zip(entry: str) -> bool:
    """Whether a sys.path entry is the pyspark or py4j zip of a pip-installed pyspark package."""
    path = Path(entry)
    package = path.parents[2] if len(path.parents) > 2 else None
    return path.suffix == ".zip" and path.parent.name == "lib" and package is not None \
        and package.name == "pyspark" and (package / "__init__.py").is_file()


if __name__ == "__main__":
    zips = [entry for entry in sys.path if installed_pyspark_zip(entry)]
    sys.path[:] = [entry for entry in sys.path if entry not in zips] + zips
    from pyspark.daemon import manager

    manager()
