"""Capturing the server's roles beside a dump: pg_dumpall's globals, and the roles the database's objects name."""

from __future__ import annotations

import logging
import subprocess
import threading
from dataclasses import dataclass

import psycopg

from ..credentials import Connection
from ..errors import BadInput, JobFailed
from .session import bound_statements, connect, pg_message
from .tools import find_tool, libpq_env

log = logging.getLogger(__name__)

DUMPALL_TIMEOUT_S = 300.0
TIMED_OUT = "did not finish"
ROLES_QUERY_TIMEOUT_S = 60.0

# The database's owner, and every role its objects depend on: owners, ACL grantees, policies, default privileges.
_REFERENCED_ROLES = """
SELECT pg_catalog.pg_get_userbyid(d.datdba) FROM pg_catalog.pg_database d WHERE d.datname = current_database()
UNION
SELECT r.rolname FROM pg_catalog.pg_shdepend s JOIN pg_catalog.pg_roles r ON r.oid = s.refobjid
WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass
  AND s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
ORDER BY 1
"""


@dataclass(frozen=True)
class Globals:
    """pg_dumpall's output (None when nothing could be captured), what is missing and why, and the roles in use."""

    text: str | None
    missing: str | None
    roles: tuple[str, ...] | None


class _Live:
    """The pg_dumpall running for a capture, so that a cancelled capture can end it."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None


def capture_globals(conn: Connection, live: _Live | None = None) -> Globals:
    """Roles, memberships, role settings (and tablespaces) of the server; a failure is noted, never raised."""
    roles, roles_problem = referenced_roles(conn)
    text, missing = _dumpall(conn, live or _Live())
    if roles_problem:
        missing = "; ".join(part for part in (missing, roles_problem) if part)
    return Globals(text, missing, roles)


# The longest a capture can take: the roles query, then two pg_dumpall runs, each bounded, and a margin to connect.
CAPTURE_WAIT_S = ROLES_QUERY_TIMEOUT_S + 2 * DUMPALL_TIMEOUT_S + 60.0


class GlobalsCapture:
    """capture_globals in a thread, started beside the dump: its connections and pg_dumpall run while the
    dump does instead of after it. `result()` waits for it; `cancel()` ends its pg_dumpall."""

    def __init__(self, conn: Connection) -> None:
        self._live = _Live()
        self._result: Globals | None = None
        self._thread = threading.Thread(target=self._run, args=(conn,), daemon=True, name="globals-capture")
        self._thread.start()

    def _run(self, conn: Connection) -> None:
        try:
            self._result = capture_globals(conn, self._live)
        except Exception as exc:  # capture_globals notes its failures; anything else must still not fail the backup
            self._result = Globals(None, f"roles and globals not captured: {exc}", None)

    def result(self, wait_s: float = CAPTURE_WAIT_S) -> Globals:
        self._thread.join(timeout=wait_s)
        if self._result is None:
            self.cancel()
            return Globals(None, f"roles and globals not captured: the capture {TIMED_OUT} within {wait_s:.0f}s", None)
        return self._result

    def cancel(self) -> None:
        self._live.cancelled.set()
        proc = self._live.proc
        if proc is not None and proc.poll() is None:
            proc.kill()


def referenced_roles(conn: Connection) -> tuple[tuple[str, ...] | None, str | None]:
    """The roles the database's objects refer to, or why they could not be listed."""
    try:
        with connect(conn) as db:
            bound_statements(db, ROLES_QUERY_TIMEOUT_S)
            rows = db.execute(_REFERENCED_ROLES).fetchall()
    except (psycopg.Error, JobFailed) as exc:
        reason = pg_message(exc) if isinstance(exc, psycopg.Error) else str(exc)
        return None, f"the roles the database refers to could not be listed: {reason}"
    return tuple(str(row[0]) for row in rows if row[0] is not None), None


def _dumpall(conn: Connection, live: _Live) -> tuple[str | None, str | None]:
    """`pg_dumpall --globals-only`, else `--roles-only`: its text and what is missing."""
    try:
        pg_dumpall = find_tool("pg_dumpall")
    except BadInput as exc:
        return None, f"pg_dumpall not found: {exc}"
    text, problem = _run(conn, pg_dumpall, "--globals-only", live)
    if text is not None:
        return text, None
    if live.cancelled.is_set():
        return None, "roles and globals not captured: the backup stopped first"
    if problem.startswith(TIMED_OUT):
        return None, f"roles and globals not captured: pg_dumpall {problem}"  # a second try would wait as long again
    log.warning("pg_dumpall --globals-only failed (%s); trying --roles-only", problem)
    roles_text, roles_problem = _run(conn, pg_dumpall, "--roles-only", live)
    if roles_text is not None:
        return roles_text, f"tablespaces not captured: pg_dumpall --globals-only failed: {problem}"
    return None, f"roles and globals not captured: pg_dumpall failed: {roles_problem}"


def _run(conn: Connection, pg_dumpall: str, what: str, live: _Live) -> tuple[str | None, str]:
    """One pg_dumpall run on the backed-up database's connection; (its output, '') or (None, its first stderr line)."""
    # --no-role-passwords: no password hash is ever stored, and a non-superuser (Amazon RDS's master user) may run it.
    # --encoding: the file is UTF-8 whatever the database's encoding, so role names read back as written.
    argv = [pg_dumpall, what, "--no-role-passwords", "--no-password", "--encoding=UTF8", f"--database={conn.dbname}"]
    try:
        with libpq_env(conn) as env:
            proc = env.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            live.proc = proc
            if live.cancelled.is_set():  # cancelled while it started: cancel() may have missed it
                proc.kill()
            try:
                out, err = proc.communicate(timeout=DUMPALL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate(timeout=30)
                return None, f"{TIMED_OUT} within {DUMPALL_TIMEOUT_S:.0f}s"
    except (OSError, subprocess.SubprocessError) as exc:  # not runnable, or not gone even after a kill
        return None, f"could not run it: {exc}"
    if proc.returncode != 0:
        lines = [line.strip() for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
        return None, f"exit {proc.returncode}: {lines[0] if lines else 'no message'}"
    try:
        return out.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        return None, f"its output is not UTF-8 ({exc.reason})"
