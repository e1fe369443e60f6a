"""Archives read member by member, as data, never extracted: tar (plain, gzip, bzip2, xz), zip, 7z and
one gzipped file; the kind is told by the bytes, not the name.

A member's name is information only (nothing is written under it: `../../x` or `/etc/passwd` is
just a string); links, devices and folders are passed over; a member over `max_member_bytes` is
counted (`member_too_large`) and skipped unread. A damaged archive raises ArchiveError, which fails
its input alone. An archive inside an archive (arXiv's bulk tars of gzipped paper tars) is read
with `members` again on the member's bytes.

`members` gives each member's bytes whole; `member_streams` gives a stream of each, for members of
many GB (a Stack Exchange site's Posts.xml): read in order, a chunk at a time. A 7z archive is
decompressed by py7zr in a thread that hands its chunks over through a bounded queue (py7zr writes,
it cannot be read from); py7zr itself refuses to unpack a member whose name climbs out of a folder
(`../../x`), so such a member is counted (`unsafe_member_name`) and skipped.
"""

from __future__ import annotations

import gzip
import io
import lzma
import queue
import sys
import tarfile
import threading
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import py7zr
from py7zr.exceptions import ArchiveError as SevenZipError
from py7zr.helpers import get_sanitized_output_path
from py7zr.io import Py7zIO, WriterFactory

from curation import storage

GZIP, ZIP, BZIP2, XZ, SEVEN_ZIP = b"\x1f\x8b", b"PK\x03\x04", b"BZh", b"\xfd7zXZ\x00", b"7z\xbc\xaf\x27\x1c"
TAR_MAGIC_OFFSET = 257  # "ustar" in a tar header (POSIX and GNU)
# What the libraries raise on a damaged archive; ArchiveError to the caller.
DAMAGED = (tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, SevenZipError,
           py7zr.exceptions.PasswordRequired)
PIPE_CHUNKS = 8  # chunks of a 7z member (py7zr's block, ~1 MiB each) waiting between its thread and the reader


class ArchiveError(ValueError):
    """An archive that cannot be read (damaged, cut short, or not what its bytes claimed)."""


@dataclass(frozen=True)
class Member:
    name: str  # as stored in the archive: information, never a path anything is written to
    data: bytes


@dataclass(frozen=True)
class MemberStream:
    name: str  # as stored in the archive: information only
    stream: BinaryIO  # `read(n)` gives its bytes in order; valid until the next member is asked for


def archive_kind(head: bytes) -> str | None:
    """"tar", "zip", "7z", "gzip" (a gzip stream: a .tar.gz or one gzipped file), "bzip2", "xz", or None
    (not an archive) from the first 512 bytes of a file."""
    if head.startswith(ZIP):
        return "zip"
    if head.startswith(SEVEN_ZIP):
        return "7z"
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
    for member in member_streams(source, max_member_bytes, counts, name):
        data = member.stream.read(max_member_bytes + 1)  # a gzipped file declares no size: read to the cap
        if len(data) > max_member_bytes:
            counts["dropped.member_too_large"] += 1
        else:
            yield Member(member.name, data)


def decode_text(data: bytes) -> str:
    """UTF-8 (a byte-order mark dropped), else Latin-1, which decodes any bytes: old files are 8-bit."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def member_streams(source: str | bytes, max_member_bytes: int, counts: Counter, name: str = "",
                   wanted: Callable[[str], bool] = lambda name: True) -> Iterator[MemberStream]:
    """As `members`, each member as a stream, and only those whose name is `wanted` (the others
    are passed over unread and uncounted). A member that declares a size over `max_member_bytes`
    is counted and skipped; one that declares none (a gzipped file) is the reader's to bound."""
    opened = storage.open_input(source) if isinstance(source, str) else io.BytesIO(source)
    name = name or (source if isinstance(source, str) else "")
    with opened as stream:
        head = stream.read(512)
        stream.seek(0)
        try:
            yield from _members_of(stream, archive_kind(head), max_member_bytes, counts, name, wanted)
        except DAMAGED as error:
            raise ArchiveError(f"{type(error).__name__}: {error}") from None


def _members_of(stream: BinaryIO, kind: str | None, cap: int, counts: Counter, name: str,
                wanted: Callable[[str], bool]) -> Iterator[MemberStream]:
    if kind == "zip":
        yield from _zip_members(stream, cap, counts, wanted)
    elif kind == "7z":
        yield from _seven_zip_members(stream, cap, counts, wanted)
    elif kind in ("tar", "bzip2", "xz"):
        yield from _tar_members(stream, cap, counts, wanted)
    elif kind == "gzip":
        inner = gzip.GzipFile(fileobj=stream)
        head = inner.peek(512)[:512]
        if archive_kind(head) == "tar":
            yield from _tar_members(inner, cap, counts, wanted)
        else:  # one gzipped file: `x.tex.gz` is `x.tex`
            yield from _single(inner, None, cap, counts, name.rsplit("/", 1)[-1].removesuffix(".gz"), wanted)
    else:
        size = stream.size() if hasattr(stream, "size") else None
        yield from _single(stream, size, cap, counts, name.rsplit("/", 1)[-1], wanted)


def _single(stream: BinaryIO, size: int | None, cap: int, counts: Counter, name: str,
            wanted: Callable[[str], bool]) -> Iterator[MemberStream]:
    if not wanted(name):
        return
    if size is not None and size > cap:
        counts["dropped.member_too_large"] += 1
        return
    yield MemberStream(name, _Guarded(stream))


def _tar_members(stream: BinaryIO, cap: int, counts: Counter, wanted) -> Iterator[MemberStream]:
    # Stream mode ("r|*"): one pass, no seeking, members read in order; decompression by the bytes.
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if info.isdir() or not wanted(info.name):
                continue
            if not info.isreg():  # symbolic and hard links, devices, FIFOs: nothing to read
                counts["dropped.not_a_file"] += 1
            elif info.size > cap:
                counts["dropped.member_too_large"] += 1
            else:
                yield MemberStream(info.name, _Guarded(tar.extractfile(info)))


def _zip_members(stream: BinaryIO, cap: int, counts: Counter, wanted) -> Iterator[MemberStream]:
    with zipfile.ZipFile(stream) as archive:  # `curation.storage` inputs seek (ranges on object stores)
        for info in archive.infolist():
            if info.is_dir() or not wanted(info.filename):
                continue
            if (info.external_attr >> 16) & 0o170000 not in (0, 0o100000):  # a link stored in the zip
                counts["dropped.not_a_file"] += 1
            elif info.file_size > cap:  # the declared size; `members` caps its read as well
                counts["dropped.member_too_large"] += 1
            else:
                with archive.open(info) as member:
                    yield MemberStream(info.filename, _Guarded(member))


class _Guarded:
    """A member's stream whose damage (a corrupt deflate block met mid-member) is an ArchiveError."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except DAMAGED as error:
            raise ArchiveError(f"{type(error).__name__}: {error}") from None


# ---- 7z: py7zr writes a member's chunks in a thread, the reader takes them from a bounded queue ----

def _seven_zip_members(stream: BinaryIO, cap: int, counts: Counter, wanted) -> Iterator[MemberStream]:
    with py7zr.SevenZipFile(stream) as archive:  # reads the header: names, sizes, kinds
        names = []
        for entry in archive.files:
            if entry.is_directory or not wanted(entry.filename):
                continue
            if entry.is_symlink or entry.is_junction or entry.is_socket:
                counts["dropped.not_a_file"] += 1
            elif entry.uncompressed > cap:
                counts["dropped.member_too_large"] += 1
            elif not _unpackable_name(entry.filename):
                counts["dropped.unsafe_member_name"] += 1
            else:
                names.append(entry.filename)
        if names:
            yield from _piped(archive, names)


def _unpackable_name(name: str) -> bool:
    """Whether py7zr unpacks a member of that name (it refuses the whole archive on a name that climbs
    out of its folder, even for a writer of ours that writes no file)."""
    try:
        get_sanitized_output_path(name, None)
        return True
    except (SevenZipError, ValueError):
        return False


_END, _DONE = object(), object()


class _Cancelled(Exception):
    """The reader stopped: py7zr's thread ends."""


class _Pipe(WriterFactory):
    """Between py7zr's thread (it creates a writer per member and writes its chunks) and the reader."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue(maxsize=PIPE_CHUNKS)
        self.cancelled = threading.Event()

    def put(self, item) -> None:
        while not self.cancelled.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Cancelled

    def create(self, filename: str) -> Py7zIO:
        self.put(("member", filename))
        return _PipeWriter(self)


class _PipeWriter(Py7zIO):
    def __init__(self, pipe: _Pipe):
        self.pipe = pipe

    def write(self, s: bytes | bytearray) -> int:
        self.pipe.put(bytes(s))
        return len(s)

    def close(self) -> None:
        self.pipe.put(_END)

    def seekable(self) -> bool:  # py7zr rewinds a seekable writer when the member ends
        return False

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def flush(self) -> None:
        pass

    def size(self) -> int:
        return 0


class _PipeReader:
    """One member's bytes, taken from the pipe chunk by chunk."""

    def __init__(self, pipe: _Pipe):
        self._pipe, self._chunk, self._offset, self._ended = pipe, b"", 0, False

    def read(self, size: int = -1) -> bytes:
        size = sys.maxsize if size is None or size < 0 else size
        parts = []
        while size > 0:
            if self._offset == len(self._chunk):
                chunk = None if self._ended else _take(self._pipe)
                if chunk is None or chunk is _END:
                    self._ended = True
                    break
                self._chunk, self._offset = chunk, 0
            part = self._chunk[self._offset:self._offset + size]
            self._offset += len(part)
            size -= len(part)
            parts.append(part)
        return b"".join(parts)

    def drain(self) -> None:
        """Passes over what the reader left of the member."""
        while self.read(1 << 20):
            pass


def _take(pipe: _Pipe):
    item = pipe.queue.get()
    if isinstance(item, tuple) and item[0] == "error":
        error = item[1]
        raise ArchiveError(f"{type(error).__name__}: {error}")
    return item


def _piped(archive: py7zr.SevenZipFile, names: list[str]) -> Iterator[MemberStream]:
    """The members `names` of `archive`, unpacked by py7zr in a thread, each read from the pipe."""
    pipe = _Pipe()
    original = {get_sanitized_output_path(name, None).as_posix(): name for name in names}  # py7zr's → stored

    def unpack() -> None:
        try:
            archive.extract(targets=names, factory=pipe)
            pipe.put(_DONE)
        except _Cancelled:
            pass
        except BaseException as error:  # handed to the reader, which raises it as an ArchiveError
            try:
                pipe.put(("error", error))
            except _Cancelled:
                pass

    thread = threading.Thread(target=unpack, name="7z-unpack", daemon=True)
    thread.start()
    try:
        while (item := _take(pipe)) is not _DONE:
            name = original.get(item[1], item[1])
            reader = _PipeReader(pipe)
            yield MemberStream(name, reader)
            reader.drain()
    finally:
        pipe.cancelled.set()
        thread.join()
