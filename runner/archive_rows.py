"""What a custom-format archive holds, read front to back: its tables, extensions, and each table's row count.

A restore drill compares the restored database with this. The archive is read as a stream (no
seeking), so the stored dump flows through its decompressor straight into the reader, with no local
copy. Table data is COPY text, one row per line, ended by a `\\.` line; pg_dump may have compressed
each table's block with zlib (gzip), which is undone here. The layout is archive.py's (pg_backup_archiver.c).
A damaged archive raises JobFailed; ArchiveLayoutUnknown is kept for a layout this reader does not know.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from .archive import BLK_BLOBS, BLK_DATA, FORMAT_CUSTOM, MAGIC, NEWEST, NO_DATA, OLDEST
from .catalog import BackupEntry
from .errors import ArchiveLayoutUnknown, JobFailed
from .pg.pipeline import Pipeline, Step
from .pg.tools import compressor_env
from .stored_dump import open_dump
from .stores import BackupStore

READ = 1 << 20
MAX_STRING = 256 << 20  # a TOC string (a definition) longer than this is a corrupt length, not a schema
_ALGORITHMS = {0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}  # archive 1.15+: one byte names it


@dataclass(frozen=True)
class TableData:
    schema: str
    table: str
    rows: int | None  # None: not COPY data (e.g. --inserts), so not counted

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class Contents:
    """The archive's tables (schema.name), its extensions, and the rows of each table's data block."""

    tables: tuple[str, ...]
    extensions: tuple[str, ...]
    data: tuple[TableData, ...]

    def row_counts(self) -> dict[str, int]:
        return {d.name: d.rows for d in self.data if d.rows is not None}


@dataclass(frozen=True)
class _Entry:
    dump_id: int
    desc: str
    tag: str
    namespace: str
    copy: bool
    has_data: bool


class _Stream:
    """Integers and strings of the archive from a forward-only byte stream."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.int_size = 4
        self.pos = 0

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        while len(data) < n:
            more = self.f.read(n - len(data))
            if not more:
                raise JobFailed(f"archive ends early at byte {self.pos + len(data)}")
            data += more
        self.pos += n
        return data

    def maybe_byte(self) -> int | None:
        """The next byte, or None at the end of the archive."""
        data = self.f.read(1)
        if not data:
            return None
        self.pos += 1
        return data[0]

    def byte(self) -> int:
        return self.read(1)[0]

    def integer(self) -> int:
        raw = self.read(1 + self.int_size)
        if raw[0] not in (0, 1):
            raise JobFailed(f"bad integer sign byte {raw[0]} at byte {self.pos - len(raw)}")
        value = int.from_bytes(raw[1:], "little")
        return -value if raw[0] else value

    def string(self) -> str | None:
        length = self.integer()
        if length < 0:
            return None
        if length > MAX_STRING:
            raise JobFailed(f"a string length of {length} at byte {self.pos} is past any sane definition; the archive is damaged")
        return b"".join(self.pieces(length)).decode("utf-8", "replace")

    def pieces(self, n: int) -> Iterator[bytes]:
        """The next `n` bytes in pieces of at most READ: a corrupt length is met by the archive's end, not buffered."""
        while n > 0:
            piece = self.read(min(n, READ))
            n -= len(piece)
            yield piece

    def skip(self, n: int) -> None:
        for _ in self.pieces(n):
            pass

    def chunks(self) -> Iterator[bytes]:
        """A data block's chunks, up to its zero-length end, in pieces of at most READ."""
        while (length := self.integer()) != 0:
            if length < 0:
                raise JobFailed(f"negative chunk length at byte {self.pos}")
            yield from self.pieces(length)


def _header(s: _Stream) -> tuple[tuple[int, int], str, int]:
    """Archive version, the data blocks' compression, and the offset size."""
    if s.read(5) != MAGIC:
        raise JobFailed("not a custom-format archive")
    version = (s.byte(), s.byte())
    s.byte()
    if not OLDEST <= version <= NEWEST:
        raise ArchiveLayoutUnknown(f"archive version {version[0]}.{version[1]} is outside {OLDEST} to {NEWEST}")
    s.int_size = s.byte()
    off_size = s.byte()
    if s.byte() != FORMAT_CUSTOM:
        raise ArchiveLayoutUnknown("not a custom-format archive")
    # Before 1.15 a zlib level (-1 is zlib's default); since, one byte naming the algorithm.
    compression = _ALGORITHMS.get(s.byte(), "unknown") if version >= (1, 15) else ("none" if s.integer() == 0 else "gzip")
    for _ in range(7):  # creation time
        s.integer()
    for _ in range(3):  # database name, server version, pg_dump version
        s.string()
    return version, compression, off_size


def _entries(s: _Stream, version: tuple[int, int], off_size: int) -> list[_Entry]:
    entries = []
    for _ in range(s.integer()):
        dump_id = s.integer()
        s.integer()  # had a data dumper
        s.string(), s.string()  # catalog ids
        tag = s.string() or ""
        desc = s.string() or ""
        s.integer()  # section
        s.string(), s.string()  # definition, drop
        copy = bool((s.string() or "").startswith("COPY "))
        namespace = s.string() or ""
        s.string()  # tablespace
        if version >= (1, 14):
            s.string()  # table access method
        if version >= (1, 16):
            s.integer()  # relkind
        s.string(), s.string()  # owner, "with oids"
        while s.string() is not None:  # dependencies
            pass
        state = s.byte()
        s.skip(off_size)
        entries.append(_Entry(dump_id, desc, tag, namespace, copy, state != NO_DATA))
    return entries


class _LineCounter:
    """Rows of COPY text: its lines, less the `\\.` end line and blank lines after it."""

    def __init__(self) -> None:
        self.newlines = 0
        self.tail = b""

    def feed(self, data: bytes) -> None:
        self.newlines += data.count(b"\n")
        self.tail = (self.tail + data)[-16:]

    def rows(self) -> int:
        # "a\nb\n\\.\n\n\n": every trailing newline ends the `\.` line or a blank line after it.
        stripped = self.tail.rstrip(b"\n")
        if stripped.endswith(b"\\.") and stripped[-3:-2] in (b"", b"\n"):
            return self.newlines - (len(self.tail) - len(stripped))
        return self.newlines


def _count_block(s: _Stream, compression: str) -> int:
    counter = _LineCounter()
    if compression == "none":
        for chunk in s.chunks():
            counter.feed(chunk)
    elif compression == "gzip":
        inflate = zlib.decompressobj()
        fed = False
        try:
            for chunk in s.chunks():
                fed = True
                data = chunk
                while data:  # bounded output per call: a small block may inflate to a great deal
                    counter.feed(inflate.decompress(data, READ))
                    data = inflate.unconsumed_tail
            counter.feed(inflate.flush())
        except zlib.error as exc:
            raise JobFailed(f"a table's data in the archive does not decompress: {exc}") from exc
        if fed and not inflate.eof:
            raise JobFailed("a table's compressed data in the archive ends before its zlib stream does; the archive is damaged")
    else:
        raise ArchiveLayoutUnknown(f"pg_dump compressed the table data with {compression}, which db-backup cannot count")
    return counter.rows()


def read_contents(f: IO[bytes]) -> Contents:
    """The tables, extensions and per-table row counts of the archive `f` holds, read to its end."""
    s = _Stream(f)
    version, compression, off_size = _header(s)
    entries = _entries(s, version, off_size)
    by_id = {e.dump_id: e for e in entries}
    rows: dict[int, int | None] = {}
    while (kind := s.maybe_byte()) is not None:
        dump_id = s.integer()
        if kind == BLK_DATA:
            entry = by_id.get(dump_id)
            if entry is not None and entry.desc == "TABLE DATA" and entry.copy:
                rows[dump_id] = _count_block(s, compression)
            else:
                for _ in s.chunks():
                    pass
        elif kind == BLK_BLOBS:
            while s.integer() != 0:  # each large object's OID, then its chunks; zero ends the block
                for _ in s.chunks():
                    pass
        else:
            raise JobFailed(f"unknown data block type {kind} at byte {s.pos - 1}")
    data = tuple(
        TableData(e.namespace, e.tag, rows.get(e.dump_id) if e.copy else None)
        for e in entries if e.desc == "TABLE DATA" and e.has_data
    )
    missing = [d.name for e, d in zip((e for e in entries if e.desc == "TABLE DATA" and e.has_data), data, strict=True)
               if e.copy and e.dump_id not in rows]
    if missing:
        raise JobFailed(f"the archive has no data block for {', '.join(missing[:5])}; the dump is incomplete")
    return Contents(
        tables=tuple(f"{e.namespace}.{e.tag}" for e in entries if e.desc == "TABLE"),
        extensions=tuple(e.tag for e in entries if e.desc == "EXTENSION"),
        data=data,
    )


def stored_contents(store: BackupStore, entry: BackupEntry) -> Contents:
    """read_contents of a stored dump, streamed through its decompressor (no local copy)."""
    chunks, codec = open_dump(store, entry)
    where = store.uri(entry.key)
    if codec is None:
        return read_contents(io.BufferedReader(_ChunkFile(chunks), READ))
    failed: list[BaseException] = []

    def feed(step: Step) -> None:
        try:
            pipe.feed(step, chunks)
        except BaseException as exc:  # e.g. the store failed mid-read: the reason, not the decompressor's complaint
            failed.append(exc)
            assert step.proc.stdin is not None
            with contextlib.suppress(OSError):
                step.proc.stdin.close()

    with Pipeline() as pipe:
        step = pipe.start(codec.name, compressor_env(), codec.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert step.proc.stdout is not None
        # Fed from a thread: the decompressor's output is read here at the same time.
        feeder = threading.Thread(target=feed, args=(step,), daemon=True, name="archive-rows")
        feeder.start()
        try:
            contents = read_contents(step.proc.stdout)
        except BaseException as exc:
            pipe.stop()
            feeder.join(timeout=30)
            if failed and not isinstance(exc, KeyboardInterrupt):
                raise failed[0] from None
            raise
        feeder.join(timeout=300)
        pipe.wait(timeout=60)
        if failed:
            raise failed[0]
        if failure := pipe.failure():
            raise JobFailed(f"reading {where}: {failure}")
    return contents


class _ChunkFile(io.RawIOBase):
    """A forward-only file over an iterator of chunks (an uncompressed stored dump)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            more = next(self._chunks, None)
            if more is None:
                return 0
            self._left = memoryview(more)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n
