"""restore --dry-run: what a restore would do, read from the store and the server, with nothing changed."""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime

from .catalog import BackupEntry, resolve_backup
from .credentials import Connection
from .errors import BadInput, JobFailed
from .output import human_size
from .pg.admin import admin_connection, check_can_create, database_exists, derived_name, restore_leftovers
from .pg.roles import GlobalsDoc, missing_roles, parse_globals
from .pg.session import AdminConnection, bound_statements, connect, lock_holder
from .pg.tools import find_tool, tool_version
from .restore import RestorePlan
from .restore_mode import choose_mode
from .services import Services
from .stored_dump import check_reader, read_globals
from .stores import BackupStore
from .words import plural

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """A client session on a database, as pg_stat_activity shows it (never its query)."""

    pid: int
    user: str
    application: str


@dataclass(frozen=True)
class ServerView:
    """What the server says about the target, read without changing anything."""

    exists: bool
    sessions: tuple[Session, ...]
    previous_exists: bool
    previous_sessions: tuple[Session, ...]  # a restore drops the existing previous WITH (FORCE), ending these
    leftovers: tuple[str, ...]
    roles_to_create: tuple[str, ...] | None  # --with-roles only
    lock_holder: str | None  # another restore into the target holds its lock now


@dataclass(frozen=True)
class RestorePreview:
    source: str
    backup_id: str
    status: str
    size_bytes: int
    uncompressed_bytes: int | None
    created_at: datetime
    dest: str
    protected: bool
    database: str | None  # None: targets.yaml names it by a reference only the ECS task resolves
    keep_previous: bool
    executor: str  # where the restore itself would run: local or ecs
    mode: str | None  # None: an ECS task chooses it from its own cores and disk
    with_roles: bool
    roles_note: str | None  # --with-roles on a backup without a roles file
    reader: str | None  # the pg_restore that would run, checked against the archive; None for ecs
    server: ServerView | None  # None for ecs: the task reads the server

    @property
    def previous(self) -> str:
        return derived_name(self.database, "__previous") if self.database else "NAME__previous"

    @property
    def refusal(self) -> str | None:
        """Why a restore started now would be refused, which the dry run can only see on the server."""
        if self.server is None or self.server.lock_holder is None:
            return None
        return (f"another restore into {self.database} is running ({self.server.lock_holder}); "
                "a restore now would be refused; wait for it to finish")


def preview_restore(plan: RestorePlan, services: Services, executor: str) -> RestorePreview:
    """The restore `plan` would do: the same refusals as the restore, but nothing is created, locked or downloaded.

    With executor ecs nothing but the store is read here: the restore resolves the target's credentials
    and reaches its server only inside the task, and so does the task that reads the server's part.
    """
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
    if executor == "ecs":
        assert plan.dest is not None  # --to-url restores run locally
        name = plan.dest.database.name
        database: str | None = None if name.startswith(("ssm:", "env:")) else name
        _refuse_template(database)
        mode, reader, view = None, None, None
    else:
        database, reader, view = _read_here(plan, services, store, entry, doc)
        mode = choose_mode(entry, settings).label
    return RestorePreview(
        source=plan.source.name, backup_id=entry.id, status=entry.status, size_bytes=entry.size_bytes,
        uncompressed_bytes=entry.manifest.uncompressed_bytes if entry.manifest else None, created_at=entry.created_at,
        dest=plan.dest_label, protected=plan.dest.protected if plan.dest else False, database=database,
        keep_previous=plan.dest.keep_previous if plan.dest else True, executor=executor, mode=mode,
        with_roles=plan.with_roles, roles_note=roles_note, reader=reader, server=view,
    )


def _read_here(
    plan: RestorePlan, services: Services, store: BackupStore, entry: BackupEntry, doc: GlobalsDoc | None,
) -> tuple[str, str, ServerView]:
    """The checks a restore run here makes first: credentials, template, pg_restore, the server; changing nothing."""
    conn = services.resolver(plan.dest).resolve(plan.dest.database) if plan.dest else plan.dest_url
    assert conn is not None
    _refuse_template(conn.dbname)
    pg_restore = find_tool("pg_restore")
    check_reader(store, entry, pg_restore)  # reads the archive's first bytes only
    reader = f"pg_restore {tool_version(pg_restore)} ({pg_restore}) reads this backup's archive"
    with connect(admin_connection(conn)) as admin:
        bound_statements(admin, services.settings.admin_timeout_s)
        check_can_create(admin, conn)
        view = _read_server(admin, conn, doc, entry.manifest.roles if entry.manifest else None)
    return conn.dbname, reader, view


def _refuse_template(database: str | None) -> None:
    if database in ("template0", "template1"):
        raise BadInput(f"refusing to restore into {database}; choose another database")


def _read_server(admin: AdminConnection, conn: Connection, doc: GlobalsDoc | None, wanted: tuple[str, ...] | None) -> ServerView:
    target, previous = conn.dbname, derived_name(conn.dbname, "__previous")
    server = conn.describe().rsplit("/", 1)[0]
    exists, previous_exists = _exists(admin, target, server), _exists(admin, previous, server)
    roles = tuple(missing_roles(admin, doc, wanted, server)) if doc is not None else None
    return ServerView(
        exists=exists, sessions=_sessions(admin, target) if exists else (),
        previous_exists=previous_exists, previous_sessions=_sessions(admin, previous) if previous_exists else (),
        leftovers=tuple(restore_leftovers(admin, target)), roles_to_create=roles, lock_holder=lock_holder(admin, target),
    )


def _exists(admin: AdminConnection, name: str, server: str) -> bool:
    found = database_exists(admin, name)
    if found is None:
        # Taken for "does not exist", the plan would promise a new database where one may be replaced.
        raise JobFailed(f"cannot tell whether database {name} exists on {server}: the server did not answer; run again")
    return found


def _sessions(admin: AdminConnection, database: str) -> tuple[Session, ...]:
    rows = admin.execute(
        "SELECT pid, coalesce(usename, '-'), coalesce(nullif(application_name, ''), '-') FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid() AND coalesce(backend_type, 'client backend') = 'client backend' "
        "ORDER BY backend_start", (database,),
    ).fetchall()
    return tuple(Session(int(str(r[0])), str(r[1]), str(r[2])) for r in rows)


def local_command(plan: RestorePlan, backup_id: str, confirm: str | None) -> str:
    """The dry run that reads the server from where it runs: for a machine that reaches the database."""
    assert plan.dest is not None
    argv = ["db-backup", "restore", plan.dest.identifier, "--from", plan.source.env, "--to", plan.dest.env, "--backup", backup_id,
            *(["--confirm", confirm] if confirm else []), *(["--with-roles"] if plan.with_roles else []),
            "--dry-run", "--executor", "local"]
    return shlex.join(argv)


def preview_text(p: RestorePreview) -> str:
    """The lines `restore --dry-run` prints."""
    size = human_size(p.size_bytes) + (f", {human_size(p.uncompressed_bytes)} uncompressed" if p.uncompressed_bytes else "")
    created = p.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    database = f"database {p.database}" if p.database else "its database named in targets.yaml (resolved by the task)"
    lines = [
        "dry run: nothing was changed",
        f"backup:   {p.source} {p.backup_id} ({p.status}, {size}, created {created})",
        f"target:   {p.dest}{' (protected)' if p.protected else ''}, {database}",
    ]
    view = p.server
    if view is None:
        lines.append("server:   read by an ECS task (its output follows), from its network with the credentials only it "
                     "resolves; nothing is read from here")
        lines += _previous_lines(p, None)
    else:
        lines += _server_lines(p, view)
    if p.with_roles:
        if p.roles_note:
            lines.append(f"roles:    {p.roles_note}")
        elif view is not None and view.roles_to_create is not None:
            made = view.roles_to_create
            lines.append(f"roles:    would create {plural(len(made), 'role')}: {', '.join(made)}" if made
                         else "roles:    every role the backup needs exists; none would be created")
    if p.reader:
        lines.append(f"tools:    {p.reader}")
    lines.append(f"mode:     {p.mode}" if p.mode else "mode:     chosen by the ECS task (stream or parallel, from its cores and disk)")
    lines.append("runs:     here" if p.executor == "local" else "runs:     in an ECS task")
    if refusal := p.refusal:
        lines.append(f"refused:  {refusal}")
    return "\n".join(lines)


def _server_lines(p: RestorePreview, view: ServerView) -> list[str]:
    if not view.exists:
        lines = [f"database: {p.database} does not exist; it would be created like the backed-up database"]
    else:
        lines = [f"database: {p.database} exists; its data would be replaced"]
        if view.sessions:
            lines.append(f"sessions: {plural(len(view.sessions), 'session')} would be ended now: {_who(view.sessions)}")
        else:
            lines.append("sessions: none connected now")
    lines += _previous_lines(p, view)
    if view.leftovers:
        lines.append(f"leftover: {', '.join(view.leftovers)}, left by an interrupted restore, would be dropped")
    return lines


def _previous_lines(p: RestorePreview, view: ServerView | None) -> list[str]:
    """What happens to the data replaced and to an older previous; with no view, what targets.yaml says."""
    if view is not None and not view.exists:
        return []  # a new database replaces nothing: an existing previous is left as it is
    dropped = f"; the existing {p.previous} would be dropped first" if view is not None and view.previous_exists else ""
    current = f"the current {p.database}" if p.database else "the current database"
    if p.keep_previous:
        lines = [f"previous: {current} would be kept as {p.previous}{dropped}"]
    else:
        lines = [f"previous: {current} would be dropped after the swap (keep_previous: false){dropped}"]
    if view is not None and view.previous_sessions:
        ended = view.previous_sessions
        lines.append(f"          would end {plural(len(ended), 'session')} on {p.previous} (dropped to make room): {_who(ended)}")
    return lines


def _who(sessions: tuple[Session, ...]) -> str:
    return ", ".join(f"pid {s.pid} {s.application} ({s.user})" for s in sessions)
