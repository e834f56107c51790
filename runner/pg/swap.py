"""The swap: the restored database (for a rollback, the previous one) takes the target's name in one transaction,
or nothing changes."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from ..credentials import Connection
from ..errors import JobFailed
from ..words import sessions_were_ended
from .admin import derived_name, drop_database
from .dbstate import database_info
from .session import AdminConnection, connect, pg_message

log = logging.getLogger(__name__)

STOP_WAIT_S = 10.0  # the session ender's statements are quick: longer means its connection is stuck
OUTCOME_WAIT_S = 10.0  # how long a lost session may take to go before the swap's outcome is called unknown


@dataclass
class SwapState:
    """Whether the swap has committed: from then on the target holds the restored data, and a
    failure or cancel must not claim otherwise (nor drop the fresh database, which is the target)."""

    committed: bool = False
    kept_previous: bool = False
    sessions_ended: int = 0  # client sessions the swap ended (on the databases renamed or dropped), committed or not
    unknown: str | None = None  # set when the commit's outcome could not be learned: what to tell the user


Checkpoint = Callable[[str], None]


def _no_checkpoint(_step: str) -> None:
    return None


def _client_pids(db: AdminConnection, names: tuple[str, ...]) -> list[int]:
    """The client sessions on `names`, other than `db`'s own."""
    return [int(str(r[0])) for r in db.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid() "
        # Other roles' backend_type reads as NULL to a non-superuser: those are clients too.
        "AND coalesce(backend_type, 'client backend') = 'client backend'", (list(names),),
    ).fetchall()]


class _SessionEnder:
    """Ends every session on the given databases, over and over, from a second connection.

    It runs while the swap's transaction waits in ALTER DATABASE ... RENAME: that statement holds
    the target's database lock, so no new session can start, and waits up to 5 s for the ones
    that exist to go; this thread makes them go. A session counts as ended once it is gone.
    """

    def __init__(self, conn: Connection, names: tuple[str, ...]) -> None:
        self._conn = conn
        self._names = names
        self._stop = threading.Event()
        self.error: str | None = None
        self._told: set[int] = set()  # told to end: a session is told again until it is gone
        self._gone: set[int] = set()
        self._gave_up = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="swap-session-ender")

    @property
    def ended(self) -> int:
        return len(self._gone)

    def __enter__(self) -> _SessionEnder:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop(renamed=False)

    def stop(self, renamed: bool) -> bool:
        """Stop ending sessions; False if the thread would not stop. `renamed`: every rename went through,
        which the server allows only once no other session is on those databases, so all told have gone."""
        if self._gave_up:  # joined once in vain: waiting again would hold the swap's transaction open longer
            return False
        self._stop.set()
        self._thread.join(timeout=STOP_WAIT_S)
        if self._thread.is_alive():
            self._gave_up = True
            return False
        if renamed:
            self._gone |= self._told
        return True

    def _run(self) -> None:
        try:
            with connect(self._conn) as db:
                while not self._stop.is_set():
                    pids = _client_pids(db, self._names)
                    self._gone |= self._told - set(pids)
                    for pid in pids:
                        if self._stop.is_set():
                            break
                        # One at a time: a session this user may not end (a superuser's, without
                        # pg_signal_backend) must not spare all the others.
                        try:
                            row = db.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
                        except psycopg.errors.InsufficientPrivilege as exc:
                            self.error = f"may not end session {pid}: {pg_message(exc)}"
                            continue
                        if row and row[0]:
                            self._told.add(pid)
                    self._stop.wait(0.1)
                self._gone |= self._told - set(_client_pids(db, self._names))
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
        # DROP ... WITH (FORCE) ends these sessions without a word: counted here, so the restore's line is true.
        on_previous = len(_client_pids(admin, (previous,)))
        drop_database(admin, previous)
    except psycopg.Error as exc:
        raise JobFailed(f"cannot drop the older {previous} to make room: {pg_message(exc)}; the target is unchanged") from exc
    state.sessions_ended += on_previous
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


@dataclass(frozen=True)
class _Session:
    """One server session, told apart from a later one that reuses its pid."""

    pid: int
    started: datetime


def _own_session(admin: AdminConnection) -> _Session:
    row = admin.execute("SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None and isinstance(row[1], datetime)
    return _Session(int(str(row[0])), row[1])


def _swap_names(
    admin: AdminConnection, admin_conn: Connection, renames: _Renames, wait_s: float, state: SwapState, checkpoint: Checkpoint,
) -> None:
    """Apply `renames` in one transaction once the sessions on the databases renamed have ended (a bounded wait)."""
    target = renames.target
    arriving = _oid(admin, renames.arriving)
    if arriving is None:
        raise JobFailed(f"{renames.doing} failed: {renames.arriving} no longer exists; the target is unchanged")
    session = _own_session(admin)  # if the connection is lost at COMMIT, this session may still be committing
    deadline = time.monotonic() + wait_s
    before = state.sessions_ended
    ender = _SessionEnder(admin_conn, renames.ended_on)

    def ended(note: str) -> str:
        """`note`, and the sessions that were ended although the swap failed."""
        ender.stop(renamed=False)
        count = before + ender.ended
        return f"{note}, but {sessions_were_ended(count)}" if count else note

    try:
        with ender:
            while True:
                try:
                    with admin.transaction():
                        admin.execute("SET LOCAL lock_timeout = '10s'")
                        # A client frozen mid-transaction (suspended, partitioned) must not keep the target locked.
                        admin.execute("SET LOCAL idle_in_transaction_session_timeout = '15s'")
                        for number, (old, new, step) in enumerate(renames.steps, 1):
                            _rename(admin, old, new)
                            # Stopped before COMMIT: after it, a session on the target's name is a new one, on the new
                            # data, and must live. Until then the renames hold the databases' locks, so none can start.
                            if number == len(renames.steps) and not ender.stop(renamed=True):
                                raise JobFailed(ended(f"{renames.doing} failed: the sessions could not be stopped being "
                                                      f"ended; the target is unchanged and {renames.not_applied}"))
                            checkpoint(step)
                        # From here until the server has answered COMMIT, nobody can say "unchanged".
                        state.unknown = _unknown(renames, arriving, "it was interrupted at COMMIT, before its answer")
                    state.committed = state.kept_previous = True
                    state.unknown = None
                    break
                except psycopg.errors.ObjectInUse as exc:
                    if time.monotonic() >= deadline:
                        why = f"; {ender.error}" if ender.error else ""
                        blockers = _blockers(admin, renames.ended_on)
                        raise JobFailed(ended(
                            f"sessions on {renames.waits_on} did not end within {wait_s:.0f}s "
                            f"({blockers}{why}); the target is unchanged and {renames.not_applied}"
                        )) from exc
                    waited = wait_s - (deadline - time.monotonic())
                    log.info("waiting for sessions on %s to end (%.0fs of at most %.0fs): %s",
                             renames.waits_on, waited, wait_s, _blockers(admin, renames.ended_on))
                except psycopg.OperationalError as exc:
                    went_through = _went_through(admin, admin_conn, renames, arriving, session, state, exc)
                    if went_through is None:
                        raise JobFailed(ended(state.unknown or "")) from exc
                    if went_through:
                        break
                    raise JobFailed(ended(_failed_text(renames.doing, exc))) from exc
                except psycopg.Error as exc:
                    state.unknown = None  # the server answered, with an error: the transaction is rolled back
                    raise JobFailed(ended(_failed_text(renames.doing, exc))) from exc
                except KeyboardInterrupt as exc:
                    # A cancel while COMMIT was on its way: psycopg re-raises it after the commit went through.
                    _went_through(admin, admin_conn, renames, arriving, session, state, exc)
                    raise
            if ender.error:
                log.debug("ending sessions on %s: %s", target, ender.error)
    finally:
        ender.stop(renamed=False)
        state.sessions_ended = before + ender.ended


def _failed_text(doing: str, exc: BaseException) -> str:
    return f"{doing} failed: {pg_message(exc)}; the target is unchanged"


def _swap_failed(doing: str, exc: psycopg.Error) -> JobFailed:
    return JobFailed(_failed_text(doing, exc))


def _went_through(
    admin: AdminConnection, admin_conn: Connection, renames: _Renames, arriving: int, session: _Session,
    state: SwapState, lost: BaseException,
) -> bool | None:
    """After an error or a cancel in the swap's transaction: did the renames commit? If so, `state` says it.
    None, with `state.unknown` set, when nobody can tell. The outcome counts as unknown until the check answers
    (and until `state` holds the answer), so a second cancel during the check (it may wait OUTCOME_WAIT_S)
    leaves no claim that the target is unchanged."""
    state.unknown = _unknown(renames, arriving, f"{_lost(lost)} and the check that followed was cancelled")
    try:
        went_through = _outcome(admin, admin_conn, renames.target, arriving, session)
    except (psycopg.Error, JobFailed) as check:
        state.unknown = _unknown(renames, arriving, f"{_lost(lost)} and the check that followed failed ({pg_message(check)})")
        return None
    if went_through:
        state.committed = state.kept_previous = True
    state.unknown = None
    return went_through


def _lost(lost: BaseException) -> str:
    return (f"the connection was lost during the swap's transaction ({pg_message(lost)})" if isinstance(lost, psycopg.Error)
            else "it was cancelled during the swap's transaction")


def _unknown(renames: _Renames, arriving: int, why: str) -> str:
    """What to say when nobody can tell whether the renames committed (`why`), and how the user finds out."""
    return (f"{renames.doing}: the outcome is unknown: {why}; to find out, run SELECT oid, datname FROM "
            f"pg_database on the server: if {renames.target} has oid {arriving} (the database called {renames.arriving} "
            f"before the swap), the swap went through, otherwise {renames.target} is as it was and {renames.not_applied}")


def _outcome(admin: AdminConnection, admin_conn: Connection, target: str, arriving: int, session: _Session) -> bool:
    """After an error or a cancel in the swap's transaction: did the renames go through?"""
    if not admin.closed and admin.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        # The session lives and its transaction is over (a timeout, a cancel): it can answer itself.
        with contextlib.suppress(psycopg.Error):
            return _oid(admin, target) == arriving
    return _committed(admin_conn, target, arriving, session)


def _committed(admin_conn: Connection, target: str, arriving: int, lost: _Session) -> bool:
    """After a connection lost at COMMIT: did the renames go through? Asked over a new connection, once the
    lost session is gone (ended if need be): until then its COMMIT may still land."""
    with connect(admin_conn) as db:
        db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s AND backend_start = %s",
                   (lost.pid, lost.started))
        deadline = time.monotonic() + OUTCOME_WAIT_S
        while db.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s AND backend_start = %s",
                         (lost.pid, lost.started)).fetchone():
            if time.monotonic() >= deadline:
                raise JobFailed(f"the swap's session {lost.pid} did not end within {OUTCOME_WAIT_S:.0f}s")
            time.sleep(0.1)
        return _oid(db, target) == arriving
