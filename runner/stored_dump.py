"""Reading a stored dump: its bytes and decompressor, its checksum, a local copy, and its archive header."""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import subprocess
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import archive
from .catalog import BackupEntry
from .compression import Codec, decompressor, sniff
from .errors import BadInput, DbBackupError, InfraError, JobFailed, NoBackup
from .manifest import globals_key
from .pg.admin import DatabaseShape, shape_of
from .pg.pipeline import Pipeline
from .pg.tools import compressor_env, major, tool_version
from .progress import Meter, Progress, Stage, quiet
from .stores import BackupStore

log = logging.getLogger(__name__)


def _peek(chunks: Iterator[bytes]) -> tuple[bytes, Iterator[bytes]]:
    first = next(chunks, b"")
    return first, itertools.chain([first], chunks)


def open_dump(store: BackupStore, entry: BackupEntry) -> tuple[Iterator[bytes], Codec | None]:
    """The stored bytes, and the decompressor their first bytes call for."""
    head, chunks = _peek(store.read(entry.key))
    return chunks, decompressor(sniff(head), store.uri(entry.key))


def check_digest(entry: BackupEntry, actual: str, size: int, where: str) -> None:
    if entry.manifest is None:
        log.warning("%s is a legacy dump without a manifest: its checksum cannot be verified", where)
        return
    if size != entry.manifest.size_bytes or actual != entry.manifest.sha256:
        raise JobFailed(
            f"checksum mismatch for {where}: expected sha256 {entry.manifest.sha256}, got {actual}; "
            "the backup is damaged and the target was not touched"
        )


def read_globals(store: BackupStore, entry: BackupEntry) -> str | None:
    """The backup's roles and globals file, checked against the manifest's sha256; None if its manifest names none."""
    manifest = entry.manifest
    if manifest is None or manifest.globals_sha256 is None:
        return None
    key = globals_key(entry.key)
    where = store.uri(key)
    try:
        data = b"".join(store.read(key))
    except NoBackup as exc:
        raise JobFailed(f"the globals file {where} that the manifest names is missing; the backup's roles cannot be trusted") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.globals_sha256 or (manifest.globals_bytes is not None and len(data) != manifest.globals_bytes):
        raise JobFailed(
            f"globals checksum mismatch for {where}: expected sha256 {manifest.globals_sha256}, got {actual}; "
            "the backup's roles file is damaged"
        )
    return data.decode("utf-8", "replace")


@dataclass(frozen=True)
class LocalCopy:
    """The dump copied into a seekable local file (decompressed), the sha256 and size of the stored bytes
    read, and where its data blocks start (walked while the copy was written; for `archive.fill_offsets`)."""

    path: Path
    sha256: str
    size: int
    blocks: archive.Found | Exception | None


def download(store: BackupStore, entry: BackupEntry, folder: Path, progress: Progress | None = None) -> LocalCopy:
    """Copy the dump into a seekable local file (decompressed), hashing the stored bytes."""
    try:
        with quiet(progress).stage(f"download of {entry.id}") as stage:
            return _copy(store, entry, folder, stage)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(folder) from exc
        raise


def _disk_full(folder: Path) -> InfraError:
    """The local disk, not the dump, is the problem: say where and what to do."""
    return InfraError(
        f"the work folder {folder.parent} is full (no space left on device) while copying the dump for a parallel restore; "
        "free space there, set DB_BACKUP_WORK_DIR to a larger disk, or set DB_BACKUP_RESTORE_MODE=stream; the target was not touched"
    )


def _copy(store: BackupStore, entry: BackupEntry, folder: Path, stage: Stage) -> LocalCopy:
    path = folder / "restore.dump"
    with path.open("wb") as out:
        # The data blocks are walked while the copy grows, on another core, instead of in a pass after it.
        scan = archive.OffsetScan(path)
        try:
            hashed = _write_copy(store, entry, out, folder, stage)
        except BaseException:
            scan.abandon()
            raise
        scan.writer_done()
    return LocalCopy(path, hashed.sha256, hashed.size, scan.result())


def _write_copy(store: BackupStore, entry: BackupEntry, out: BinaryIO, folder: Path, stage: Stage) -> Hashed:
    chunks, decompress = open_dump(store, entry)
    hashed = Hashed(chunks, stage.meter("downloaded", entry.size_bytes))
    if decompress is None:
        for chunk in hashed:
            out.write(chunk)
        out.flush()
        return hashed
    # Whatever the decompressor wrote so far, read from the file when a line is shown: nothing counts it on the way.
    original = entry.manifest.uncompressed_bytes if entry.manifest else None
    stage.meter("decompressed", original, probe=lambda: os.fstat(out.fileno()).st_size)
    where = store.uri(entry.key)
    # A cancel or a storage error mid-download ends the pipeline and is the reason given, not
    # the decompressor's complaint about the input that stopped short.
    with Pipeline() as pipe:
        step = pipe.start(decompress.name, compressor_env(), decompress.argv, stdin=subprocess.PIPE, stdout=out)
        stopped_early = not pipe.feed(step, hashed)  # it quit on bad data: its exit code and message say why
        pipe.wait()
    code = step.proc.returncode
    if code != 0 and (step.tail.mentions("No space left") or step.tail.mentions("quota exceeded")):
        raise _disk_full(folder)
    if code != 0 or stopped_early:
        how = f"exit {code}" if code else "it stopped reading early"
        raise JobFailed(f"decompressing {where} failed ({how}): {step.tail.last_error()}; the dump is damaged")
    return hashed


def _archive_head(store: BackupStore, entry: BackupEntry, count: int = 64) -> bytes:
    """The first `count` bytes of the archive inside the stored dump (decompressed if need be)."""
    chunks = store.read(entry.key)
    try:
        head = next(iter(chunks), b"")
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    kind = sniff(head)
    if kind == "gzip":
        return zlib.decompressobj(wbits=47).decompress(head, count)
    if kind == "zstd":
        codec = decompressor(kind, store.uri(entry.key))
        assert codec is not None
        return _first_bytes(codec, head, count)
    return head[:count]


# The archive's first entries (encoding, settings, the database itself) are small: this reaches them.
DATABASE_ENTRY_BYTES = 64 << 10


def database_shape(store: BackupStore, entry: BackupEntry, head: bytes | None = None) -> DatabaseShape | None:
    """The encoding and locale of the backed-up database, from the archive's CREATE DATABASE; None if unknown.

    `head`: the archive's first bytes as `check_reader` returned them, so the dump is not opened twice."""
    try:
        head = head if head is not None else _archive_head(store, entry, DATABASE_ENTRY_BYTES)
    except (zlib.error, DbBackupError) as exc:
        log.warning("could not read the backed-up database's encoding from %s (%s)", store.uri(entry.key), exc)
        return None
    return shape_of(archive.database_definition(head))


def _first_bytes(codec: Codec, head: bytes, count: int = 64) -> bytes:
    """The first bytes `codec` makes of `head`, a piece of a stream: read no more, then stop it."""
    with Pipeline() as pipe:
        step = pipe.start(codec.name, compressor_env(), codec.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert step.proc.stdout is not None
        # Fed from a thread: it blocks once the pipe is full, and the kill below ends that.
        feeder = threading.Thread(target=pipe.feed, args=(step, [head]), daemon=True, name="archive-head")
        feeder.start()
        try:
            return step.proc.stdout.read(count)
        finally:
            pipe.stop()
            step.proc.stdout.close()
            feeder.join(timeout=30)


def check_reader(store: BackupStore, entry: BackupEntry, pg_restore: str) -> bytes:
    """Refuse, before anything is touched, an archive this pg_restore cannot read (pg_dump 16+ needs 16+).

    Returns the archive's first bytes (enough for `database_shape`)."""
    head = _archive_head(store, entry, DATABASE_ENTRY_BYTES)
    version = archive.header_version(head)
    if version is None:
        return head  # not a custom archive: decompressor() and the restore say what it is
    needed = archive.oldest_reader(version)
    have = tool_version(pg_restore)
    if needed is None or major(have) < needed:
        newer = f"{needed} or newer" if needed else f"newer than {major(have)}"
        raise BadInput(
            f"backup {entry.id} is a PostgreSQL archive of format {version[0]}.{version[1]}, which pg_restore {have} "
            f"cannot read; install the PostgreSQL client tools {newer} (e.g. apt-get install postgresql-client-{needed or 'NEW'}) "
            "or set DB_BACKUP_PG_BINDIR to their bin folder"
        )
    return head


class Hashed:
    """The stored bytes passed on as they are, counted and hashed on the way (iterate it once)."""

    def __init__(self, chunks: Iterable[bytes], meter: Meter | None = None) -> None:
        self._chunks = chunks
        self._digest = hashlib.sha256()
        self._meter = meter
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self._digest.update(chunk)
            self.size += len(chunk)
            if self._meter is not None:
                self._meter.add(len(chunk))
            yield chunk

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


class Counted:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.size += len(chunk)
            yield chunk
