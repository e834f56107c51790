"""The PostgreSQL server the bench measures against; by default runner.pg.cluster."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from runner.errors import DbBackupError
from runner.pg import cluster

from .basics import BenchError

PG_PASSWORD = "bench-pg-Secret-1"  # only for the throwaway cluster the bench starts
CHECK_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "bench_docs")
# On top of the throwaway cluster's fsync=off full_page_writes=off synchronous_commit=off: no checkpoint
# in the middle of a timed step, and fewer connection slots than the tests' cluster needs.
CLUSTER_OPTIONS = "-c max_wal_size=4GB -c max_connections=50"


def pg_bindir(given: str | None, server: bool = True) -> Path:
    """Where the PostgreSQL programs are: --pg-bindir, else the newest /usr/lib/postgresql/*/bin.

    server=True (the bench's own cluster) needs initdb/pg_ctl there: runner.pg.cluster decides. With
    server=False (--pg-url) client tools suffice: a client-only install (e.g. Debian's
    postgresql-client-NN) has them in /usr/lib/postgresql/NN/bin too, and with nothing there the
    directory of pg_dump on PATH is used (Server.tool falls back to PATH for each tool).
    """
    if given:
        return Path(given)
    if server:
        try:
            return Path(cluster.pg_bindir())
        except DbBackupError as exc:
            raise BenchError(f"{exc}; or pass --pg-bindir") from exc
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_dump")
    if not on_path:
        raise BenchError("pg_dump is not installed (neither in /usr/lib/postgresql/*/bin nor on "
                         "PATH); install the PostgreSQL client tools or pass --pg-bindir")
    return Path(on_path).parent


class Server:
    """What the bench needs of a PostgreSQL server: connections, its databases, its client tools."""

    external = False

    def __init__(self, bindir: Path, host: str, port: int, user: str, password: str | None,
                 sslmode: str | None) -> None:
        self.bindir = bindir
        self.host, self.port, self.user = host, port, user
        self.password, self.sslmode = password, sslmode

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def where(self) -> str:
        """Where it runs, for the first log line once started."""
        raise NotImplementedError

    def url(self, dbname: str) -> str:
        """postgresql:// URL of a database on this server, without the password."""
        query = f"?sslmode={self.sslmode}" if self.sslmode else ""
        return f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/{dbname}{query}"

    def env(self, dbname: str = "postgres") -> dict[str, str]:
        env = dict(os.environ)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGDATABASE=dbname)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        return env

    def tool(self, name: str) -> str:
        candidate = self.bindir / name
        if candidate.exists() or not self.external:
            return str(candidate)
        found = shutil.which(name)  # a client-only install: the tool on PATH
        if not found:
            raise BenchError(f"{name} is not installed (not in {self.bindir} nor on PATH)")
        return found

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user,
                                  "dbname": dbname, "autocommit": True}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.sslmode:
            kwargs["sslmode"] = self.sslmode
        if self.external:
            kwargs["connect_timeout"] = 15
        return psycopg.connect(**kwargs)

    def execute(self, statement: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            cur = conn.execute(statement)
            return list(cur.fetchall()) if cur.description else []

    def create_db(self, name: str) -> None:
        self.drop_db(name)
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')

    def drop_db(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def counts(self, dbname: str) -> dict[str, int]:
        """Rows of each table the bench checks, and the number of indexes: a restore must match."""
        with self.connect(dbname) as conn:
            def count(query: str) -> int:
                row = conn.execute(query).fetchone()
                return int(row[0]) if row else 0

            found = {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            result = {t: count(f"SELECT count(*) FROM {t}") for t in CHECK_TABLES if t in found}
            result["indexes"] = count("SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'")
        return result

    def settle(self) -> None:
        """Before each timed step: no dirty buffers or pending writeback from the previous one."""
        self.execute("CHECKPOINT")
        os.sync()


class OwnCluster(Server):
    """runner.pg.cluster: scram password auth over TCP on 127.0.0.1, fsync off."""

    def __init__(self, bindir: Path) -> None:
        super().__init__(bindir, "127.0.0.1", 0, "postgres", PG_PASSWORD, None)
        self.root = Path()
        self._stack = contextlib.ExitStack()

    def start(self) -> None:
        default = Path(cluster.pg_bindir())
        # The throwaway cluster runs the newest installed server; a --pg-bindir elsewhere is passed on.
        extra: dict[str, Any] = {} if self.bindir == default else {"bindir": self.bindir}
        try:
            started = self._stack.enter_context(
                cluster.throwaway_cluster(PG_PASSWORD, CLUSTER_OPTIONS, **extra))
        except (DbBackupError, OSError, subprocess.SubprocessError) as exc:
            raise BenchError(f"the throwaway cluster did not start: {exc}") from exc
        self.host, self.port, self.user = started.host, started.port, started.user
        self.root = Path(started.datadir).parent

    def stop(self) -> None:
        self._stack.close()  # stopped (immediate) and its directory deleted

    def describe(self) -> str:
        return (f"throwaway cluster started by the bench (initdb + pg_ctl, 127.0.0.1, "
                f"{self.bindir}; fsync=off full_page_writes=off synchronous_commit=off)")

    def where(self) -> str:
        return f"cluster on 127.0.0.1:{self.port} ({self.root})"
