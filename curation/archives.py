"""Archives read member by member, as data, never extracted: tar (plain, gzip, bzip2, xz), zip, and
one gzipped file; the kind is told by the bytes, not the name.

A member's name is information only (nothing is written under it: `../../x` or `/etc/passwd` is
just a string); links, devices and folders are passed over; a member over `max_member_bytes` is
counted (`member_too_large`) and skipped unread. A damaged archive raises ArchiveError, which fails
its input alone. An archive inside an archive (arXiv's bulk tars of gzipped paper tars) is read
with `members` again on the member's bytes.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from curation import storage

GZIP, ZIP, BZIP2, XZ = b"\x1f\x8b", b"PK\x03\x04", b"BZh", b"\xfd7zXZ\x00"
TAR_MAGIC_OFFSET = 257  # "ustar" in a tar header (POSIX and GNU)


class ArchiveError(ValueError):
    """An archive that cannot be read (damaged, cut short, or not what its bytes claimed)."""


@dataclass(frozen=True)
class Member:
    name: str  # as stored in the archive: information, never a path anything is written to
    data: bytes


def archive_kind(head: bytes) -> str | None:
    """"tar", "zip", "gzip" (a gzip stream: a .tar.gz or one gzipped file), "bzip2", "xz", or None
    (not an archive) from the first 512 bytes of a file."""
    if head.startswith(ZIP):
        return "zip"
    if head.startswith(GZIP):
        return "gzip"
    if head.startswith(BZIP2):
        return "bzip2"
    if head.startswith(XZ):
        return "xz"
    if head[TAR_MAGIC_OFFSET:TAR_MAGIC_OFFSET + 5] == b"ustar":
        return "tar"
    return None


def members(source: str | bytes, max_member_bytes: int, counts: Counter, name: str = "") -> Iterator[Member]:
    """The regular files of the archive at `source` (a location of `curation.storage`, or an
    archive's bytes), in stored order; a file that is no archive is one member, named `name` or
    its location. `counts` gets `dropped.member_too_large` and `dropped.not_a_file`."""
    opened = storage.open_input(source) if isinstance(source, str) else io.BytesIO(source)
    name = name or (source if isinstance(source, str) else "")
    with opened as stream:
        head = stream.read(512)
        stream.seek(0)
        try:
            yield from _members_of(stream, archive_kind(head), max_member_bytes, counts, name)
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
            raise ArchiveError(f"{type(error).__name__}: {error}") from None


def _members_of(stream: BinaryIO, kind: str | None, cap: int, counts: Counter, name: str) -> Iterator[Member]:
    if kind == "zip":
        yield from _zip_members(stream, cap, counts)
    elif kind in ("tar", "bzip2", "xz"):
        yield from _tar_members(stream, cap, counts)
    elif kind == "gzip":
        inner = gzip.GzipFile(fileobj=stream)
        head = inner.peek(512)[:512]
        if archive_kind(head) == "tar":
            yield from _tar_members(inner, cap, counts)
        else:  # one gzipped file: `x.tex.gz` is `x.tex`
            yield from _single(inner, cap, counts, name.rsplit("/", 1)[-1].removesuffix(".gz"))
    else:
        yield from _single(stream, cap, counts, name.rsplit("/", 1)[-1])


def _single(stream: BinaryIO, cap: int, counts: Counter, name: str) -> Iterator[Member]:
    data = stream.read(cap + 1)
    if len(data) > cap:
        counts["dropped.member_too_large"] += 1
        return
    yield Member(name, data)


def _tar_members(stream: BinaryIO, cap: int, counts: Counter) -> Iterator[Member]:
    # Stream mode ("r|*"): one pass, no seeking, members read in order; decompression by the bytes.
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if info.isdir():
                continue
            if not info.isreg():  # symbolic and hard links, devices, FIFOs: nothing to read
                counts["dropped.not_a_file"] += 1
            elif info.size > cap:
                counts["dropped.member_too_large"] += 1
            else:
                yield Member(info.name, tar.extractfile(info).read())


def _zip_members(stream: BinaryIO, cap: int, counts: Counter) -> Iterator[Member]:
    with zipfile.ZipFile(stream) as archive:  # `curation.storage` inputs seek (ranges on object stores)
        for info in archive.infolist():
            if info.is_dir():
                continue
            if (info.external_attr >> 16) & 0o170000 not in (0, 0o100000):  # a link stored in the zip
                counts["dropped.not_a_file"] += 1
            elif info.file_size > cap:  # the declared size; the read below is capped as well
                counts["dropped.member_too_large"] += 1
            else:
                with archive.open(info) as member:
                    data = member.read(cap + 1)
                if len(data) > cap:
                    counts["dropped.member_too_large"] += 1
                else:
                    yield Member(info.filename, data)
