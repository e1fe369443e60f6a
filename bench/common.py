"""Shared inputs for the benchmarks: real documents from ../shared/data, repeated for volume."""

import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()


def timed(fn, *args, repeat: int = 3, clock=time.perf_counter) -> float:
    """Best time of `repeat` runs by `clock`: wall time by default, `time.process_time` for CPU time
    of single-threaded work (the machine is shared; the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        started = clock()
        fn(*args)
        best = min(best, clock() - started)
    return best


def report(name: str, count: int, unit: str, ours: float, raw: float | None = None, raw_name: str = "") -> None:
    line = f"{name}: {count / ours:,.0f} {unit}/s ({count} {unit} in {ours:.3f} s)"
    if raw is not None:
        line += f"; {raw_name}: {count / raw:,.0f} {unit}/s; ratio ours/raw = {raw / ours:.2f}"
    print(line)
