"""--pg-url: an existing server (e.g. RDS) instead of the throwaway cluster; its password never in argv."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from runner.credentials import Connection, parse_url
from runner.errors import BadInput
from runner.pg.tools import major, tool_version

from .basics import BenchError, first_line, log
from .server import Server

NO_PASSWORD = "none found (PGPASSWORD unset, no matching password file entry)"


def pgpass_lookup(host: str, port: int, dbname: str, user: str) -> tuple[str | None, str]:
    """The password libpq would take from PGPASSFILE or ~/.pgpass for this connection."""
    path = Path(os.environ.get("PGPASSFILE") or Path.home() / ".pgpass")
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None, ""
    if mode & 0o077:
        log(f"warning: {path} is readable by group or others; ignored, as libpq ignores it "
            "(chmod 0600 it)")
        return None, ""
    wanted = (host, str(port), dbname, user)
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields: list[str] = []
        current: list[str] = []
        escaped = False
        for char in line:
            if escaped:
                current.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == ":" and len(fields) < 4:
                fields.append("".join(current))
                current = []
            else:
                current.append(char)
        fields.append("".join(current))
        if len(fields) == 5 and all(f in ("*", w) for f, w in zip(fields[:4], wanted, strict=True)):
            return fields[4], str(path)
    return None, ""


def parse_pg_url(url: str) -> tuple[Connection, str]:
    """The engine's own --to-url parser, plus one refusal: a password in the URL.

    It would land in shell history and in the printed command, so it must come from PGPASSWORD
    or the password file. Returns the connection and where its password came from.
    """
    try:
        conn = parse_url(url)
    except BadInput as exc:
        raise BenchError(str(exc).replace("--to-url", "--pg-url")) from None
    if "password" in conninfo_to_dict(url):
        raise BenchError("--pg-url must not contain a password (it would land in shell history "
                         "and in the printed command); put it in PGPASSWORD or ~/.pgpass")
    conn = dataclasses.replace(conn, sslmode=conn.sslmode or os.environ.get("PGSSLMODE") or None)
    if conn.password is not None:
        return conn, "PGPASSWORD"
    password, source = pgpass_lookup(conn.host, conn.port, conn.dbname, conn.user)
    return dataclasses.replace(conn, password=password), source or NO_PASSWORD


class ExternalServer(Server):
    """An existing server (--pg-url). Nothing of it is started, stopped or configured.

    The bench creates its databases in it (it needs CREATEDB) and drops exactly those at the end,
    also on an error, Ctrl-C or SIGTERM; it refuses to start if one of those names already
    exists, so it never drops a database it did not create.
    """

    external = True

    def __init__(self, bindir: Path, target: Connection, password_from: str, planned: Sequence[str]) -> None:
        super().__init__(bindir, target.host, target.port, target.user, target.password, target.sslmode)
        self.dbname = target.dbname
        self.password_from = password_from  # for the header: where, never the password
        self.planned = list(dict.fromkeys(planned))
        self.owned: list[str] = []  # databases this run may create, dropped by stop()
        self.can_checkpoint = True
        self.version = ""
        self.started = False

    def describe(self) -> str:
        return (f"external server {self.url(self.dbname)} (password from {self.password_from}); "
                f"pg_ctl, runuser and the bench cluster's fsync=off settings: n/a (external "
                f"server); client tools from {self.bindir}")

    def where(self) -> str:
        return (f"external server {self.host}:{self.port} (PostgreSQL {self.version}; will drop "
                f"{', '.join(self.owned)})")

    def start(self) -> None:
        try:
            with self.connect(self.dbname) as conn:
                version, number, createdb = conn.execute(
                    "SELECT current_setting('server_version'), "
                    "current_setting('server_version_num')::int, rolcreatedb OR rolsuper "
                    "FROM pg_roles WHERE rolname = current_user").fetchone() or ("", 0, False)
                existing = [r[0] for r in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname = ANY(%s) ORDER BY 1",
                    (self.planned,))]
        except psycopg.Error as exc:
            raise BenchError(f"cannot connect to {self.url(self.dbname)}: {first_line(exc)}") from exc
        self.version = str(version)
        if not createdb:
            raise BenchError(f"user {self.user} may not create databases on {self.host}; the "
                             "bench needs CREATEDB (ALTER ROLE ... CREATEDB)")
        if existing:
            raise BenchError(f"database(s) {', '.join(existing)} already exist on {self.host}; "
                             "the bench creates and drops these names itself and will not touch "
                             "existing ones: drop them (left by a killed run?) or use another "
                             "server")
        client = tool_version(self.tool("pg_dump"))
        if major(client) and major(client) < int(number) // 10000:
            raise BenchError(f"pg_dump {client} is older than the server ({self.version}); "
                             "install newer client tools or pass --pg-bindir")
        self.owned = list(self.planned)
        self.started = True

    def stop(self) -> None:
        """Drop every database this run created (IF EXISTS: some never were)."""
        if not self.started:
            return
        self.started = False
        failed = []
        for name in self.owned:
            try:
                self.drop_db(name)
            except Exception as exc:  # report every leftover, then go on
                failed.append(f"{name} ({first_line(exc) if str(exc) else repr(exc)})")
        if failed:
            print(f"WARNING: could not drop on {self.host}: {'; '.join(failed)}; drop them by hand",
                  file=sys.stderr, flush=True)
        else:
            log(f"dropped the bench's databases on {self.host} (if they existed): "
                f"{', '.join(self.owned)}")

    def settle(self) -> None:
        """CHECKPOINT when the user may (superuser or pg_checkpoint); local writeback always."""
        if self.can_checkpoint:
            try:
                self.execute("CHECKPOINT")
            except psycopg.errors.InsufficientPrivilege:
                self.can_checkpoint = False
                log(f"  CHECKPOINT before each step: n/a (user {self.user} lacks the privilege; "
                    "needs pg_checkpoint on PostgreSQL 15+)")
        os.sync()
