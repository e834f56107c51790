"""Capturing the server's roles beside a dump: pg_dumpall's globals, and the roles the database's objects name."""

from __future__ import annotations

import logging
import subprocess
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


def capture_globals(conn: Connection) -> Globals:
    """Roles, memberships, role settings (and tablespaces) of the server; a failure is noted, never raised."""
    roles, roles_problem = referenced_roles(conn)
    text, missing = _dumpall(conn)
    if roles_problem:
        missing = "; ".join(part for part in (missing, roles_problem) if part)
    return Globals(text, missing, roles)


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


def _dumpall(conn: Connection) -> tuple[str | None, str | None]:
    """`pg_dumpall --globals-only`, else `--roles-only`: its text and what is missing."""
    try:
        pg_dumpall = find_tool("pg_dumpall")
    except BadInput as exc:
        return None, f"pg_dumpall not found: {exc}"
    text, problem = _run(conn, pg_dumpall, "--globals-only")
    if text is not None:
        return text, None
    if problem.startswith(TIMED_OUT):
        return None, f"roles and globals not captured: pg_dumpall {problem}"  # a second try would wait as long again
    log.warning("pg_dumpall --globals-only failed (%s); trying --roles-only", problem)
    roles_text, roles_problem = _run(conn, pg_dumpall, "--roles-only")
    if roles_text is not None:
        return roles_text, f"tablespaces not captured: pg_dumpall --globals-only failed: {problem}"
    return None, f"roles and globals not captured: pg_dumpall failed: {roles_problem}"


def _run(conn: Connection, pg_dumpall: str, what: str) -> tuple[str | None, str]:
    """One pg_dumpall run on the backed-up database's connection; (its output, '') or (None, its first stderr line)."""
    # --no-role-passwords: no password hash is ever stored, and a non-superuser (Amazon RDS's master user) may run it.
    # --encoding: the file is UTF-8 whatever the database's encoding, so role names read back as written.
    argv = [pg_dumpall, what, "--no-role-passwords", "--no-password", "--encoding=UTF8", f"--database={conn.dbname}"]
    try:
        with libpq_env(conn) as env:
            proc = env.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
