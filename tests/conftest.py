import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
# Hermetic: the models a test reads are those it made. Every default model location (and `make`'s)
# is under CCURATE_MODELS (curation.model_paths), set before any project module is imported and
# inherited by every command a test starts; it stays empty unless a test writes there.
os.environ["CCURATE_MODELS"] = tempfile.mkdtemp(prefix="ccurate-test-models-")
atexit.register(shutil.rmtree, os.environ["CCURATE_MODELS"], ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"real test data expected at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One local SparkSession per test process (each start costs ~10 s): `make test` runs two, each
    taking whole test files (pytest-xdist's --dist loadfile)."""
    from jobs.spark import spark_session

    log_file = tmp_path_factory.mktemp("spark-log") / "spark.log"
    session = spark_session("ccurate-tests", master="local[2]", log_file=log_file,
                            conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                                  "spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a module of tiny models: on a shared CPU, OpenMP threads that wait on each
    other slow them by 10×. Modules ask for it with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
