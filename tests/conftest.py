"""Shared fixtures: one real PostgreSQL cluster and one moto server per test session."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
SUPERUSER_PASSWORD = "pg-super-Secret-4711"  # used only by the throwaway test cluster


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        pytest.fail("PostgreSQL server binaries are missing: run `bash .ci/run` or apt-get install postgresql")
    return Path(found[-1]).parent


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass(frozen=True)
class PgCluster:
    host: str
    port: int
    user: str
    password: str
    bindir: Path

    def url(self, dbname: str = "postgres", password: bool = True) -> str:
        secret = f":{self.password}" if password else ""
        return f"postgresql://{self.user}{secret}@{self.host}:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, password=self.password,
            dbname=dbname, autocommit=autocommit, connect_timeout=10,
        )

    def databases(self) -> set[str]:
        with self.connect() as conn:
            return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}

    def drop(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """A throwaway cluster with password auth over TCP (so a wrong password really fails)."""
    bindir = _pg_bin()
    data = Path(tempfile.mkdtemp(prefix="dbbackup-pg-"))
    pwfile = data / "pw"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    port = free_port()
    pgdata = data / "data"
    subprocess.run(
        _as_postgres([
            str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth-local=trust",
            "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8",
            "--locale=C",
        ]),
        check=True, capture_output=True, timeout=120,
    )
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=100"
    subprocess.run(
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "-l", str(data / "log"), "-o", options, "start"]),
        check=True, capture_output=True, timeout=90,
    )
    try:
        yield PgCluster("127.0.0.1", port, "postgres", SUPERUSER_PASSWORD, bindir)
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "-t", "60", "stop"]),
            capture_output=True, timeout=90, check=False,
        )
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def dbname(pg: PgCluster) -> Iterator[str]:
    """A fresh, empty database for one test; dropped afterwards with everything derived from it."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    for other in pg.databases():
        if other == name or other.startswith(name + "__"):
            pg.drop(other)


@dataclass(frozen=True)
class MotoServer:
    endpoint: str

    def reset(self) -> None:
        import urllib.request

        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30):  # noqa: S310 - loopback only
            pass


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto over HTTP on loopback; AWS_ENDPOINT_URL points every boto3 client at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*AWS_ENV, "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.update(AWS_ENV)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    try:
        yield MotoServer(endpoint)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def aws(moto_server: MotoServer) -> Iterator[MotoServer]:
    """The moto server, emptied before each test."""
    moto_server.reset()
    yield moto_server
