"""The files of GitHub repositories, read as data: repository archives as GitHub serves them (`.tar.gz`
or `.zip`, one top folder `NAME-REF/`: the repository) and exports of files (Parquet or JSON lines:
BigQuery's `github_repos`, The Stack). No archive is extracted: a member's name is a string, and one
that climbs (`../x`) or is absolute is counted (`unsafe_path`) and skipped. The GitHub source
(`curation.sources.github`) reads its inputs through these.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq

from curation import archives, storage

# A licence file's name: LICENSE, COPYING.txt, LICENSE-MIT, UNLICENSE.
LICENSE_FILE_RE = re.compile(r"(licen[cs]e|copying|unlicense)([.-][\w.-]*)?", re.IGNORECASE)
# Export columns: BigQuery's github_repos, then The Stack's names.
EXPORT_COLUMNS = {"repository": ("repo", "repo_name", "max_stars_repo_name"),
                  "path": ("path", "max_stars_repo_path"), "content": ("content",),
                  "license": ("license", "licenses", "max_stars_repo_licenses")}


@dataclass(frozen=True)
class RepositoryFile:
    repository: str
    path: str
    data: bytes | str
    license: str | list | None  # an export's licence field, as it gives it; None for archives


def is_export(location: str) -> bool:
    return bool(re.search(r"\.(parquet|jsonl|ndjson|json)(\.gz)?$", location))


def repository_files(location: str, max_file_bytes: int, counts: Counter) -> Iterator[RepositoryFile]:
    """The files of one input, archive or export, in stored order."""
    if location.endswith(".parquet"):
        yield from _parquet_files(location, max_file_bytes, counts)
    elif is_export(location):
        yield from _json_lines_files(location, max_file_bytes, counts)
    else:
        yield from _archive_files(location, max_file_bytes, counts)


def member_parts(name: str) -> list[str] | None:
    """The parts of an archive member's name; None for one that climbs (`../x`) or is absolute."""
    parts = name.removeprefix("./").split("/")
    return None if name.startswith("/") or ".." in parts or "" in parts else parts


def is_licence_member(name: str) -> bool:
    """A licence file at the top of an archive's repository (`NAME-REF/LICENSE`)."""
    parts = member_parts(name)
    return parts is not None and len(parts) == 2 and bool(LICENSE_FILE_RE.fullmatch(parts[1]))


def _archive_files(location: str, max_file_bytes: int, counts: Counter) -> Iterator[RepositoryFile]:
    for member in archives.members(location, max_file_bytes, counts):
        parts = member_parts(member.name)
        if parts is None:
            counts["dropped.unsafe_path"] += 1
        elif len(parts) < 2:
            counts["dropped.outside_repository"] += 1  # GitHub's archives hold one top folder
        else:
            yield RepositoryFile(parts[0], "/".join(parts[1:]), member.data, None)


def _export_row(row: dict, max_file_bytes: int, counts: Counter) -> RepositoryFile | None:
    values = {key: next((row[name] for name in names if row.get(name) is not None), None)
              for key, names in EXPORT_COLUMNS.items()}
    if values["repository"] is None or values["path"] is None or values["content"] is None:
        counts["dropped.bad_record"] += 1
    elif len(values["content"]) > max_file_bytes:
        counts["dropped.member_too_large"] += 1
    else:
        return RepositoryFile(values["repository"], values["path"], values["content"], values["license"])
    return None


def _parquet_files(location: str, max_file_bytes: int, counts: Counter) -> Iterator[RepositoryFile]:
    with storage.open_input(location) as stream:
        parquet = pq.ParquetFile(stream)
        wanted = {name for names in EXPORT_COLUMNS.values() for name in names}
        columns = [name for name in parquet.schema_arrow.names if name in wanted]
        for batch in parquet.iter_batches(batch_size=1024, columns=columns):
            for row in batch.to_pylist():
                if (file := _export_row(row, max_file_bytes, counts)) is not None:
                    yield file


def _json_lines_files(location: str, max_file_bytes: int, counts: Counter) -> Iterator[RepositoryFile]:
    with storage.open_input(location) as raw:
        stream = gzip.open(raw) if location.endswith(".gz") else raw
        for line in stream:
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                counts["dropped.bad_record"] += 1
            elif (file := _export_row(row, max_file_bytes, counts)) is not None:
                yield file


def licence_texts(location: str, max_file_bytes: int) -> Iterator[tuple[str, str]]:
    """(repository, text) of each licence file at a repository's top (an archive's other members unread)."""
    if is_export(location):
        files = repository_files(location, max_file_bytes, Counter())  # counted when all its files are read
    else:
        members = archives.member_streams(location, max_file_bytes, Counter(), wanted=is_licence_member)
        files = (RepositoryFile(*member_parts(member.name), member.stream.read(), None) for member in members)
    for file in files:
        if "/" not in file.path and LICENSE_FILE_RE.fullmatch(file.path):
            yield file.repository, file.data if isinstance(file.data, str) else file.data.decode("utf-8", "replace")


def decoded(data: bytes | str) -> str | None:
    """The text of a file, None for a binary one (a NUL byte, or not UTF-8)."""
    if isinstance(data, str):
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text
