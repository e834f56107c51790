"""Backup and restore, executor-agnostic: what runs where the job runs (laptop or Fargate task)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

from . import __version__, archive, postgres, workdir
from .aws import AwsClients
from .clock import Clock
from .compression import sniff
from .credentials import Connection, Resolver
from .errors import BadInput, Cancelled, IdTaken, InfraError, JobFailed, RestoreRefused, cancel_reason
from .humanize import human_size
from .settings import Settings
from .storage import BackupEntry, BackupStore, Manifest, Upload, make_id, newest_good, open_store, resolve_backup
from .targets import Registry, Target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """Everything a job needs from outside, passed in by the CLI (or a test)."""

    settings: Settings
    clock: Clock
    aws: AwsClients
    on_secret: Callable[[str], None] = lambda _secret: None

    def store(self, target: Target) -> BackupStore:
        return open_store(
            target.storage, lambda: self.aws.s3(target.region),
            self.settings.part_size_mb, self.settings.parallel_uploads,
        )

    def resolver(self, target: Target) -> Resolver:
        return Resolver(lambda: self.aws.ssm(target.region), on_secret=self.on_secret)


# --- backup -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    manifest: Manifest
    uri: str


MAX_IDS_PER_SECOND = 100


def _reserve_id(store: BackupStore, target: Target, now: datetime, locks: postgres.UploadLocks) -> tuple[str, str, Upload]:
    """The first free id of this second, reserved by starting its upload: two runs never share one.

    Its lock is taken first, so another run's cleanup never sees this upload without it.
    """
    for seq in range(1, MAX_IDS_PER_SECOND + 1):
        backup_id = make_id(now, seq)
        key = store.key(target.identifier, target.env, backup_id)
        if not locks.claim(store.uri(key)):
            log.debug("backup id %s is held by a running backup; trying the next", backup_id)
            continue
        try:
            return backup_id, key, store.start_upload(key, target.storage_class)
        except IdTaken as taken:
            locks.release(store.uri(key))
            log.debug("backup id %s is taken (%s); trying the next", backup_id, taken)
    raise JobFailed(f"all {MAX_IDS_PER_SECOND} backup ids of {make_id(now)} for {target.name} are taken; run again")


def backup(target: Target, services: Services, request_id: str | None = None) -> BackupResult:
    """pg_dump straight into storage; the manifest is written only after everything succeeded."""
    store = services.store(target)
    conn = services.resolver(target).resolve(target.database)
    pg_dump = postgres.find_tool("pg_dump")
    dump_version = postgres.tool_version(pg_dump)
    plan = postgres.plan_dump(pg_dump, target.compression, target.lock_wait_timeout)
    # One session for the whole backup: the connection check, the server's version, the upload's lock.
    with postgres.upload_locks(conn) as locks:
        server = locks.server_version
        if postgres.major(dump_version) < postgres.major(server):
            raise JobFailed(
                f"pg_dump {dump_version} cannot dump server {server}; install PostgreSQL client tools {postgres.major(server)} or newer"
            )
        now = services.clock.now()
        store.clean_leftovers(target.identifier, target.env, now, locks.abandoned)  # it logs what it removed
        backup_id, key, upload = _reserve_id(store, target, now, locks)
        try:
            log.info("backing up %s (%s, server %s) to %s with %s", target.name, conn.describe(), server, store.uri(key), plan.compression)
            started = services.clock.monotonic()
            digest = hashlib.sha256()
            size = 0
            with postgres.dump_stream(conn, plan) as output:
                for chunk in output:
                    digest.update(chunk)
                    size += len(chunk)
                    upload.write(chunk)
        except BaseException:
            upload.abort()
            raise
        upload.complete()
        manifest = Manifest(
            identifier=target.identifier, env=target.env, id=backup_id, key=key,
            created_at=now, duration_s=round(services.clock.monotonic() - started, 3),
            size_bytes=size, sha256=digest.hexdigest(), format="custom", compression=plan.compression,
            compressed_by=plan.compressed_by, pg_dump_version=dump_version, server_version=server,
            database=conn.dbname, tool_version=__version__, request_id=request_id, uncompressed_bytes=output.raw_bytes,
        )
        store.put_manifest(manifest)
    log.info("backup %s done: %s in %.1fs, sha256 %s", backup_id, human_size(size), manifest.duration_s, manifest.sha256)
    return BackupResult(manifest, store.uri(key))


# --- restore ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestorePlan:
    """A checked restore request: nothing has been touched yet."""

    source: Target
    backup: str
    dest: Target | None
    dest_url: Connection | None

    @property
    def dest_label(self) -> str:
        if self.dest is not None:
            return self.dest.name
        assert self.dest_url is not None
        return self.dest_url.describe()


def plan_restore(
    registry: Registry, identifier: str, source_env: str, to_env: str | None, to_url: Connection | None,
    backup_id: str, confirm: str | None,
) -> RestorePlan:
    """Apply the refusal rules (existence, direction, protection) before any side effect."""
    if (to_env is None) == (to_url is None):
        raise BadInput("give exactly one of --to ENV or --to-url URL")
    source = registry.get(identifier, source_env)
    dest = None
    if to_env is not None:
        dest = registry.get(identifier, to_env)
        registry.check_direction(source, dest)
        if dest.protected and confirm != dest.env:
            raise RestoreRefused(
                f"{dest.name} is protected; add --confirm {dest.env} to replace its database "
                "(in GitHub, the environment's approval does this)"
            )
    return RestorePlan(source, backup_id, dest, to_url)


@dataclass(frozen=True)
class RestoreResult:
    source: str
    backup_id: str
    dest: str
    database: str
    previous: str | None
    duration_s: float
    size_bytes: int
    sha256: str
    verified: bool
    mode: str


def _peek(chunks: Iterator[bytes]) -> tuple[bytes, Iterator[bytes]]:
    first = next(chunks, b"")
    return first, itertools.chain([first], chunks)


def _open_dump(store: BackupStore, entry: BackupEntry) -> tuple[Iterator[bytes], tuple[str, ...] | None]:
    """The stored bytes, and the decompressor their first bytes call for."""
    head, chunks = _peek(store.read(entry.key))
    return chunks, _decompressor(sniff(head), store.uri(entry.key))


def _decompressor(kind: str, where: str) -> tuple[str, ...] | None:
    if kind == "custom":
        return None
    if kind == "zstd":
        zstd = shutil.which("zstd")
        if not zstd:
            raise BadInput("this backup is zstd-compressed; install zstd (apt-get install zstd) to restore it")
        return (zstd, "-d", "-q", "-c")
    if kind == "gzip":
        return (shutil.which("gzip") or "gzip", "-d", "-c")
    raise JobFailed(f"{where} is not a PostgreSQL custom-format dump (unknown header); it cannot be restored")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


MIN_RESTORE_JOBS = 2


def restore_jobs(settings: Settings) -> int:
    """pg_restore -j when a restore runs in parallel: its workers mostly wait on the server.

    Measured (bench/RESULTS.md): pg_restore pinned to one core, the server free on two: -j2 took
    0.71x the time of -j1, so even a one-core client runs two.
    """
    return settings.restore_jobs or max(MIN_RESTORE_JOBS, _cores())


def _use_parallel(entry: BackupEntry, settings: Settings, jobs: int) -> bool:
    if settings.restore_mode != "auto":
        return settings.restore_mode == "parallel"
    # On one core the download, decompression and offsets run one after another before pg_restore
    # starts, while streaming overlaps them with the server's work: pinned to one core, db-backup's
    # parallel restore took 1.23x the time of its stream (bench/RESULTS.md).
    return _cores() > 1 and jobs > 1 and _worth_parallel(entry, settings)


def _check_digest(entry: BackupEntry, actual: str, size: int, where: str) -> None:
    if entry.manifest is None:
        log.warning("%s is a legacy dump without a manifest: its checksum cannot be verified", where)
        return
    if size != entry.manifest.size_bytes or actual != entry.manifest.sha256:
        raise JobFailed(
            f"checksum mismatch for {where}: expected sha256 {entry.manifest.sha256}, got {actual}; "
            "the backup is damaged and the target was not touched"
        )


def _download(store: BackupStore, entry: BackupEntry, folder: Path) -> tuple[Path, str, int]:
    """Copy the dump into a seekable local file (decompressed), hashing the stored bytes."""
    try:
        return _copy(store, entry, folder)
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


def _copy(store: BackupStore, entry: BackupEntry, folder: Path) -> tuple[Path, str, int]:
    digest = hashlib.sha256()
    size = 0
    chunks, decompress = _open_dump(store, entry)
    path = folder / "restore.dump"
    where = store.uri(entry.key)
    with path.open("wb") as out:
        if decompress is None:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            return path, digest.hexdigest(), size
        proc = postgres.compressor_env().spawn(decompress, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stderr is not None
        tail = postgres.Tail(proc.stderr, decompress[0])
        try:
            stopped_early = False
            try:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                stopped_early = True  # the decompressor quit on bad data: its exit code and message say why
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            code = proc.wait()
            tail.join()
        except BaseException:
            # A cancel or a storage error mid-download is the reason, not the decompressor's
            # complaint about the input that stopped short.
            postgres.stop([(decompress[0], proc, tail)])
            raise
        if code != 0 and (tail.mentions("No space left") or tail.mentions("quota exceeded")):
            raise _disk_full(folder)
        if code != 0 or stopped_early:
            how = f"exit {code}" if code else "it stopped reading early"
            raise JobFailed(f"decompressing {where} failed ({how}): {tail.last_error()}; the dump is damaged")
    return path, digest.hexdigest(), size


LEGACY_PARALLEL_MIN_BYTES = 64 << 20


def _pg_dump_compressed(entry: BackupEntry) -> bool:
    """pg_dump compressed the archive itself (gzip): the local copy is the stored file as it is."""
    m = entry.manifest
    return m is not None and m.compressed_by == "pg_dump" and m.compression.startswith("gzip")


def _worth_parallel(entry: BackupEntry, settings: Settings) -> bool:
    """Measured (bench/RESULTS.md): -j pays off for big dumps, once each table's data can be sought.

    Old-system dumps (pg_dump's gzip, written to files with data offsets): -j2 beat -j1 already at
    120 MB, each worker decompressing its own tables. db-backup's gzip dumps are the same archives
    once their offsets are written (runner/archive.py), so the same rule applies. For zstd and
    uncompressed dumps the threshold is on the uncompressed size, which is the restore's work.
    """
    if entry.manifest is None or _pg_dump_compressed(entry):
        return entry.size_bytes >= LEGACY_PARALLEL_MIN_BYTES
    raw = entry.manifest.uncompressed_bytes
    return raw is not None and raw >= settings.parallel_threshold_mb << 20


def _fits_on_disk(entry: BackupEntry, work_dir: Path | None) -> bool:
    """Room for the local copy: the uncompressed archive, or for pg_dump's gzip the stored file.

    Without a manifest the container is unknown until the first bytes arrive: assume 5x.
    """
    if _pg_dump_compressed(entry):
        needed = entry.size_bytes
    else:
        raw = entry.manifest.uncompressed_bytes if entry.manifest else None
        needed = raw if raw is not None else entry.size_bytes * 5
    free = shutil.disk_usage(work_dir or tempfile.gettempdir()).free
    return needed + (256 << 20) <= free


def restore(plan: RestorePlan, services: Services) -> RestoreResult:
    """Restore into a fresh database, verify, then swap it in; the target is never left broken."""
    settings = services.settings
    checkpoint = _checkpoints(settings)
    store = services.store(plan.source)
    entry = resolve_backup(store, plan.source.identifier, plan.source.env, plan.backup)
    conn = services.resolver(plan.dest).resolve(plan.dest.database) if plan.dest else plan.dest_url
    assert conn is not None
    if conn.dbname in ("template0", "template1"):
        raise BadInput(f"refusing to restore into {conn.dbname}; choose another database")
    keep_previous = plan.dest.keep_previous if plan.dest else True
    ignore_privileges = plan.dest.ignore_privileges if plan.dest else plan.source.ignore_privileges
    fresh = postgres.fresh_name(conn.dbname, entry.id)
    previous = postgres.derived_name(conn.dbname, "__previous")
    pg_restore = postgres.find_tool("pg_restore")
    jobs = restore_jobs(settings)
    parallel = _use_parallel(entry, settings, jobs)
    if parallel and not _fits_on_disk(entry, settings.work_dir):
        log.warning("not enough free disk for a parallel restore's copy of %s; streaming instead", entry.id)
        parallel = False
    started = services.clock.monotonic()
    admin_conn = postgres.admin_connection(conn)
    swap = postgres.SwapState()
    try:
        job = _RestoreJob(store, entry, conn, admin_conn, fresh, previous, pg_restore, jobs, parallel, ignore_privileges, keep_previous)
        kept, actual = _restore_and_swap(job, settings, swap, checkpoint)
    except KeyboardInterrupt as exc:
        if swap.committed:  # e.g. while the work folder's copy was being removed
            _after_swap(exc, conn.dbname, previous if swap.kept_previous else None)
        raise
    duration = round(services.clock.monotonic() - started, 3)
    log.info("restored %s into %s in %.1fs%s", entry.id, conn.describe(), duration, f"; previous kept as {previous}" if kept else "")
    return RestoreResult(
        source=plan.source.name, backup_id=entry.id, dest=plan.dest_label, database=conn.dbname,
        previous=previous if kept else None, duration_s=duration, size_bytes=entry.size_bytes,
        sha256=actual, verified=entry.manifest is not None, mode=f"parallel -j{jobs}" if parallel else "stream",
    )


@dataclass(frozen=True)
class _RestoreJob:
    """What one restore works with, decided before anything is touched."""

    store: BackupStore
    entry: BackupEntry
    conn: Connection
    admin_conn: Connection
    fresh: str
    previous: str
    pg_restore: str
    jobs: int
    parallel: bool
    ignore_privileges: bool
    keep_previous: bool


def _restore_and_swap(
    job: _RestoreJob, settings: Settings, swap: postgres.SwapState, checkpoint: postgres.Checkpoint,
) -> tuple[bool, str]:
    """Checks, load into the fresh database, swap: whether the old data was kept, and the sha256 read."""
    where = job.store.uri(job.entry.key)
    # Checked before a byte is downloaded: the server takes these credentials and lets them create
    # databases, no other restore into this target runs, and this pg_restore reads the archive.
    with postgres.connect(job.admin_conn) as admin:
        postgres.bound_statements(admin, settings.admin_timeout_s)
        postgres.check_can_create(admin, job.conn)
        postgres.lock_target(admin, job.conn.dbname)
        for leftover in postgres.restore_leftovers(admin, job.conn.dbname):
            if problem := postgres.try_drop_database(admin, leftover):
                raise JobFailed(f"cannot drop {leftover}, left by an interrupted restore: {problem}; drop it by hand, then run again")
            log.info("dropped %s, left by an interrupted restore", leftover)
        workdir.sweep(settings.work_dir or Path(tempfile.gettempdir()))
        _check_reader(job.store, job.entry, job.pg_restore)
        checkpoint("restore:checked")
        log.info("restoring %s (%s, %s) into %s as %s", where, job.entry.status, human_size(job.entry.size_bytes),
                 job.conn.describe(), job.fresh)
        with workdir.claim(settings.work_dir) if job.parallel else contextlib.nullcontext(None) as work:
            if work is not None:
                # Verify before touching any database: a damaged download changes nothing.
                path, actual, size = _download(job.store, job.entry, work)
                _check_digest(job.entry, actual, size, where)
                if indexed := archive.fill_offsets(path):
                    log.info("wrote the data offsets of %d tables into the copy, so pg_restore -j seeks to each", indexed)
            like = postgres.database_info(admin, job.conn.dbname)
            try:
                postgres.create_database(admin, job.fresh, like)
                checkpoint("restore:created")
                if work is not None:
                    argv = postgres.pg_restore_argv(job.pg_restore, job.fresh, job.ignore_privileges, job.jobs, path)
                    postgres.run_restore_file(job.conn, argv)
                else:
                    chunks, decompress = _open_dump(job.store, job.entry)
                    counted = _Counter(chunks)
                    actual = postgres.restore_stream(
                        job.conn, postgres.pg_restore_argv(job.pg_restore, job.fresh, job.ignore_privileges, 1, None), counted, decompress
                    )
                    _check_digest(job.entry, actual, counted.size, where)
                checkpoint("restore:loaded")
                if like is not None:
                    postgres.apply_settings(admin, job.fresh, like)
                kept = postgres.swap_in(admin, job.admin_conn, job.conn.dbname, job.fresh, job.previous,
                                        settings.swap_wait_s, swap, checkpoint)
            except BaseException as exc:
                if swap.committed:
                    _after_swap(exc, job.conn.dbname, job.previous if swap.kept_previous else None)
                    raise
                log.error("restore failed; dropping %s, %s is unchanged", job.fresh, job.conn.dbname)
                if problem := postgres.try_drop_database(admin, job.fresh):
                    log.warning("could not drop %s: %s; the next restore into %s drops it", job.fresh, problem, job.conn.dbname)
                raise
            if kept and not job.keep_previous:
                kept = _drop_previous(admin, job.conn.dbname, job.previous)
    return kept, actual


def _checkpoints(settings: Settings) -> postgres.Checkpoint:
    """Named steps where a fault test can hold a run (DB_BACKUP_TEST_PAUSE_AT) to kill it there."""
    wanted = {name for name in (settings.test_pause_at or "").split(",") if name}
    if not wanted:
        return lambda _step: None

    def pause(step: str) -> None:
        if step in wanted:
            log.warning("paused at %s (DB_BACKUP_TEST_PAUSE_AT)", step)
            time.sleep(PAUSE_S)

    return pause


PAUSE_S = 120.0


def _archive_head(store: BackupStore, entry: BackupEntry) -> bytes:
    """The first bytes of the archive inside the stored dump (decompressed if need be)."""
    chunks = store.read(entry.key)
    try:
        head = next(iter(chunks), b"")
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    kind = sniff(head)
    if kind == "gzip":
        return zlib.decompressobj(wbits=47).decompress(head, 64)
    if kind == "zstd":
        command = _decompressor(kind, store.uri(entry.key))
        assert command is not None
        return _first_bytes(command, head)
    return head[:64]


def _first_bytes(command: tuple[str, ...], head: bytes, count: int = 64) -> bytes:
    """The first bytes `command` makes of `head`, a piece of a stream: read no more, then stop it."""
    proc = postgres.compressor_env().spawn(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None

    def feed(sink: IO[bytes]) -> None:
        with contextlib.suppress(OSError):  # stopped once it had written enough
            sink.write(head)
            sink.close()

    feeder = threading.Thread(target=feed, args=(proc.stdin,), daemon=True, name="archive-head")
    feeder.start()
    try:
        return proc.stdout.read(count)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        feeder.join(timeout=30)


def _check_reader(store: BackupStore, entry: BackupEntry, pg_restore: str) -> None:
    """Refuse, before anything is touched, an archive this pg_restore cannot read (pg_dump 16+ needs 16+)."""
    version = archive.header_version(_archive_head(store, entry))
    if version is None:
        return  # not a custom archive: _decompressor and the restore say what it is
    needed = archive.oldest_reader(version)
    have = postgres.tool_version(pg_restore)
    if needed is None or postgres.major(have) < needed:
        newer = f"{needed} or newer" if needed else f"newer than {postgres.major(have)}"
        raise BadInput(
            f"backup {entry.id} is a PostgreSQL archive of format {version[0]}.{version[1]}, which pg_restore {have} "
            f"cannot read; install the PostgreSQL client tools {newer} (e.g. apt-get install postgresql-client-{needed or 'NEW'}) "
            "or set DB_BACKUP_PG_BINDIR to their bin folder"
        )


def _after_swap(exc: BaseException, target: str, previous: str | None) -> None:
    """After the swap committed the target holds the restored data: say so, whatever went wrong."""
    where = f"{target} already holds the restored backup" + (f"; the old data is kept as {previous}" if previous else "")
    if isinstance(exc, KeyboardInterrupt):
        raise Cancelled(f"{cancel_reason(exc)} after the swap: {where}") from exc
    log.error("failed after the swap: %s", where)


def _drop_previous(admin: postgres.AdminConnection, target: str, previous: str) -> bool:
    """keep_previous: false. True if the old data is still there (the restore itself succeeded)."""
    try:
        problem = postgres.try_drop_database(admin, previous)
    except KeyboardInterrupt as exc:
        left = postgres.database_exists(admin, previous)
        if left is None:
            old = f"the old data {previous} may be left; drop it by hand"
        else:
            old = f"the old data is kept as {previous}" if left else "the old data is dropped"
        raise Cancelled(f"{cancel_reason(exc)} after the swap: {target} already holds the restored backup; {old}") from exc
    if problem:
        log.warning("%s holds the restored backup, but dropping the old data %s failed: %s; drop it by hand", target, previous, problem)
        return True
    return False


class _Counter:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.size += len(chunk)
            yield chunk


# --- status -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetStatus:
    target: Target
    newest: BackupEntry | None  # the newest good backup: what `restore --backup latest` would take
    age: timedelta | None
    stale: bool
    damaged: tuple[BackupEntry, ...] = ()  # damaged backups newer than `newest`, passed over


def status(registry: Registry, services: Services, max_age: timedelta, schedule: str = "nightly") -> list[TargetStatus]:
    """Each scheduled target's newest good backup and its age; damaged backups never count as fresh."""
    result = []
    now = services.clock.now()
    for target in registry.scheduled(schedule):
        found = newest_good(services.store(target), target.identifier, target.env)
        age = now - found.entry.created_at if found.entry else None
        result.append(TargetStatus(target, found.entry, age, age is None or age > max_age, found.damaged))
    return result


def new_request_id() -> str:
    return uuid.uuid4().hex
