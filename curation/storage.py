"""Files on any store pyarrow reaches, by URI: local paths, `file://`, `s3://`, and `gs://` / `hdfs://`
where pyarrow was built with (and the machine has) those libraries. Every job and reader of run
outputs goes through these functions; none needs Spark, so Python tasks on executors use them too.

Credentials and endpoints come from each store's usual environment, read by pyarrow itself: for S3
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`/`AWS_REGION`,
`AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`; MinIO, moto, Ceph…) and ~/.aws; for GCS
`GOOGLE_APPLICATION_CREDENTIALS`; for HDFS `HADOOP_HOME`, `CLASSPATH` and the cluster's core-site.xml.

Publishing: a reader sees a file whole or not at all. Where the store renames atomically (local,
HDFS) a file is written under a temporary name beside it (`NAME.tmp-<32 hex>`) and renamed; on an
object store a single object appears only once its upload completes, so the file is spooled to local
disk and uploaded under its final key (a killed writer leaves nothing). A set of files is published by
a marker written last (`_PUBLISHED.json`, the files and their rows): readers trust only listed files.
A run directory is claimed by a marker written when it is created (`_ccurate_run.json`): a job
refuses a non-empty directory without one, and deletes only names it made there.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pyarrow.fs as pafs

if TYPE_CHECKING:  # imported where used: it imports pandas (0.5 s of CPU in every Spark Python worker)
    import pyarrow.dataset as ds

LOCAL = pafs.LocalFileSystem()
TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{32}$")  # the names `atomic_output` writes before publishing
PUBLISHED = "_PUBLISHED.json"
RUN_MARKER = "_ccurate_run.json"


class NotARunDirectory(ValueError):
    """A non-empty directory that no job of this project created: it is never written into."""


def is_uri(location: str) -> bool:
    return "://" in str(location)


@functools.cache
def _store(scheme: str, netloc: str) -> pafs.FileSystem:
    """One filesystem object per store (an S3 client resolves its region once, not per call)."""
    return pafs.FileSystem.from_uri(f"{scheme}://{netloc}/")[0]


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path within it) for a local path or a URI."""
    location = str(location)
    if not is_uri(location):
        return LOCAL, os.path.abspath(location)
    scheme, rest = location.split("://", 1)
    if scheme == "file":
        return LOCAL, "/" + rest.lstrip("/")
    netloc, _, path = rest.partition("/")
    store = _store(scheme, netloc)
    # Object stores address a key as bucket/key; the others (HDFS) by an absolute path.
    return store, (f"{netloc}/{path}" if store.type_name in ("s3", "gcs") else "/" + path).rstrip("/")


def absolute(location: str | os.PathLike) -> str:
    """A location every process of a job reads the same way: local paths made absolute."""
    return str(location) if is_uri(location) else os.path.abspath(location)


def join(location: str | os.PathLike, *names: str) -> str:
    location = str(location)
    return os.path.join(location, *names) if not is_uri(location) else "/".join([location.rstrip("/"), *names])


def local_path(location: str | os.PathLike) -> str | None:
    """The path on this machine's disk of a local path or `file://` URI; None on any other store."""
    store, path = resolve(location)
    return path if store is LOCAL else None


def exists(location: str | os.PathLike) -> bool:
    store, path = resolve(location)
    return store.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(location: str | os.PathLike) -> bool:
    store, path = resolve(location)
    return store.get_file_info(path).type == pafs.FileType.Directory


def size(location: str | os.PathLike) -> int:
    store, path = resolve(location)
    info = store.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{location}: no such file")
    return info.size


def list_files(directory: str | os.PathLike, pattern: str = "*", recursive: bool = False) -> list[str]:
    """The files in `directory` (and below, if `recursive`) whose path relative to it matches the
    glob `pattern`, sorted, as locations in the form `directory` was given; [] when it does not exist."""
    store, root = resolve(directory)
    infos = store.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=recursive))
    relative = [info.path[len(root):].lstrip("/") for info in infos if info.type == pafs.FileType.File]
    return [join(directory, name) for name in sorted(relative) if fnmatch.fnmatchcase(name, pattern)]


def list_directories(directory: str | os.PathLike) -> list[str]:
    """The directories right inside `directory`, sorted; [] when it does not exist."""
    store, root = resolve(directory)
    infos = store.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return [join(directory, info.base_name) for info in sorted(infos, key=lambda i: i.base_name)
            if info.type == pafs.FileType.Directory]


def read_bytes(location: str | os.PathLike) -> bytes:
    store, path = resolve(location)
    with store.open_input_stream(path) as f:
        return f.read()


def read_text(location: str | os.PathLike) -> str:
    return read_bytes(location).decode("utf-8")


def read_range(location: str | os.PathLike, offset: int, length: int) -> bytes:
    """`length` bytes from `offset` (fewer at the end of the file): one open, read and close."""
    store, path = resolve(location)
    with store.open_input_file(path) as f:
        return f.read_at(length, offset)


def open_input(location: str | os.PathLike):
    """A seekable input file (e.g. for `pyarrow.parquet.ParquetFile`), to close after use."""
    store, path = resolve(location)
    return store.open_input_file(path)


@contextmanager
def atomic_output(location: str | os.PathLike) -> Iterator:
    """A binary output stream that becomes the file `location` only when the block completes; an
    error in the block (or a killed process) publishes nothing."""
    store, path = resolve(location)
    if store.type_name in ("local", "hdfs"):
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        store.create_dir(os.path.dirname(path), recursive=True)
        try:
            with store.open_output_stream(temporary) as out:
                yield out
            store.move(temporary, path)
        finally:
            if store.get_file_info(temporary).type != pafs.FileType.NotFound:
                store.delete_file(temporary)
        return
    with tempfile.NamedTemporaryFile(prefix="ccurate-upload-") as spool:
        with LOCAL.open_output_stream(spool.name) as out:
            yield out
        pafs.copy_files(spool.name, path, source_filesystem=LOCAL, destination_filesystem=store)


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    with atomic_output(location) as out:
        out.write(data)


def write_text(location: str | os.PathLike, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def upload(local_file: str | os.PathLike, location: str | os.PathLike) -> None:
    """Publishes a local file at `location` (renamed when it is on the same local disk, else copied)."""
    store, path = resolve(location)
    if store is LOCAL:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(local_file, path)
        return
    with atomic_output(location) as out, open(local_file, "rb") as source:
        while chunk := source.read(16 << 20):
            out.write(chunk)


def delete(location: str | os.PathLike) -> None:
    """Removes a file or a directory with everything in it; nothing when it does not exist."""
    store, path = resolve(location)
    kind = store.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        store.delete_dir(path)
    elif kind != pafs.FileType.NotFound:
        store.delete_file(path)


def remove_temporaries(directory: str | os.PathLike, recursive: bool = False) -> list[str]:
    """Deletes the unpublished files `atomic_output` left in `directory` when its writer was killed."""
    leftovers = [f for f in list_files(directory, recursive=recursive) if TEMPORARY.search(f)]
    for leftover in leftovers:
        delete(leftover)
    return leftovers


def parquet_files(location: str | os.PathLike) -> list[str]:
    """The Parquet files of `location`: itself when it is a file; in a directory, the published ones
    when a marker lists them, else every `*.parquet` below it."""
    if not is_dir(location):
        return [str(location)]
    published = published_files(location)
    return sorted(published) if published is not None else list_files(location, "*.parquet", recursive=True)


def parquet_dataset(location: str | os.PathLike, files: list[str] | None = None,
                    partitioning: ds.Partitioning | str = "hive") -> ds.Dataset:
    """A pyarrow dataset of `files` (default: `parquet_files(location)`), their `col=value/` directories
    below `location` read as columns."""
    import pyarrow.dataset as ds

    store, root = resolve(location)
    files = parquet_files(location) if files is None else files
    return ds.dataset([resolve(f)[1] for f in files], filesystem=store, format="parquet", partitioning=partitioning,
                      partition_base_dir=root)


# ---- a set of files published by a marker ---------------------------------------------------------

def relative_names(directory: str | os.PathLike, files: dict[str, int]) -> dict[str, int]:
    """{name relative to `directory`: rows} of `files` ({location under `directory`: rows}), sorted:
    how a marker lists them."""
    prefix = join(directory, "")
    return {location[len(prefix):]: rows for location, rows in sorted(files.items())}


def locations(directory: str | os.PathLike, names: dict[str, int]) -> dict[str, int]:
    """{location: rows} of a marker's `names` relative to `directory` (`relative_names` undone)."""
    return {join(directory, name): rows for name, rows in names.items()}


def publish_files(directory: str | os.PathLike, files: dict[str, int], about: dict | None = None) -> dict:
    """Publishes `files` ({location under `directory`: rows}) as `directory`'s content, by a marker
    written last (holding `about` too: what the files were made from); then deletes every other file
    there (an earlier run's, a failed task's). Returns the marker (as `published_marker` reads it)."""
    relative = relative_names(directory, files)
    marker = {"files": relative, "rows": sum(relative.values()), **({"about": about} if about is not None else {})}
    write_text(join(directory, PUBLISHED), json.dumps(marker, indent=1))
    remove_unpublished(directory)
    return marker


def published_marker(directory: str | os.PathLike) -> dict | None:
    """The marker `publish_files` last wrote in `directory` ({"files", "rows", "about"?}); None when none."""
    marker = join(directory, PUBLISHED)
    return json.loads(read_text(marker)) if exists(marker) else None


def published_files(directory: str | os.PathLike) -> dict[str, int] | None:
    """{location: rows} of the files last published in `directory`; None when none were."""
    marker = published_marker(directory)
    if marker is None:
        return None
    return locations(directory, marker["files"])


def remove_unpublished(directory: str | os.PathLike, keep: set[str] = frozenset()) -> None:
    """Deletes the files in `directory` (and below) that its marker does not list, except `keep`'s."""
    published = set(published_files(directory) or ()) | keep
    for location in list_files(directory, recursive=True):
        if location not in published and not location.endswith(PUBLISHED):
            delete(location)


# ---- run directories -------------------------------------------------------------------------------

def claim_run_directory(directory: str | os.PathLike, job: str) -> None:
    """Makes `directory` a run directory of `job`: a new or empty one gets the marker; one that has
    it is a run to resume; any other is refused (NotARunDirectory), nothing in it touched."""
    marker = join(directory, RUN_MARKER)
    if exists(marker):
        return
    store, path = resolve(directory)
    info = store.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise NotARunDirectory(f"{directory} is a file, not a run directory")
    if info.type == pafs.FileType.Directory and store.get_file_info(pafs.FileSelector(path)):
        raise NotARunDirectory(f"{directory} is not empty and is not a run directory (no {RUN_MARKER}): "
                               f"refusing to write into it; choose a new or empty directory")
    write_text(marker, json.dumps({"tool": "ccurate", "job": job, "created": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
