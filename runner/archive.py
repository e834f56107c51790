"""Fill in the data offsets that a pipe-written custom-format archive lacks, so pg_restore -j can seek.

pg_dump writes each TOC entry's data offset only when its output is a seekable file; db-backup
streams pg_dump into a compressor, so every entry says "offset not set". pg_restore -j then makes
each worker scan the archive for its table, and it cannot order the work by table size.
After a restore's download has decompressed the archive to a file, `fill_offsets` walks the data
blocks once and writes their positions into the TOC, in place: the same bytes pg_dump would have
written with -f. The layout is that of PostgreSQL's pg_backup_archiver.c and pg_backup_custom.c
(archive versions 1.12 to 1.16, PostgreSQL 9.0 to 17). Anything unexpected leaves the file as it
was: pg_restore reads it either way, only slower.

`OffsetScan` does the walk while the download is still writing the file (following it as it grows),
so the pass costs next to nothing after the last byte lands.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from dataclasses import dataclass
from io import BufferedIOBase
from pathlib import Path
from typing import Any

from .errors import ArchiveLayoutUnknown

log = logging.getLogger(__name__)

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
OLDEST, NEWEST = (1, 12), (1, 16)
OFFSET_NOT_SET, OFFSET_SET, NO_DATA = 1, 2, 3
BLK_DATA, BLK_BLOBS = 1, 3
WINDOW = 8 << 20


@dataclass(frozen=True)
class TocEntry:
    dump_id: int
    desc: str
    offset_field: int  # file position of the entry's offset flag byte
    state: int


@dataclass(frozen=True)
class Toc:
    version: tuple[int, int, int]
    int_size: int
    off_size: int
    compressed: bool
    data_start: int
    entries: tuple[TocEntry, ...]


class _Reader:
    """The archive's integers and strings (sign byte, then int_size bytes, least significant first)."""

    def __init__(self, f: BufferedIOBase) -> None:
        self.f = f
        self.int_size = 4
        self.size = 0 if isinstance(f, _Following) else f.seek(0, os.SEEK_END)
        f.seek(0)

    def has(self, end: int) -> bool:
        """Whether the archive reaches byte `end` (a file still being written is waited for)."""
        if isinstance(self.f, _Following):
            return self.f.reaches(end)
        return end <= self.size

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ArchiveLayoutUnknown(f"archive ends early at byte {self.f.tell()}")
        return data

    def byte(self) -> int:
        return self.read(1)[0]

    def integer(self) -> int:
        raw = self.read(1 + self.int_size)
        value = int.from_bytes(raw[1:], "little")
        if raw[0] not in (0, 1):
            raise ArchiveLayoutUnknown(f"bad integer sign byte {raw[0]} at byte {self.f.tell() - len(raw)}")
        return -value if raw[0] else value

    def string(self) -> str | None:
        length = self.integer()
        if length < 0:
            return None
        return self.read(self._bounded(length)).decode("utf-8", "replace")

    def skip_str(self) -> bool:
        """Step over a string without reading it (a view's definition can be long); False if NULL."""
        length = self.integer()
        if length >= 0:
            self.skip(length)
        return length >= 0

    def skip(self, length: int) -> None:
        self.f.seek(self._bounded(length), os.SEEK_CUR)

    def _bounded(self, length: int) -> int:
        if not self.has(self.f.tell() + length):
            raise ArchiveLayoutUnknown(f"a length of {length} at byte {self.f.tell()} runs past the end of the archive")
        return length


def read_toc(f: BufferedIOBase) -> Toc:
    """Header and TOC of a custom-format archive; the file is left at the first data block."""
    return _walk(f, stop_at=None)[0]


def database_definition(head: bytes) -> str | None:
    """The `CREATE DATABASE` statement pg_dump put in the archive (what `pg_restore --create` runs), from the
    archive's first bytes; None when they do not reach it or it is not there."""
    try:
        return _walk(io.BytesIO(head), stop_at="DATABASE")[1]
    except ArchiveLayoutUnknown:
        return None


def _walk(f: BufferedIOBase, stop_at: str | None) -> tuple[Toc, str | None]:
    """The TOC; or, with `stop_at`, as far as the first entry of that kind, and its definition."""
    r = _Reader(f)
    if r.read(5) != MAGIC:
        raise ArchiveLayoutUnknown("not a custom-format archive")
    version = (r.byte(), r.byte(), r.byte())
    if not OLDEST <= version[:2] <= NEWEST:
        raise ArchiveLayoutUnknown(f"archive version {version[0]}.{version[1]} is outside {OLDEST} to {NEWEST}")
    r.int_size = r.byte()
    off_size = r.byte()
    if r.byte() != FORMAT_CUSTOM:
        raise ArchiveLayoutUnknown("not a custom-format archive")
    if not 1 <= r.int_size <= 8 or not 1 <= off_size <= 8:
        raise ArchiveLayoutUnknown(f"unexpected integer size {r.int_size} or offset size {off_size}")
    # 1.15 (PostgreSQL 16) names the algorithm in one byte; before, a gzip level (0 = none).
    compressed = (r.byte() if version[:2] >= (1, 15) else r.integer()) != 0
    for _ in range(7):  # creation time
        r.integer()
    for _ in range(3):  # database name, server version, pg_dump version
        r.skip_str()
    entries: list[TocEntry] = []
    for _ in range(r.integer()):
        dump_id = r.integer()
        r.integer()  # had a data dumper
        for _ in range(3):  # catalog ids, tag
            r.skip_str()
        desc = r.string() or ""
        r.integer()  # section
        if desc == stop_at:
            return Toc(version, r.int_size, off_size, compressed, 0, tuple(entries)), r.string()
        for _ in range(6 if version[:2] >= (1, 14) else 5):  # definition, drop, copy, namespace, tablespace, table AM
            r.skip_str()
        if version[:2] >= (1, 16):
            r.integer()  # relkind
        r.skip_str(), r.skip_str()  # owner, "with oids"
        while r.skip_str():  # dependencies
            pass
        offset_field = f.tell()
        state = r.byte()
        r.skip(off_size)
        if state not in (OFFSET_NOT_SET, OFFSET_SET, NO_DATA):
            raise ArchiveLayoutUnknown(f"unknown data offset state {state} for entry {dump_id}")
        entries.append(TocEntry(dump_id, desc, offset_field, state))
    return Toc(version, r.int_size, off_size, compressed, f.tell(), tuple(entries)), None


class _Finder:
    """Finds a byte string from a file position on, in windows that start small and grow.

    Most tables are small, so the first window is 64 KiB; big ones read up to 8 MiB at a time.
    One buffer serves every search (bounded memory, no allocation per table).
    """

    FIRST = 64 << 10

    def __init__(self, f: BufferedIOBase, needle: bytes) -> None:
        self.f = f
        self.needle = needle
        self.buf = bytearray(len(needle) - 1 + WINDOW)
        self.view = memoryview(self.buf)

    def find(self, start: int) -> int:
        keep = len(self.needle) - 1
        buf, window = self.buf, self.FIRST
        self.f.seek(start)
        base, carried = start, 0  # file position of buf[carried]; bytes carried over from the last window
        while True:
            got = self.f.readinto(self.view[carried:carried + window])
            if not got:
                raise ArchiveLayoutUnknown("a data block has no end marker")
            hit = buf.find(self.needle, 0, carried + got)
            if hit >= 0:
                return base - carried + hit
            tail = min(keep, carried + got)
            buf[:tail] = buf[carried + got - tail:carried + got]
            base += got
            carried = tail
            window = min(window * 2, WINDOW)


def _skip_chunks(r: _Reader) -> None:
    while (length := r.integer()) != 0:
        if length < 0:
            raise ArchiveLayoutUnknown(f"negative chunk length at byte {r.f.tell()}")
        r.skip(length)


def _skip_table_data(r: _Reader, toc: Toc, finder: _Finder) -> None:
    if toc.compressed:
        _skip_chunks(r)
        return
    # Uncompressed table data is COPY (or INSERT) text, which never holds a NUL byte, and pg_dump
    # writes a chunk per row, too many to hop one by one. A chunk header is a zero sign byte and a
    # non-zero length, so it holds at most int_size NULs in a row: the first run of 1 + int_size
    # NULs is the block's end marker (a zero length).
    end = finder.needle
    r.f.seek(finder.find(r.f.tell()) + len(end))


def _skip_blobs(r: _Reader) -> None:
    # Large objects are binary: walk them (pg_dump writes each one in chunks of a few KB).
    while r.integer() != 0:  # the object's OID; zero ends the block
        _skip_chunks(r)


def data_blocks(f: BufferedIOBase, toc: Toc) -> dict[int, int]:
    """dumpId -> position of its data block, from one pass over the data section."""
    r = _Reader(f)
    r.int_size = toc.int_size
    finder = _Finder(f, b"\0" * (1 + toc.int_size))
    f.seek(toc.data_start)
    found: dict[int, int] = {}
    while r.has((pos := f.tell()) + 1):
        kind, dump_id = r.byte(), r.integer()
        if dump_id in found:
            raise ArchiveLayoutUnknown(f"two data blocks for entry {dump_id}")
        found[dump_id] = pos
        if kind == BLK_DATA:
            _skip_table_data(r, toc, finder)
        elif kind == BLK_BLOBS:
            _skip_blobs(r)
        else:
            raise ArchiveLayoutUnknown(f"unknown data block type {kind} at byte {pos}")
    if not r.has(f.tell()):
        raise ArchiveLayoutUnknown("the last data block runs past the end of the archive")
    return found


@dataclass(frozen=True)
class Found:
    """What one walk of an archive found: its TOC and where each entry's data block starts."""

    toc: Toc
    blocks: dict[int, int]


def _find(f: BufferedIOBase) -> Found | None:
    toc = read_toc(f)
    if not any(e.state == OFFSET_NOT_SET for e in toc.entries):
        return None
    blocks = data_blocks(f, toc)
    with_data = {e.dump_id for e in toc.entries if e.state != NO_DATA}
    if not set(blocks) <= with_data:
        raise ArchiveLayoutUnknown("a data block belongs to no TOC entry with data")
    return Found(toc, blocks)


def _not_written(exc: Exception) -> None:
    # Only an optimisation: pg_restore reads the archive either way.
    log.warning("data offsets not written (%s); pg_restore -j will scan the archive instead", exc)


def fill_offsets(path: Path, found: Found | Exception | None = None) -> int:
    """Write the missing data offsets into the archive at `path`; the number written (0: none needed).

    `found` is an `OffsetScan`'s result for this file (the walk is done then), else the file is walked here."""
    if isinstance(found, Exception):
        _not_written(found)
        return 0
    with path.open("r+b") as f:
        if found is None:
            try:
                found = _find(f)
            except (ArchiveLayoutUnknown, OSError, ValueError) as exc:
                _not_written(exc)
                return 0
            if found is None:
                return 0
        toc, blocks = found.toc, found.blocks
        missing = [e for e in toc.entries if e.state == OFFSET_NOT_SET]
        written = 0
        for entry in missing:
            pos = blocks.get(entry.dump_id)
            if pos is None or pos >= 1 << (8 * toc.off_size):
                continue  # pg_restore searches for it, as it would have
            f.seek(entry.offset_field)
            f.write(bytes([OFFSET_SET]) + pos.to_bytes(toc.off_size, "little"))
            written += 1
    return written


class _Following(BufferedIOBase):
    """A file another process or thread is still writing, read as if whole: a read waits for its bytes
    until the writer is done; a writer that stalls longer than `stall_s`, or `abandoned` being set, ends the walk."""

    POLL_S = 0.005

    def __init__(self, f: BufferedIOBase, done: threading.Event, stall_s: float, abandoned: threading.Event) -> None:
        self._f = f
        self._done = done
        self._stall_s = stall_s
        self._abandoned = abandoned

    def reaches(self, end: int) -> bool:
        size, since, seen = 0, time.monotonic(), -1
        while True:
            if self._abandoned.is_set():
                raise ArchiveLayoutUnknown("the copy was abandoned")
            done = self._done.is_set()  # read before the size: a size taken after `done` is final
            size = os.fstat(self._f.fileno()).st_size
            if size >= end or done:
                return size >= end
            if size != seen:
                seen, since = size, time.monotonic()
            elif time.monotonic() - since > self._stall_s:
                raise ArchiveLayoutUnknown(f"the copy stopped growing at byte {size}")
            self._done.wait(self.POLL_S)

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            raise ValueError("a following read needs a length")
        self.reaches(self._f.tell() + n)
        return self._f.read(n)

    def readinto(self, buffer: Any) -> int:
        pos = self._f.tell()
        if not self.reaches(pos + 1):
            return 0
        # At most what is there now: the rest may not be written yet.
        size = os.fstat(self._f.fileno()).st_size
        view = memoryview(buffer)
        return self._f.readinto(view[: max(1, min(len(view), size - pos))])

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_END:
            raise ValueError("the end of a following file is not known yet")
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


class OffsetScan:
    """Walks an archive's data blocks in a thread while the copy is being written to `path`.

    `writer_done()` once the last byte is written, `abandon()` if the copy failed (the walk stops at its
    next read, closing the file, so a deleted copy frees its disk space); `result()` then waits for the walk."""

    def __init__(self, path: Path, stall_s: float = 300.0) -> None:
        self._path = path
        self._stall_s = stall_s
        self._done = threading.Event()
        self._abandoned = threading.Event()
        self._result: Found | Exception | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="archive-offsets")
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._path.open("rb") as raw:
                self._result = _find(_Following(raw, self._done, self._stall_s, self._abandoned))
        except (ArchiveLayoutUnknown, OSError, ValueError) as exc:
            self._result = exc

    def writer_done(self) -> None:
        self._done.set()

    def abandon(self) -> None:
        self._abandoned.set()
        self._done.set()

    def result(self, timeout: float = 300.0) -> Found | Exception | None:
        """What `fill_offsets` takes: the walk's finding, None (nothing missing) or why it failed."""
        self._done.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return ArchiveLayoutUnknown(f"the walk of the data blocks took longer than {timeout:.0f}s")
        return self._result


# The oldest pg_restore that reads each archive version (pg_backup_archiver.h's K_VERS_* history).
_READER_SINCE = {(1, 12): 9, (1, 13): 10, (1, 14): 12, (1, 15): 16, (1, 16): 17}


def header_version(head: bytes) -> tuple[int, int] | None:
    """The archive version from a custom-format archive's first bytes; None if they are not one."""
    if len(head) < 8 or not head.startswith(MAGIC):
        return None
    return head[5], head[6]


def oldest_reader(version: tuple[int, int]) -> int | None:
    """The oldest pg_restore major that reads `version`; None for one newer than db-backup knows."""
    if version > NEWEST:
        return None
    return _READER_SINCE.get(version, 9)
