"""restore --dry-run: what a restore would do, read from the store and the server, with nothing changed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from .catalog import resolve_backup
from .errors import BadInput, JobFailed
from .output import human_size
from .pg.admin import admin_connection, check_can_create, database_exists, derived_name, restore_leftovers
from .pg.roles import GlobalsDoc, missing_roles, parse_globals
from .pg.session import AdminConnection, bound_statements, connect
from .restore import RestorePlan
from .restore_mode import choose_mode
from .services import Services
from .stored_dump import read_globals
from .words import plural

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """A client session on the target, as pg_stat_activity shows it (never its query)."""

    pid: int
    user: str
    application: str


@dataclass(frozen=True)
class ServerView:
    """What the server says about the target, read without changing anything."""

    exists: bool
    sessions: tuple[Session, ...]
    previous_exists: bool
    leftovers: tuple[str, ...]
    roles_to_create: tuple[str, ...] | None  # --with-roles only


@dataclass(frozen=True)
class RestorePreview:
    source: str
    backup_id: str
    status: str
    size_bytes: int
    uncompressed_bytes: int | None
    created_at: datetime
    dest: str
    database: str
    previous: str
    keep_previous: bool
    executor: str  # where the restore itself would run: local or ecs
    mode: str | None  # None: an ECS task chooses it from its own cores and disk
    with_roles: bool
    roles_note: str | None  # --with-roles on a backup without a roles file
    server: ServerView | None
    unreachable: str | None  # why the server could not be read from here


def preview_restore(plan: RestorePlan, services: Services, executor: str) -> RestorePreview:
    """The restore `plan` would do: the same refusals as the restore, but nothing is created, locked or downloaded."""
    settings = services.settings
    store = services.store(plan.source)
    entry = resolve_backup(store, plan.source.identifier, plan.source.env, plan.backup)
    doc: GlobalsDoc | None = None
    roles_note = None
    if plan.with_roles:
        text = read_globals(store, entry)  # the small roles file, checked against the manifest; never the dump
        doc = parse_globals(text) if text is not None else None
        if doc is None:
            roles_note = "the backup has no roles file; no role would be created"
    conn = services.resolver(plan.dest).resolve(plan.dest.database) if plan.dest else plan.dest_url
    assert conn is not None
    if conn.dbname in ("template0", "template1"):
        raise BadInput(f"refusing to restore into {conn.dbname}; choose another database")
    view, unreachable = None, None
    try:
        with connect(admin_connection(conn)) as admin:
            bound_statements(admin, settings.admin_timeout_s)
            check_can_create(admin, conn)
            view = _read_server(admin, conn.dbname, derived_name(conn.dbname, "__previous"), doc,
                                entry.manifest.roles if entry.manifest else None, conn.describe().rsplit("/", 1)[0])
    except JobFailed as exc:
        if executor != "ecs":
            raise  # the restore would fail here just the same
        # The database may be reachable only from the task's network: say so, and show the rest.
        unreachable = str(exc)
    return RestorePreview(
        source=plan.source.name, backup_id=entry.id, status=entry.status, size_bytes=entry.size_bytes,
        uncompressed_bytes=entry.manifest.uncompressed_bytes if entry.manifest else None, created_at=entry.created_at,
        dest=plan.dest_label, database=conn.dbname, previous=derived_name(conn.dbname, "__previous"),
        keep_previous=plan.dest.keep_previous if plan.dest else True, executor=executor,
        mode=choose_mode(entry, settings).label if executor == "local" else None,
        with_roles=plan.with_roles, roles_note=roles_note, server=view, unreachable=unreachable,
    )


def _read_server(
    admin: AdminConnection, target: str, previous: str, doc: GlobalsDoc | None, wanted: tuple[str, ...] | None,
    server: str,
) -> ServerView:
    rows = admin.execute(
        "SELECT pid, coalesce(usename, '-'), coalesce(nullif(application_name, ''), '-') FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid() AND coalesce(backend_type, 'client backend') = 'client backend' "
        "ORDER BY backend_start", (target,),
    ).fetchall()
    sessions = tuple(Session(int(str(r[0])), str(r[1]), str(r[2])) for r in rows)
    roles = tuple(missing_roles(admin, doc, wanted, server)) if doc is not None else None
    return ServerView(
        exists=bool(database_exists(admin, target)), sessions=sessions, previous_exists=bool(database_exists(admin, previous)),
        leftovers=tuple(restore_leftovers(admin, target)), roles_to_create=roles,
    )


def preview_text(p: RestorePreview) -> str:
    """The lines `restore --dry-run` prints."""
    size = human_size(p.size_bytes) + (f", {human_size(p.uncompressed_bytes)} uncompressed" if p.uncompressed_bytes else "")
    created = p.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        "dry run: nothing was changed",
        f"backup:   {p.source} {p.backup_id} ({p.status}, {size}, created {created})",
        f"target:   {p.dest}, database {p.database}",
    ]
    view = p.server
    if view is None:
        lines.append(f"server:   not reachable from here ({p.unreachable}); an ECS task may reach it from its own network; "
                     "the target's sessions and databases are not shown")
    else:
        lines += _server_lines(p, view)
    if p.with_roles:
        if p.roles_note:
            lines.append(f"roles:    {p.roles_note}")
        elif view is not None and view.roles_to_create is not None:
            made = view.roles_to_create
            lines.append(f"roles:    would create {plural(len(made), 'role')}: {', '.join(made)}" if made
                         else "roles:    every role the backup needs exists; none would be created")
    lines.append(f"mode:     {p.mode}" if p.mode else "mode:     chosen by the ECS task (stream or parallel, from its cores and disk)")
    lines.append("runs:     here" if p.executor == "local"
                 else "runs:     in an ECS task (this dry run ran here)")
    return "\n".join(lines)


def _server_lines(p: RestorePreview, view: ServerView) -> list[str]:
    if not view.exists:
        return [f"database: {p.database} does not exist; it would be created like the backed-up database"]
    lines = [f"database: {p.database} exists; its data would be replaced"]
    if view.sessions:
        who = ", ".join(f"pid {s.pid} {s.application} ({s.user})" for s in view.sessions)
        lines.append(f"sessions: {plural(len(view.sessions), 'session')} would be ended now: {who}")
    else:
        lines.append("sessions: none connected now")
    dropped = f"; the existing {p.previous} would be dropped first" if view.previous_exists else ""
    if p.keep_previous:
        lines.append(f"previous: the current {p.database} would be kept as {p.previous}{dropped}")
    else:
        lines.append(f"previous: the current {p.database} would be dropped after the swap (keep_previous: false){dropped}")
    if view.leftovers:
        lines.append(f"leftover: {', '.join(view.leftovers)}, left by an interrupted restore, would be dropped")
    return lines
