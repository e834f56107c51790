"""Sessions with the server: connecting, their rules, the server's messages, and advisory locks."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator

import psycopg
from psycopg import sql

from ..credentials import Connection
from ..errors import JobFailed, RestoreRefused

AdminConnection = psycopg.Connection[tuple[object, ...]]


def connect(conn: Connection) -> AdminConnection:
    try:
        return psycopg.connect(**conn.psycopg_kwargs(), autocommit=True)  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise JobFailed(f"cannot connect to {conn.describe()}: {pg_message(exc)}") from exc


def bound_statements(admin: AdminConnection, seconds: float) -> None:
    """No statement on this connection may wait longer than `seconds` (psycopg's cancel ends it)."""
    admin.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{max(1, int(seconds * 1000))}ms")))
    keep_when_idle(admin)


def keep_when_idle(db: AdminConnection) -> None:
    """This session holds a lock while it waits for the job: a server's idle_session_timeout must not end it."""
    if db.info.server_version >= 140000:  # the setting exists from PostgreSQL 14
        db.execute("SET idle_session_timeout = 0")


def bulk_load_settings(admin: AdminConnection, maintenance_mb: int) -> dict[str, str]:
    """Settings for pg_restore's sessions that speed a bulk load, each one a user may set: maintenance_work_mem
    raised to `maintenance_mb` MiB for the index builds, never lowered below what the server gives."""
    if maintenance_mb <= 0:
        return {}
    row = admin.execute("SELECT pg_size_bytes(current_setting('maintenance_work_mem'))").fetchone()
    have = int(str(row[0])) if row else 0
    return {"maintenance_work_mem": f"{maintenance_mb}MB"} if have < maintenance_mb << 20 else {}


def pg_message(exc: BaseException) -> str:
    """The server's or libpq's reason in one line, with its cause: `... failed: Connection refused`."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0].removeprefix("connection failed:").strip()
    # libpq names the address tried, then the cause; a hint such as "Is the server running" follows.
    text = re.sub(r"\bFATAL:\s+", "", text).strip()
    hints = [line for line in lines[1:] if not line.upper().startswith(("DETAIL:", "CONTEXT:"))]
    if hints and hints[0].startswith("Is the server running"):
        text += f" ({hints[0][0].lower()}{hints[0][1:].rstrip('?')}?)"
    return text


def server_version(db: AdminConnection) -> str:
    """`15.18` (a server may append its build, e.g. `15.18 (Debian 15.18-0+deb12u1)`)."""
    reported = db.info.parameter_status("server_version")
    return reported.split(" ", 1)[0] if reported else "unknown"


# --- one restore per target, and live backups: locks the server releases with the session -------


def _advisory_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def _try_lock(db: AdminConnection, key: int) -> bool:
    """A session advisory lock, taken at once or not at all: no wait to bound."""
    row = db.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


class UploadLocks:
    """Session advisory locks on the backed-up database, one per upload in progress.

    Storage cannot tell a live backup's unfinished upload from a dead one's; the database server
    can: a session's locks go when it ends, kill -9 included. All runs of a target lock in the
    same database, so they see each other's.
    """

    def __init__(self, db: AdminConnection) -> None:
        self._db = db

    @property
    def server_version(self) -> str:
        return server_version(self._db)

    def claim(self, name: str) -> bool:
        return _try_lock(self._db, _advisory_key(f"db-backup upload {name}"))

    def release(self, name: str) -> None:
        self._db.execute("SELECT pg_advisory_unlock(%s)", (_advisory_key(f"db-backup upload {name}"),))

    def abandoned(self, name: str) -> bool:
        """True when no live run holds `name` (checked by taking its lock for an instant)."""
        if not self.claim(name):
            return False
        self.release(name)
        return True


@contextlib.contextmanager
def upload_locks(conn: Connection) -> Iterator[UploadLocks]:
    with connect(conn) as db:
        keep_when_idle(db)
        yield UploadLocks(db)


def _lock_key(target: str) -> int:
    return _advisory_key(f"db-backup restore into {target}")


def lock_target(admin: AdminConnection, target: str) -> None:
    """Claim the right to restore into `target` for this session, or refuse at once.

    A session-level advisory lock: the server releases it when the session ends, however the
    process ended (a kill -9 included), so no stale lock is ever left to clean up.
    """
    if _try_lock(admin, _lock_key(target)):
        return
    who = lock_holder(admin, target) or "another session"
    raise RestoreRefused(f"another restore into {target} is running ({who}); wait for it to finish, then run again")


def lock_holder(admin: AdminConnection, target: str) -> str | None:
    """The session holding the restore lock on `target`, in words, or None when none does; takes no lock."""
    key = _lock_key(target)
    holder = admin.execute(
        """SELECT a.pid, a.usename, coalesce(host(a.client_addr), 'local socket'), a.backend_start
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid""",
        ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
    ).fetchone()
    if holder is None:
        return None
    return f"session {holder[0]} of {holder[1]} from {holder[2]}, running since {holder[3]:%Y-%m-%d %H:%M:%S %Z}"
