"""Phase 2's tasks ("units"): each dedup group's documents, in order, cut into pieces of phase 1's
files by the size of their text, from the files' footers (no data read)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyarrow.parquet as pq

from curation import storage
from jobs.curate.layout import RunDirectory

# A piece of phase 1's output: (file, row group, first row, end row); a unit: one task's pieces, of one group.
Piece = tuple[str, int, int, int]
Unit = tuple[int, list[Piece]]
# {file: [(rows, bytes of `raw_content`) of each row group]}
RowGroupSizes = dict[str, list[tuple[int, int]]]


def dedup_groups(inputs: list[str], done: list[str], group_size: int) -> dict[int, list[str]]:
    """{group: its done inputs, in order}: an input's group is its position among the run's inputs
    divided by `group_size` (0: one group), so that a group keeps its number and its other members
    when a segment fails, is retried or is added after it."""
    position = {source: index for index, source in enumerate(inputs)}
    groups: dict[int, list[str]] = {}
    for source in done:
        groups.setdefault(position[source] // group_size if group_size else 0, []).append(source)
    return groups


def row_group_sizes(files: list[str]) -> RowGroupSizes:
    """The rows and text bytes of each row group of phase 1's Parquet files, from their footers."""
    sizes = {}
    for path in files:
        with storage.open_input(path) as f:
            meta = pq.read_metadata(f)
        text = meta.schema.to_arrow_schema().get_field_index("raw_content")
        sizes[path] = [(meta.row_group(i).num_rows, meta.row_group(i).column(text).total_uncompressed_size)
                       for i in range(meta.num_row_groups)]
    return sizes


def text_bytes(run: RunDirectory, groups: dict[int, list[str]], sizes: RowGroupSizes) -> int:
    """The text of the groups' segments, from `row_group_sizes`."""
    return sum(text for sources in groups.values() for source in sources for _, text in sizes[run.segment_file(source)])


def plan_units(run: RunDirectory, groups: dict[int, list[str]], sizes: RowGroupSizes,
               unit_bytes: Callable[[float], float]) -> list[Unit]:
    """Each group's documents, in order, cut into units of about `unit_bytes(text not yet in a unit)`
    of text (a row group split by rows where needed, its text counted evenly over its rows)."""
    units: list[Unit] = []
    remaining = float(text_bytes(run, groups, sizes))
    target = unit_bytes(remaining)

    def close(group: int, pieces: list[Piece], size: float) -> None:
        nonlocal remaining, target
        units.append((group, pieces))
        remaining -= size
        target = unit_bytes(remaining)

    for group, sources in groups.items():
        pieces: list[Piece] = []
        size = 0.0
        for source in sources:
            path = run.segment_file(source)
            for row_group, (rows, text) in enumerate(sizes[path]):
                per_row, first = text / max(1, rows), 0
                while first < rows:
                    take = rows - first
                    if size + take * per_row > target:
                        take = max(1, min(take, math.ceil((target - size) / max(per_row, 1e-9))))
                    pieces.append((path, row_group, first, first + take))
                    size, first = size + take * per_row, first + take
                    if size >= target:
                        close(group, pieces, size)
                        pieces, size = [], 0.0
        if pieces:
            close(group, pieces, size)
    return units
