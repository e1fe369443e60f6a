"""A source job's inputs on the driver: what the locations given hold, their sizes and ids, and how
they are cut into Spark tasks."""

from __future__ import annotations

import glob
import hashlib

from curation import storage
from curation.sources import Source

TASKS_PER_CORE = 4  # an input of 1/(this · cores) of the run's bytes or more is a task of its own


def resolve_inputs(source: Source, patterns: list[str]) -> list[str]:
    """The inputs of the locations given, in order, each once: a local glob's matches (sorted), then
    what each location holds (`Source.inputs`: a folder may hold many). Raises FileNotFoundError for a
    location that matches nothing."""
    inputs: dict[str, None] = {}
    for pattern in patterns:
        matches = [pattern] if storage.is_uri(pattern) else sorted(glob.glob(pattern))
        if not matches or not all(storage.exists(match) for match in matches):
            raise FileNotFoundError(f"input {pattern!r} matches no file")
        for match in matches:
            inputs.update(dict.fromkeys(source.inputs(storage.absolute(match))))
    if not inputs:
        raise FileNotFoundError(f"no input of {source.name} in {' '.join(patterns)}")
    return list(inputs)


def input_bytes(location: str) -> int:
    """An input's size: a file's, or the sum of a folder's files (arXiv's paper folder)."""
    if storage.is_dir(location):
        return sum(storage.size(path) for path in storage.list_files(location, recursive=True))
    return storage.size(location)


def input_id(location: str) -> str:
    """A file name for an input's outputs: readable (its last two path parts) and unique per location."""
    readable = "_".join(location.rstrip("/").split("/")[-2:]).replace(":", "")[-80:]
    return f"{readable}-{hashlib.sha1(location.encode()).hexdigest()[:10]}"


def readable_name(input_id: str) -> str:
    """The readable part of an input id (for the report)."""
    return input_id.rsplit("-", 1)[0]


def plan_tasks(sizes: dict[str, int], cores: int) -> list[list[str]]:
    """The inputs cut into Spark tasks, largest first: an input of at least 1/(TASKS_PER_CORE · cores)
    of the bytes is a task alone, smaller ones share tasks of about that size. Spark starts a stage's
    tasks in order, so the largest inputs start first and the small ones fill the cores at the end."""
    target = sum(sizes.values()) / (TASKS_PER_CORE * max(1, cores))
    tasks, current, current_bytes = [], [], 0
    for location in sorted(sizes, key=lambda name: -sizes[name]):
        current.append(location)
        current_bytes += sizes[location]
        if current_bytes >= target:
            tasks.append(current)
            current, current_bytes = [], 0
    return tasks + ([current] if current else [])
