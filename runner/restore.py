"""One restore: refuse what is not allowed, load into a fresh database, verify, and swap it in."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import archive, workdir
from .catalog import BackupEntry, resolve_backup
from .credentials import Connection
from .errors import BadInput, Cancelled, JobFailed, RestoreRefused, cancel_reason
from .output import human_size
from .pg.admin import (
    admin_connection,
    check_can_create,
    create_database,
    database_exists,
    derived_name,
    fresh_name,
    restore_leftovers,
    try_drop_database,
)
from .pg.dbstate import apply_settings, database_info
from .pg.restore_proc import pg_restore_argv, restore_stream, run_restore_file
from .pg.roles import GlobalsDoc, create_roles, missing_roles, parse_globals
from .pg.session import AdminConnection, bound_statements, bulk_load_settings, connect, lock_target
from .pg.swap import Checkpoint, SwapState, swap_in
from .pg.tools import find_tool
from .progress import Progress
from .restore_mode import Mode, choose_mode
from .services import Services
from .settings import Settings
from .stored_dump import Counted, check_digest, check_reader, database_shape, download, open_dump, read_globals
from .stores import BackupStore
from .targets import Registry, Target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestorePlan:
    """A checked restore request: nothing has been touched yet."""

    source: Target
    backup: str
    dest: Target | None
    dest_url: Connection | None
    with_roles: bool = False  # create the missing roles the backup's globals file describes

    @property
    def dest_label(self) -> str:
        if self.dest is not None:
            return self.dest.name
        assert self.dest_url is not None
        return self.dest_url.describe()


def plan_restore(
    registry: Registry, identifier: str, source_env: str, to_env: str | None, to_url: Connection | None,
    backup_id: str, confirm: str | None, with_roles: bool = False,
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
    return RestorePlan(source, backup_id, dest, to_url, with_roles)


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
    sessions_ended: int = 0  # client sessions the swap ended: on the target, and on the older __previous it dropped


def run_restore(plan: RestorePlan, services: Services) -> RestoreResult:
    """Restore into a fresh database, verify, then swap it in; the target is never left broken."""
    settings = services.settings
    checkpoint = checkpoints(settings)
    store = services.store(plan.source)
    entry = resolve_backup(store, plan.source.identifier, plan.source.env, plan.backup)
    roles = _roles_of(store, entry) if plan.with_roles else None  # a tampered file stops the restore here
    conn = services.resolver(plan.dest).resolve(plan.dest.database) if plan.dest else plan.dest_url
    assert conn is not None
    if conn.dbname in ("template0", "template1"):
        raise BadInput(f"refusing to restore into {conn.dbname}; choose another database")
    keep_previous = plan.dest.keep_previous if plan.dest else True
    ignore_privileges = plan.dest.ignore_privileges if plan.dest else plan.source.ignore_privileges
    fresh = fresh_name(conn.dbname, entry.id)
    previous = derived_name(conn.dbname, "__previous")
    pg_restore = find_tool("pg_restore")
    mode = choose_mode(entry, settings)
    started = services.clock.monotonic()
    admin_conn = admin_connection(conn)
    swap = SwapState()
    try:
        job = _RestoreJob(store, entry, conn, admin_conn, fresh, previous, pg_restore, mode, ignore_privileges, keep_previous,
                          roles, Progress.of(settings, services.clock))
        kept, actual = _restore_and_swap(job, settings, swap, checkpoint)
    except KeyboardInterrupt as exc:
        if swap.committed:  # e.g. while the work folder's copy was being removed
            _after_swap(exc, conn.dbname, previous if swap.kept_previous else None)
        if swap.unknown is not None:  # a second cancel while the fresh database was being dropped
            raise Cancelled(f"{cancel_reason(exc)} during the swap; {swap.unknown}") from exc
        raise
    duration = round(services.clock.monotonic() - started, 3)
    log.info("restored %s into %s in %.1fs%s", entry.id, conn.describe(), duration, f"; previous kept as {previous}" if kept else "")
    return RestoreResult(
        source=plan.source.name, backup_id=entry.id, dest=plan.dest_label, database=conn.dbname,
        previous=previous if kept else None, duration_s=duration, size_bytes=entry.size_bytes,
        sha256=actual, verified=entry.manifest is not None, mode=mode.label,
        sessions_ended=swap.sessions_ended,
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
    mode: Mode
    ignore_privileges: bool
    keep_previous: bool
    roles: GlobalsDoc | None = None  # --with-roles: the backup's roles, checked against its manifest
    progress: Progress | None = None  # shows the download and pg_restore as they go


def _restore_and_swap(
    job: _RestoreJob, settings: Settings, swap: SwapState, checkpoint: Checkpoint,
) -> tuple[bool, str]:
    """Checks, load into the fresh database, swap: whether the old data was kept, and the sha256 read."""
    where = job.store.uri(job.entry.key)
    # Checked before a byte is downloaded: the server takes these credentials and lets them create
    # databases, no other restore into this target runs, and this pg_restore reads the archive.
    with connect(job.admin_conn) as admin:
        bound_statements(admin, settings.admin_timeout_s)
        check_can_create(admin, job.conn)
        lock_target(admin, job.conn.dbname)
        server = job.conn.describe().rsplit("/", 1)[0]
        wanted = job.entry.manifest.roles if job.entry.manifest else None
        missing = missing_roles(admin, job.roles, wanted, server) if job.roles is not None else []
        if job.roles is not None and missing:
            # First, so a refusal comes before any download or database; kept whatever happens next:
            # a role that owns nothing is harmless, and the next restore finds it complete.
            create_roles(admin, job.roles, missing, server)
        for leftover in restore_leftovers(admin, job.conn.dbname):
            if problem := try_drop_database(admin, leftover):
                raise JobFailed(f"cannot drop {leftover}, left by an interrupted restore: {problem}; drop it by hand, then run again")
            log.info("dropped %s, left by an interrupted restore", leftover)
        workdir.sweep(settings.work_dir or Path(tempfile.gettempdir()))
        head = check_reader(job.store, job.entry, job.pg_restore)
        session = bulk_load_settings(admin, settings.restore_maintenance_mb)
        checkpoint("restore:checked")
        log.info("restoring %s (%s, %s) into %s as %s", where, job.entry.status, human_size(job.entry.size_bytes),
                 job.conn.describe(), job.fresh)
        with workdir.claim(settings.work_dir) if job.mode.parallel else contextlib.nullcontext(None) as work:
            if work is not None:
                # Verify before touching any database: a damaged download changes nothing.
                copy = download(job.store, job.entry, work, job.progress)
                path, actual = copy.path, copy.sha256
                check_digest(job.entry, actual, copy.size, where)
                if indexed := archive.fill_offsets(path, copy.blocks):
                    log.info("wrote the data offsets of %d tables into the copy, so pg_restore -j seeks to each", indexed)
            like = database_info(admin, job.conn.dbname)
            # A new target is created as pg_restore --create would: the backed-up database's encoding and locale.
            shape = database_shape(job.store, job.entry, head) if like is None else None
            try:
                create_database(admin, job.fresh, like, shape)
                checkpoint("restore:created")
                if work is not None:
                    argv = pg_restore_argv(job.pg_restore, job.fresh, job.ignore_privileges, job.mode.jobs, path)
                    run_restore_file(job.conn, argv, job.progress, session)
                else:
                    chunks, decompress = open_dump(job.store, job.entry)
                    counted = Counted(chunks)
                    actual = restore_stream(
                        job.conn, pg_restore_argv(job.pg_restore, job.fresh, job.ignore_privileges, 1, None), counted, decompress,
                        job.progress, job.entry.size_bytes, session,
                    )
                    check_digest(job.entry, actual, counted.size, where)
                checkpoint("restore:loaded")
                if like is not None:
                    apply_settings(admin, job.fresh, like)
                kept = swap_in(admin, job.admin_conn, job.conn.dbname, job.fresh, job.previous,
                                        settings.swap_wait_s, swap, checkpoint)
            except BaseException as exc:
                if swap.committed:
                    _after_swap(exc, job.conn.dbname, job.previous if swap.kept_previous else None)
                    raise
                if swap.unknown is None:
                    log.error("restore failed; dropping %s, %s is unchanged", job.fresh, job.conn.dbname)
                else:  # by its name: a swap that went through took that name away with the database
                    log.error("restore failed; dropping %s if it still has that name", job.fresh)
                if problem := try_drop_database(admin, job.fresh):
                    log.warning("could not drop %s: %s; the next restore into %s drops it", job.fresh, problem, job.conn.dbname)
                if swap.unknown is not None and isinstance(exc, KeyboardInterrupt):
                    raise Cancelled(f"{cancel_reason(exc)} during the swap; {swap.unknown}") from exc
                raise
            if kept and not job.keep_previous:
                kept = _drop_previous(admin, job.conn.dbname, job.previous)
    return kept, actual


def _roles_of(store: BackupStore, entry: BackupEntry) -> GlobalsDoc | None:
    """--with-roles: the roles the backup's globals file describes (its sha256 checked), or None with a warning."""
    text = read_globals(store, entry)
    if text is None:
        why = (entry.manifest.globals_missing if entry.manifest else None) or "it was taken before db-backup stored roles"
        log.warning("backup %s has no roles and globals file (%s); --with-roles creates no roles", entry.id, why)
        return None
    return parse_globals(text)


def checkpoints(settings: Settings) -> Checkpoint:
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


def _after_swap(exc: BaseException, target: str, previous: str | None) -> None:
    """After the swap committed the target holds the restored data: say so, whatever went wrong."""
    where = f"{target} already holds the restored backup" + (f"; the old data is kept as {previous}" if previous else "")
    if isinstance(exc, KeyboardInterrupt):
        raise Cancelled(f"{cancel_reason(exc)} after the swap: {where}") from exc
    log.error("failed after the swap: %s", where)


def _drop_previous(admin: AdminConnection, target: str, previous: str) -> bool:
    """keep_previous: false. True if the old data is still there (the restore itself succeeded)."""
    try:
        problem = try_drop_database(admin, previous)
    except KeyboardInterrupt as exc:
        left = database_exists(admin, previous)
        if left is None:
            old = f"the old data {previous} may be left; drop it by hand"
        else:
            old = f"the old data is kept as {previous}" if left else "the old data is dropped"
        raise Cancelled(f"{cancel_reason(exc)} after the swap: {target} already holds the restored backup; {old}") from exc
    if problem:
        log.warning("%s holds the restored backup, but dropping the old data %s failed: %s; drop it by hand", target, previous, problem)
        return True
    return False
