"""A restore drill: restore a backup where no environment lives, check what arrived, and record it.

The server is a throwaway cluster of the drill's own (or a server named with --to-url, into a
`drill_*` database of this run's, marked as such and dropped afterwards); the restore is the real
one (`restore.run_restore`), creating the backup's roles first in a throwaway cluster when the
backup has a globals file. Then: pg_restore reported no error, every table of the archive exists,
each table holds the rows its data block held, and the extensions the dump needs are available. The result goes beside the backup
as a DrillRecord.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime

import psycopg
from psycopg import sql

from . import __version__
from .archive_rows import Contents, stored_contents
from .catalog import BackupEntry, resolve_backup
from .credentials import Connection
from .errors import ArchiveLayoutUnknown, BadInput, JobFailed
from .pg.admin import admin_connection, database_exists, derived_name, try_drop_database
from .pg.cluster import throwaway_cluster
from .pg.session import connect, pg_message, server_version
from .pg.tools import find_tool
from .records import DrillRecord, put_record
from .restore import RestorePlan, run_restore
from .services import Services
from .signals import deferred_signals
from .stored_dump import check_reader
from .targets import Target
from .tiering import after_failed_check
from .words import plural

log = logging.getLogger(__name__)

DRILL_PREFIX = "drill_"
DRILL_MARK = "db-backup drill "  # the comment on a database a drill made, then its run id
_MAINTENANCE = ("postgres", "template1")


@dataclass(frozen=True)
class DrillPlan:
    source: Target
    backup: str  # `latest` or an id
    to_url: Connection | None = None  # a server of the operator's instead of a throwaway cluster


@dataclass(frozen=True)
class DrillOutcome:
    record: DrillRecord
    record_uri: str


@dataclass(frozen=True)
class _Server:
    conn: Connection  # the drill database on it
    label: str
    mark: str | None = None  # --to-url: the comment that proves this run made the drill database
    throwaway: bool = False  # a cluster of the drill's own, gone afterwards: roles may be created on it


def run_drill(plan: DrillPlan, services: Services) -> DrillOutcome:
    """Restore the backup into a throwaway place, check it, and write the DrillRecord beside it."""
    store = services.store(plan.source)
    entry = resolve_backup(store, plan.source.identifier, plan.source.env, plan.backup)
    checked_at = services.clock.now()
    check_reader(store, entry, find_tool("pg_restore"))  # a format no pg_restore here reads: exit 2, no record
    started = services.clock.monotonic()
    try:
        contents = stored_contents(store, entry)
        log.info("read %s through in %.1fs: %d tables, %d rows, extensions: %s", store.uri(entry.key),
                 services.clock.monotonic() - started, len(contents.tables), sum(contents.row_counts().values()),
                 ", ".join(contents.extensions) or "none")
    except ArchiveLayoutUnknown as exc:  # says nothing about the backup: db-backup cannot read this layout
        raise BadInput(f"backup {entry.id} cannot be drilled: {exc}; restore it to check it") from exc
    except JobFailed as exc:
        record = DrillRecord(backup_id=entry.id, checked_at=checked_at, ok=False, problem=f"the archive cannot be read: {exc}",
                             restore_duration_s=0.0, server="none (not restored)", tool_version=__version__)
    else:
        with _server(plan, entry, services) as server:
            record = _drill(plan, entry, contents, server, services, checked_at)
    key = put_record(store, entry.key, record)
    log.info("drill of %s %s: %s; recorded in %s", plan.source.name, entry.id, "passed" if record.ok else record.problem,
             store.uri(key))
    if not record.ok:
        after_failed_check(store, plan.source.identifier, plan.source.env, entry)
    return DrillOutcome(record, store.uri(key))


@contextlib.contextmanager
def _server(plan: DrillPlan, entry: BackupEntry, services: Services) -> Iterator[_Server]:
    name = f"{DRILL_PREFIX}{entry.id}"
    if plan.to_url is None:
        password = secrets.token_urlsafe(24)
        services.on_secret(password)
        started = services.clock.monotonic()
        with throwaway_cluster(password, parent=services.settings.work_dir) as cluster:
            log.info("started a throwaway PostgreSQL cluster on 127.0.0.1:%d in %.1fs (%s)", cluster.port,
                     services.clock.monotonic() - started, cluster.bindir)
            yield _Server(cluster.connection(name), "throwaway cluster", throwaway=True)
        return
    url = plan.to_url
    run_id = secrets.token_hex(4)
    # A name of this run's own: two drills of one backup on one server never meet.
    name = derived_name(url.dbname if url.dbname.startswith(DRILL_PREFIX) else name, f"_{run_id}")
    conn = url.with_db(name)
    with connect(admin_connection(conn)) as admin:
        if url.dbname not in _MAINTENANCE and database_exists(admin, url.dbname) and not _is_drill_database(admin, url.dbname):
            raise BadInput(f"{url.describe()} is an existing database, and a drill never touches one; name the server's "
                           f"maintenance database (…/postgres), and the drill restores into a database of its own and drops it")
    mark = f"{DRILL_MARK}{run_id}"
    try:
        yield _Server(conn, url.with_db("postgres").describe().rsplit("/", 1)[0], mark)
    finally:
        with deferred_signals():  # a second cancel must not leave the restored copy behind
            _drop_marked(conn, mark)


def _with_roles(entry: BackupEntry, server: _Server) -> bool:
    """Create the backup's roles first (as `restore --with-roles`), so objects owned by or granted to them restore.

    Only in a throwaway cluster: roles outlive a database, and a server of the operator's keeps its own.
    """
    return server.throwaway and entry.manifest is not None and entry.manifest.globals_sha256 is not None


def _mark_database(server: _Server) -> None:
    """Mark the drill database the restore left (if any) as this run's, so that only this run drops it."""
    if server.mark is None:
        return
    name = server.conn.dbname
    try:
        with connect(admin_connection(server.conn)) as admin:
            if database_exists(admin, name):
                admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(server.mark)))
    except (JobFailed, psycopg.Error) as exc:  # then it is left, with a warning: the drill's outcome stands
        problem = pg_message(exc) if isinstance(exc, psycopg.Error) else str(exc)
        log.warning("could not mark the drill database %s as this drill's: %s", name, problem)


def _comment(admin: psycopg.Connection[tuple[object, ...]], name: str) -> str | None:
    row = admin.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return str(row[0]) if row and row[0] is not None else None


def _is_drill_database(admin: psycopg.Connection[tuple[object, ...]], name: str) -> bool:
    return (_comment(admin, name) or "").startswith(DRILL_MARK)


def _drop_marked(conn: Connection, mark: str) -> None:
    """Drop the drill database if it carries this run's mark; one without it is not this run's to drop."""
    name = conn.dbname
    try:
        with connect(admin_connection(conn)) as admin:
            if not database_exists(admin, name):
                return
            if _comment(admin, name) != mark:
                log.warning("the drill database %s is not marked as this drill's (%s), so it is left; drop it by hand", name, mark)
                return
            if problem := try_drop_database(admin, name):
                log.warning("could not drop the drill database %s: %s; drop it by hand", name, problem)
    except (JobFailed, psycopg.Error) as exc:  # the drill's own outcome matters more than its cleanup
        problem = pg_message(exc) if isinstance(exc, psycopg.Error) else str(exc)
        log.warning("could not drop the drill database %s: %s; drop it by hand", name, problem)


def _drill(plan: DrillPlan, entry: BackupEntry, contents: Contents, server: _Server, services: Services,
           checked_at: datetime) -> DrillRecord:
    expected = contents.row_counts()
    with connect(admin_connection(server.conn)) as admin:
        version = server_version(admin)
        available = _available_extensions(admin)
    missing_ext = tuple(e for e in contents.extensions if e not in available)
    label = f"{server.label} (PostgreSQL {version})"
    base = DrillRecord(backup_id=entry.id, checked_at=checked_at, ok=False, problem=None, restore_duration_s=0.0,
                       server=label, tables=expected, missing_extensions=missing_ext, tool_version=__version__)
    started = services.clock.monotonic()
    try:
        restored = run_restore(RestorePlan(plan.source, entry.id, None, server.conn, _with_roles(entry, server)), services)
    except JobFailed as exc:
        elapsed = round(services.clock.monotonic() - started, 3)
        need = f"the server lacks the extension{'s' if len(missing_ext) != 1 else ''} {', '.join(missing_ext)}; " if missing_ext else ""
        return _with(base, problem=f"{need}the restore failed: {exc}", restore_duration_s=elapsed)
    finally:
        _mark_database(server)  # the name is this run's own, so whatever the restore left under it is too
    try:
        with connect(server.conn) as db:
            present = {f"{r[0]}.{r[1]}" for r in db.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p')").fetchall()}
            counts = {name: _count(db, name, contents) for name in expected if name in present}
            size_row = db.execute("SELECT pg_database_size(current_database())").fetchone()
    except (JobFailed, psycopg.Error) as exc:
        problem = pg_message(exc) if isinstance(exc, psycopg.Error) else str(exc)
        return _with(base, problem=f"checking the restored database failed: {problem}", restore_duration_s=restored.duration_s)
    record = _with(base, restore_duration_s=restored.duration_s, restored_tables=counts,
                   database_bytes=int(str(size_row[0])) if size_row else None)
    problems = []
    if missing_ext:
        problems.append(f"the server lacks the extension{'s' if len(missing_ext) != 1 else ''} {', '.join(missing_ext)}")
    if absent := [t for t in contents.tables if t not in present]:
        verb = "is" if len(absent) == 1 else "are"
        problems.append(f"{plural(len(absent), 'table')} of the archive {verb} missing after the restore: {', '.join(absent[:5])}")
    wrong = [f"{t} has {plural(counts[t], 'row')}, the dump held {n}" for t, n in expected.items()
             if t in counts and _differs(t, counts[t], n, contents)]
    if wrong:
        problems.append(f"row counts differ: {'; '.join(wrong[:5])}")
    return _with(record, ok=not problems, problem="; ".join(problems) or None)


def _differs(table: str, restored: int, dumped: int, contents: Contents) -> bool:
    # An extension's configuration table (data but no table of its own in the archive) is created
    # by the extension with rows of its own; the dump holds only the rows added to them.
    return restored != dumped if table in contents.tables else restored < dumped


def _available_extensions(db: psycopg.Connection[tuple[object, ...]]) -> set[str]:
    return {str(r[0]) for r in db.execute("SELECT name FROM pg_available_extensions").fetchall()}


def _count(db: psycopg.Connection[tuple[object, ...]], name: str, contents: Contents) -> int:
    data = next(d for d in contents.data if d.name == name)
    try:
        # ONLY: an inheritance parent's own rows, as its data block holds them.
        row = db.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(data.schema, data.table))).fetchone()
    except psycopg.Error as exc:
        raise JobFailed(f"counting the rows of {name} in the drill database failed: {pg_message(exc)}") from exc
    return int(str(row[0])) if row else 0


def _with(record: DrillRecord, **changes: object) -> DrillRecord:
    return replace(record, **changes)  # type: ignore[arg-type]


def summary_line(source: Target, outcome: DrillOutcome) -> str:
    """The one line a drill prints."""
    r = outcome.record
    rows = sum(r.restored_tables.values())
    if r.ok:
        return (f"drill of {source.name} {r.backup_id} passed: restored in {r.restore_duration_s:.1f}s into a {r.server}, "
                f"{plural(len(r.restored_tables), 'table')}, {plural(rows, 'row')} as dumped; recorded in {outcome.record_uri}")
    return f"drill of {source.name} {r.backup_id} FAILED: {r.problem}; recorded in {outcome.record_uri}"
