"""The swap: the restored database takes the target's name in one transaction, or nothing changes."""

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
from .admin import drop_database
from .dbstate import database_info
from .session import AdminConnection, connect, pg_message

log = logging.getLogger(__name__)


@dataclass
class SwapState:
    """Whether the swap has committed: from then on the target holds the restored data, and a
    failure or cancel must not claim otherwise (nor drop the fresh database, which is the target)."""

    committed: bool = False
    kept_previous: bool = False


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
        self._thread = threading.Thread(target=self._run, daemon=True, name="swap-session-ender")

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
                            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
                        except psycopg.errors.InsufficientPrivilege as exc:
                            self.error = f"may not end session {pid}: {pg_message(exc)}"
                    self._stop.wait(0.1)
        except (psycopg.Error, JobFailed) as exc:
            self.error = pg_message(exc)


def _blockers(admin: AdminConnection, name: str) -> str:
    rows = admin.execute(
        "SELECT pid, usename, coalesce(nullif(application_name, ''), '-'), state FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY backend_start LIMIT 5", (name,),
    ).fetchall()
    return ", ".join(f"pid {r[0]} ({r[1]}, {r[2]}, {r[3]})" for r in rows) or "sessions that have ended since"


def _rename(admin: AdminConnection, old: str, new: str) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


def swap_in(
    admin: AdminConnection, admin_conn: Connection, target: str, fresh: str, previous: str,
    wait_s: float, state: SwapState, checkpoint: Checkpoint = _no_checkpoint,
) -> bool:
    """Make `fresh` the database called `target`; the old one becomes `previous`. True if one was kept.

    Both renames happen in one transaction and nothing else is ever committed to the target (no
    ALLOW_CONNECTIONS false): killed at any instant, the server rolls the transaction back and the
    target is as it was, connectable, or the commit went through and it holds the new data.
    """
    if database_info(admin, target) is None:
        checkpoint("swap:create")
        try:
            _rename(admin, fresh, target)  # one statement: committed whole or not at all
        except psycopg.Error as exc:  # e.g. someone created the target meanwhile
            raise _swap_failed(target, exc) from exc
        state.committed = True
        return False
    try:
        drop_database(admin, previous)
    except psycopg.Error as exc:
        raise JobFailed(f"cannot drop the older {previous} to make room: {pg_message(exc)}; the target is unchanged") from exc
    checkpoint("swap:dropped-previous")
    deadline = time.monotonic() + wait_s
    with _SessionEnder(admin_conn, (target, fresh)) as ender:
        while True:
            try:
                with admin.transaction():
                    admin.execute("SET LOCAL lock_timeout = '10s'")
                    # A client frozen mid-transaction (suspended, partitioned) must not keep the target locked.
                    admin.execute("SET LOCAL idle_in_transaction_session_timeout = '15s'")
                    _rename(admin, target, previous)
                    checkpoint("swap:renamed-target")
                    _rename(admin, fresh, target)
                    checkpoint("swap:before-commit")
                state.committed = state.kept_previous = True
                break
            except psycopg.errors.ObjectInUse as exc:
                if time.monotonic() >= deadline:
                    why = f"; {ender.error}" if ender.error else ""
                    raise JobFailed(
                        f"sessions on {target} did not end within {wait_s:.0f}s ({_blockers(admin, target)}{why}); "
                        "the target is unchanged and the restore was not applied"
                    ) from exc
                log.info("waiting for sessions on %s to end: %s", target, _blockers(admin, target))
            except psycopg.OperationalError as exc:
                if _committed(admin_conn, fresh, previous):
                    state.committed = state.kept_previous = True
                    break
                raise _swap_failed(target, exc) from exc
            except psycopg.Error as exc:
                raise _swap_failed(target, exc) from exc
            except KeyboardInterrupt:
                # A cancel while COMMIT was on its way: psycopg re-raises it after the commit went through.
                with contextlib.suppress(psycopg.Error, JobFailed):
                    if _committed(admin_conn, fresh, previous):
                        state.committed = state.kept_previous = True
                raise
        if ender.error:
            log.debug("ending sessions on %s: %s", target, ender.error)
    checkpoint("swap:committed")
    return True


def _swap_failed(target: str, exc: psycopg.Error) -> JobFailed:
    return JobFailed(f"swapping the restored database into {target} failed: {pg_message(exc)}; the target is unchanged")


def _committed(admin_conn: Connection, fresh: str, previous: str) -> bool:
    """After a connection lost at COMMIT: did the renames go through? Asked over a new connection."""
    with connect(admin_conn) as db:
        names = {str(r[0]) for r in db.execute("SELECT datname FROM pg_database WHERE datname IN (%s, %s)", (fresh, previous))}
    return fresh not in names and previous in names
