"""The swap: the restored database (for a rollback, the previous one) takes the target's name in one transaction,
or nothing changes."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..credentials import Connection
from ..errors import JobFailed
from .admin import derived_name, drop_database
from .dbstate import database_info
from .session import AdminConnection, connect, pg_message

log = logging.getLogger(__name__)


@dataclass
class SwapState:
    """Whether the swap has committed: from then on the target holds the restored data, and a
    failure or cancel must not claim otherwise (nor drop the fresh database, which is the target)."""

    committed: bool = False
    kept_previous: bool = False
    sessions_ended: int = 0  # sessions on the databases renamed that the swap ended, committed or not


Checkpoint = Callable[[str], None]


def _no_checkpoint(_step: str) -> None:
    return None


class _SessionEnder:
    """Ends every session on the given databases, over and over, from a second connection.

    It runs while the swap's transaction waits in ALTER DATABASE ... RENAME: that statement holds
    the target's database lock, so no new session can start, and waits up to 5 s for the ones
    that exist to go; this thread makes them go.
    """

    def __init__(self, conn: Connection, names: tuple[str, ...]) -> None:
        self._conn = conn
        self._names = list(names)
        self._stop = threading.Event()
        self.error: str | None = None
        self._ended: set[int] = set()  # a session is told again until it is gone: counted once
        self._thread = threading.Thread(target=self._run, daemon=True, name="swap-session-ender")

    @property
    def ended(self) -> int:
        return len(self._ended)

    def __enter__(self) -> _SessionEnder:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            with connect(self._conn) as db:
                while not self._stop.is_set():
                    pids = [int(str(r[0])) for r in db.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid() "
                        # Other roles' backend_type reads as NULL to a non-superuser: those are clients too.
                        "AND coalesce(backend_type, 'client backend') = 'client backend'", (self._names,),
                    ).fetchall()]
                    for pid in pids:
                        # One at a time: a session this user may not end (a superuser's, without
                        # pg_signal_backend) must not spare all the others.
                        try:
                            row = db.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
                        except psycopg.errors.InsufficientPrivilege as exc:
                            self.error = f"may not end session {pid}: {pg_message(exc)}"
                            continue
                        if row and row[0]:
                            self._ended.add(pid)
                    self._stop.wait(0.1)
        except (psycopg.Error, JobFailed) as exc:
            self.error = pg_message(exc)


def _blockers(admin: AdminConnection, names: tuple[str, ...]) -> str:
    rows = admin.execute(
        "SELECT pid, usename, coalesce(nullif(application_name, ''), '-'), state FROM pg_stat_activity "
        "WHERE datname = ANY(%s) AND pid <> pg_backend_pid() ORDER BY backend_start LIMIT 5", (list(names),),
    ).fetchall()
    return ", ".join(f"pid {r[0]} ({r[1]}, {r[2]}, {r[3]})" for r in rows) or "sessions that have ended since"


def _rename(admin: AdminConnection, old: str, new: str) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


def _oid(admin: AdminConnection, name: str) -> int | None:
    row = admin.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return int(str(row[0])) if row else None


@dataclass(frozen=True)
class _Renames:
    """Renames that commit together: (old name, new name, checkpoint after it), and what they do, for messages."""

    target: str
    steps: tuple[tuple[str, str, str], ...]
    ended_on: tuple[str, ...]  # the databases whose sessions must end first
    waits_on: str  # them, as messages name them
    arriving: str  # the database that takes the target's name: its oid tells whether the commit went through
    doing: str  # `swapping the restored database into app`
    not_applied: str  # `the restore was not applied`


def swap_in(
    admin: AdminConnection, admin_conn: Connection, target: str, fresh: str, previous: str,
    wait_s: float, state: SwapState, checkpoint: Checkpoint = _no_checkpoint,
) -> bool:
    """Make `fresh` the database called `target`; the old one becomes `previous`. True if one was kept.

    Both renames happen in one transaction and nothing else is ever committed to the target (no
    ALLOW_CONNECTIONS false): killed at any instant, the server rolls the transaction back and the
    target is as it was, connectable, or the commit went through and it holds the new data.
    """
    doing = f"swapping the restored database into {target}"
    if database_info(admin, target) is None:
        checkpoint("swap:create")
        try:
            _rename(admin, fresh, target)  # one statement: committed whole or not at all
        except psycopg.Error as exc:  # e.g. someone created the target meanwhile
            raise _swap_failed(doing, exc) from exc
        state.committed = True
        return False
    try:
        drop_database(admin, previous)
    except psycopg.Error as exc:
        raise JobFailed(f"cannot drop the older {previous} to make room: {pg_message(exc)}; the target is unchanged") from exc
    checkpoint("swap:dropped-previous")
    renames = _Renames(
        target, ((target, previous, "swap:renamed-target"), (fresh, target, "swap:before-commit")),
        ended_on=(target, fresh), waits_on=target, arriving=fresh, doing=doing, not_applied="the restore was not applied",
    )
    _swap_names(admin, admin_conn, renames, wait_s, state, checkpoint)
    checkpoint("swap:committed")
    return True


def swap_back(
    admin: AdminConnection, admin_conn: Connection, target: str, previous: str,
    wait_s: float, state: SwapState, checkpoint: Checkpoint = _no_checkpoint,
) -> None:
    """Exchange the names of `target` and `previous` in one transaction: a kill leaves one or the other
    arrangement, both databases whole. Running it twice gives the first arrangement back."""
    # Seen only inside the transaction; a kill rolls it back with the renames.
    parked = derived_name(target, "__rollback")
    renames = _Renames(
        target,
        ((target, parked, "rollback:renamed-target"), (previous, target, "rollback:renamed-previous"),
         (parked, previous, "rollback:before-commit")),
        ended_on=(target, previous), waits_on=f"{target} and {previous}", arriving=previous,
        doing=f"swapping {previous} back in as {target}", not_applied="nothing was rolled back",
    )
    _swap_names(admin, admin_conn, renames, wait_s, state, checkpoint)
    checkpoint("rollback:committed")


def _swap_names(
    admin: AdminConnection, admin_conn: Connection, renames: _Renames, wait_s: float, state: SwapState, checkpoint: Checkpoint,
) -> None:
    """Apply `renames` in one transaction once the sessions on the databases renamed have ended (a bounded wait)."""
    target = renames.target
    arriving = _oid(admin, renames.arriving)
    if arriving is None:
        raise JobFailed(f"{renames.doing} failed: {renames.arriving} no longer exists; the target is unchanged")
    deadline = time.monotonic() + wait_s
    ender = _SessionEnder(admin_conn, renames.ended_on)
    try:
        with ender:
            while True:
                try:
                    with admin.transaction():
                        admin.execute("SET LOCAL lock_timeout = '10s'")
                        # A client frozen mid-transaction (suspended, partitioned) must not keep the target locked.
                        admin.execute("SET LOCAL idle_in_transaction_session_timeout = '15s'")
                        for old, new, step in renames.steps:
                            _rename(admin, old, new)
                            checkpoint(step)
                    state.committed = state.kept_previous = True
                    break
                except psycopg.errors.ObjectInUse as exc:
                    if time.monotonic() >= deadline:
                        why = f"; {ender.error}" if ender.error else ""
                        raise JobFailed(
                            f"sessions on {renames.waits_on} did not end within {wait_s:.0f}s "
                            f"({_blockers(admin, renames.ended_on)}{why}); "
                            f"the target is unchanged and {renames.not_applied}"
                        ) from exc
                    waited = wait_s - (deadline - time.monotonic())
                    log.info("waiting for sessions on %s to end (%.0fs of at most %.0fs): %s",
                             renames.waits_on, waited, wait_s, _blockers(admin, renames.ended_on))
                except psycopg.OperationalError as exc:
                    if _committed(admin_conn, target, arriving):
                        state.committed = state.kept_previous = True
                        break
                    raise _swap_failed(renames.doing, exc) from exc
                except psycopg.Error as exc:
                    raise _swap_failed(renames.doing, exc) from exc
                except KeyboardInterrupt:
                    # A cancel while COMMIT was on its way: psycopg re-raises it after the commit went through.
                    with contextlib.suppress(psycopg.Error, JobFailed):
                        if _committed(admin_conn, target, arriving):
                            state.committed = state.kept_previous = True
                    raise
            if ender.error:
                log.debug("ending sessions on %s: %s", target, ender.error)
    finally:
        state.sessions_ended = ender.ended


def _swap_failed(doing: str, exc: psycopg.Error) -> JobFailed:
    return JobFailed(f"{doing} failed: {pg_message(exc)}; the target is unchanged")


def _committed(admin_conn: Connection, target: str, arriving: int) -> bool:
    """After a connection lost at COMMIT: did the renames go through? Asked over a new connection."""
    with connect(admin_conn) as db:
        return _oid(db, target) == arriving
