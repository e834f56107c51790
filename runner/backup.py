"""One backup: pg_dump straight into storage under a reserved id, then its manifest."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import psycopg

from . import __version__
from .catalog import list_backups, make_id
from .credentials import Connection
from .errors import IdTaken, JobFailed
from .history import RecordIndex
from .manifest import Manifest, globals_key
from .output import human_size
from .pg.dump import DumpPlan, dump_stream, plan_dump
from .pg.globals import Globals, capture_globals
from .pg.session import UploadLocks, pg_message, upload_locks
from .pg.tools import find_tool, major, tool_version
from .progress import Progress
from .services import Services
from .shrink import ShrinkVerdict, describe, judge
from .stores import BackupStore, Upload
from .targets import Target
from .tiering import tier_for_new, tier_tags

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupResult:
    manifest: Manifest
    uri: str
    shrink: ShrinkVerdict | None = None  # this backup's size against the ones before it; None when not judged


MAX_IDS_PER_SECOND = 100
# The database's size only feeds the progress display's ETA: a server slow to answer must not hold up the dump.
SIZE_QUERY_WAIT_S = 3


T = TypeVar("T")


class _Aside(Generic[T]):
    """One call run in a daemon thread; `result()` waits for it and raises what it raised.

    A daemon, not a pool's worker: a cancel returns at once, and the process never waits at exit for a round
    trip that a stalled store never answers (each is bounded by the store's own timeouts anyway)."""

    def __init__(self, call: Callable[[], T]) -> None:
        self._call = call
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="backup-prep")
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as exc:  # handed to the main thread, which raises it
            self._error = exc

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def _reserve_id(
    store: BackupStore, target: Target, now: datetime, locks: UploadLocks, tags: dict[str, str],
) -> tuple[str, str, Upload]:
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
            return backup_id, key, store.start_upload(key, target.storage_class, tags)
        except IdTaken as taken:
            locks.release(store.uri(key))
            log.debug("backup id %s is taken (%s); trying the next", backup_id, taken)
    raise JobFailed(f"all {MAX_IDS_PER_SECOND} backup ids of {make_id(now)} for {target.name} are taken; run again")


def run_backup(target: Target, services: Services, request_id: str | None = None) -> BackupResult:
    """pg_dump straight into storage; the manifest is written only after everything succeeded."""
    store = services.store(target)
    conn = services.resolver(target).resolve(target.database)
    pg_dump = find_tool("pg_dump")
    dump_version = tool_version(pg_dump)
    plan = plan_dump(pg_dump, target.compression, target.lock_wait_timeout)
    # One session for the whole backup: the connection check, the server's version, the upload's lock.
    with upload_locks(conn) as locks:
        server = locks.server_version
        if major(dump_version) < major(server):
            raise JobFailed(
                f"pg_dump {dump_version} cannot dump server {server}; install PostgreSQL client tools {major(server)} or newer"
            )
        now = services.clock.now()
        # Three independent reads of the store, each one or more round trips: side by side, not one after another.
        tiered = _Aside(lambda: tier_for_new(store, target.identifier, target.env, now, target.retention))
        sized = _Aside(lambda: _expected_size(store, target, conn, plan))
        # Here, not aside: it asks the lock session, which a cancel must find free to close at once.
        store.clean_leftovers(target.identifier, target.env, now, locks.abandoned)  # it logs what it removed
        tier, expected = tiered.result(), sized.result()
        tags = tier_tags(tier)  # every object of the backup carries them, so they expire together
        backup_id, key, upload = _reserve_id(store, target, now, locks, tags)
        try:
            log.info("backing up %s (%s, server %s) to %s with %s", target.name, conn.describe(), server, store.uri(key), plan.compression)
            started = services.clock.monotonic()
            digest = hashlib.sha256()
            size = 0
            with Progress.of(services.settings, services.clock).stage(f"backup of {target.name}") as stage:
                read = stage.meter("read", expected, estimate=True) if plan.raw_countable else None
                stored = stage.meter("stored", None if plan.raw_countable else expected, estimate=True)
                with dump_stream(conn, plan, read) as output:
                    for chunk in output:
                        digest.update(chunk)
                        size += len(chunk)
                        stored.add(len(chunk))
                        upload.write(chunk)
            duration_s = round(services.clock.monotonic() - started, 3)  # the dump's own time
            # Before the upload completes: killed while pg_dumpall runs, no dump without its manifest is left
            # behind, only an unfinished upload, which the next backup's cleanup removes.
            # After the dump, not beside it: a role allowed two connections (the lock's and pg_dump's) must still back up.
            captured = capture_globals(conn)
        except BaseException:
            upload.abort()
            raise
        upload.complete()
        extra = _store_globals(store, captured, globals_key(key), tags)
        manifest = Manifest(
            identifier=target.identifier, env=target.env, id=backup_id, key=key,
            created_at=now, duration_s=duration_s,
            size_bytes=size, sha256=digest.hexdigest(), format="custom", compression=plan.compression,
            compressed_by=plan.compressed_by, pg_dump_version=dump_version, server_version=server,
            database=conn.dbname, tool_version=__version__, request_id=request_id, uncompressed_bytes=output.raw_bytes,
            **extra,
        )
        store.put_manifest(manifest, tags)
    log.info("backup %s done: %s in %.1fs, sha256 %s; kept as %s", backup_id, human_size(size), manifest.duration_s, manifest.sha256, tier)
    return BackupResult(manifest, store.uri(key), check_shrink(store, target, backup_id))


def _expected_size(store: BackupStore, target: Target, conn: Connection, plan: DumpPlan) -> int | None:
    """What the progress display's ETA counts towards: the last backup's size (pg_dump's output, or the stored
    bytes when pg_dump compresses), else the database's size on disk (indexes too: a rough upper bound)."""
    try:
        last = next((e.manifest for e in list_backups(store, target.identifier, target.env, limit=1) if e.manifest), None)
    except Exception as exc:  # only the progress display's ETA depends on it
        log.debug("no size estimate from earlier backups: %s", exc)
        last = None
    if last is not None:
        size = last.uncompressed_bytes if plan.raw_countable else last.size_bytes
        if size:
            return size
    if not plan.raw_countable:
        return None
    try:
        # libpq's connect_timeout bounds the connection (its floor is 2 s), statement_timeout the query itself.
        kwargs = {**conn.psycopg_kwargs(), "connect_timeout": SIZE_QUERY_WAIT_S}
        with psycopg.connect(**kwargs, autocommit=True) as db:  # type: ignore[arg-type]
            db.execute("SELECT set_config('statement_timeout', %s, false)", (f"{SIZE_QUERY_WAIT_S}s",))
            row = db.execute("SELECT pg_database_size(current_database())").fetchone()
    except Exception as exc:  # same: a backup without an ETA is still a backup
        log.debug("no size estimate from pg_database_size: %s", pg_message(exc))
        return None
    return row[0] if row and isinstance(row[0], int) and row[0] > 0 else None


def _store_globals(store: BackupStore, captured: Globals, key: str, tags: dict[str, str]) -> dict[str, Any]:
    """Roles, memberships and role settings beside the dump, before the manifest; the manifest fields that describe them.

    pg_dumpall failing is a warning noted in the manifest; the upload failing fails the backup, as the dump's would.
    """
    fields: dict[str, Any] = {"globals_missing": captured.missing, "roles": captured.roles}
    if captured.text is not None:
        data = captured.text.encode()
        store.put_text(key, captured.text, tags)
        fields.update(globals_sha256=hashlib.sha256(data).hexdigest(), globals_bytes=len(data))
        log.info("stored the roles and globals as %s (%s)", store.uri(key), human_size(len(data)))
    if captured.missing:
        log.warning("backup goes on without part of the roles and globals: %s", captured.missing)
    return fields


def check_shrink(store: BackupStore, target: Target, backup_id: str) -> ShrinkVerdict | None:
    """The shrink alarm on a backup just written (here or by an ECS task): a warning, never a failure."""
    if not target.shrink_alarm.enabled:
        return None
    try:
        entries = list_backups(store, target.identifier, target.env, limit=target.shrink_alarm.scan)
        position = next((i for i, e in enumerate(entries) if e.id == backup_id), None)
        if position is None:
            return None
        acks = RecordIndex.of(store, target.identifier, target.env)
        verdict = judge(entries[position], entries[position + 1:], target.shrink_alarm, acks.acknowledged)
    except Exception as exc:  # advice about a finished backup must never turn it into a failure
        log.warning("shrink check of backup %s skipped: %s", backup_id, exc)
        return None
    if verdict.shrunk:
        log.warning("shrink alarm: %s", describe(verdict, target.name))
    return verdict
