"""One rollback: the database a restore replaced (`NAME__previous`) takes the target's name back, and the
one it replaces becomes `NAME__previous`, so a second rollback undoes the first."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from psycopg import sql

from .errors import BadInput, Cancelled, RestoreRefused, cancel_reason
from .pg.admin import admin_connection, derived_name
from .pg.dbstate import database_info
from .pg.session import AdminConnection, bound_statements, connect, lock_target
from .pg.swap import SwapState, swap_back
from .restore import checkpoints
from .services import Services
from .targets import Registry, Target
from .words import sessions_ended

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RollbackPlan:
    """A checked rollback request: nothing has been touched yet."""

    target: Target


def plan_rollback(registry: Registry, identifier: str, env: str, confirm: str | None) -> RollbackPlan:
    """The refusal rules of a restore (the target exists, a protected one is named), before any side effect."""
    target = registry.get(identifier, env)
    if target.protected and confirm != target.env:
        raise RestoreRefused(
            f"{target.name} is protected; add --confirm {target.env} to swap its previous database back in "
            "(in GitHub, the environment's approval does this)"
        )
    return RollbackPlan(target)


@dataclass(frozen=True)
class RollbackResult:
    target: str  # the target's name, `app/beta`
    database: str  # the database that now holds the data kept before
    previous: str  # where the data it replaced is kept now
    sessions_ended: int
    duration_s: float


def run_rollback(plan: RollbackPlan, services: Services) -> RollbackResult:
    """Swap `NAME__previous` and `NAME` in one transaction, after ending the sessions on both (a bounded wait)."""
    settings = services.settings
    checkpoint = checkpoints(settings)
    conn = services.resolver(plan.target).resolve(plan.target.database)
    database = conn.dbname
    if database in ("template0", "template1"):
        raise BadInput(f"refusing to roll back {database}: a template database is no target; choose another database")
    previous = derived_name(database, "__previous")
    admin_conn = admin_connection(conn)
    server = conn.describe().rsplit("/", 1)[0]
    started = services.clock.monotonic()
    swap = SwapState()
    try:
        with connect(admin_conn) as admin:
            bound_statements(admin, settings.admin_timeout_s)
            lock_target(admin, database)  # no restore into this target runs meanwhile (it would drop __previous)
            if database_info(admin, previous) is None:
                raise RestoreRefused(
                    f"nothing to roll back: there is no {previous} on {server} (a restore keeps the database it replaces under that "
                    f"name unless keep_previous is false); restore a backup instead: "
                    f"db-backup restore {plan.target.identifier} --from ENV --to {plan.target.env}"
                )
            if database_info(admin, database) is None:
                statement = sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(previous), sql.Identifier(database))
                raise RestoreRefused(
                    f"{database} does not exist on {server}, so there is nothing to swap {previous} with; to make {previous} "
                    f"the target again, run {statement.as_string(admin)} on the server, or restore a backup into {plan.target.name}"
                )
            _check_can_rename(admin, conn.user, server, database, previous)
            if not plan.target.keep_previous:
                # A rollback is an undo: the data it replaces stays, so it can be undone in turn.
                log.warning("%s has keep_previous: false, but a rollback keeps the data it replaces as %s, so that a second "
                            "rollback undoes it; drop %s by hand once it is no longer needed", plan.target.name, previous, previous)
            checkpoint("rollback:checked")
            swap_back(admin, admin_conn, database, previous, settings.swap_wait_s, swap, checkpoint)
    except KeyboardInterrupt as exc:
        if swap.committed:
            raise Cancelled(f"{cancel_reason(exc)} after the swap: {database} already holds the data kept as {previous}, "
                            f"and the data it replaced is kept as {previous}") from exc
        if swap.unknown is not None:
            raise Cancelled(f"{cancel_reason(exc)} during the swap; {swap.unknown}") from exc
        raise
    duration = round(services.clock.monotonic() - started, 3)
    log.info("rolled back %s in %.1fs", conn.describe(), duration)
    return RollbackResult(plan.target.name, database, previous, swap.sessions_ended, duration)


def _check_can_rename(admin: AdminConnection, user: str, server: str, *names: str) -> None:
    """Renaming a database takes CREATEDB and owning it (a superuser may anyway): say so before any session is ended."""
    row = admin.execute("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()
    if not (row and row[0]):
        raise RestoreRefused(
            f"{user} may not create databases on {server}, and renaming one takes that right; grant it "
            f"(ALTER ROLE {user} CREATEDB) or roll back as a user who may"
        )
    foreign = [str(r[0]) for r in admin.execute(
        "SELECT datname FROM pg_database WHERE datname = ANY(%s) AND NOT pg_has_role(datdba, 'USAGE') ORDER BY datname",
        (list(names),),
    ).fetchall()]
    if foreign:
        raise RestoreRefused(
            f"{user} does not own {' and '.join(foreign)} on {server}, and only a database's owner may rename it; "
            "roll back as the owner (or a member of its role)"
        )


def rollback_line(result: RollbackResult) -> str:
    return (f"rolled back {result.target}: {result.database} now holds the data that was kept as {result.previous}, and the data "
            f"it replaced is kept as {result.previous} ({result.duration_s:.1f}s, {sessions_ended(result.sessions_ended)}); "
            "roll back again to undo")
