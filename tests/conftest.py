"""Shared fixtures: one real PostgreSQL cluster and one moto server per test session."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from runner import archive
from runner.pg.cluster import free_port as free_port
from runner.pg.cluster import throwaway_cluster
from tests.helpers.targets import write_targets_file

REPO = Path(__file__).resolve().parent.parent

SUPERUSER_PASSWORD = "pg-super-Secret-4711"  # used only by the throwaway test cluster


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
    with throwaway_cluster(SUPERUSER_PASSWORD) as cluster:
        yield PgCluster(cluster.host, cluster.port, cluster.user, cluster.password, cluster.bindir)


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
        with urllib.request.urlopen(request, timeout=30):
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
    from tests.helpers.moto import start_moto

    server, port = start_moto()
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


# --- running the CLI and describing databases --------------------------------------------------

DB_BACKUP = str(REPO / ".venv" / "bin" / "db-backup")


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real console script as a subprocess: real exit code, real stdout and stderr."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    full_env.update(env or {})
    return subprocess.run([DB_BACKUP, *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout, check=False)


def write_targets(path: Path, pg: PgCluster, dbnames: dict[str, str], storage: str, extra: str = "", target_extra: str = "") -> Path:
    """A targets.yaml with one `app` target per environment, each pointing at a database of the test cluster."""
    targets: list[str] = []
    for env, dbname in dbnames.items():
        targets += [
            "- identifier: app",
            f"  env: {env}",
            "  schedule: nightly",
            *(f"  {line}" for line in target_extra.splitlines() if line),
            "  database:",
            f"    host: {pg.host}",
            f"    port: {pg.port}",
            f"    name: {dbname}",
            f"    user: {pg.user}",
            "    password: env:TEST_PG_PASSWORD",
        ]
    return write_targets_file(path, [f"storage: {storage}", "region: us-east-1", *extra.splitlines()], targets)


@pytest.fixture
def pg_env(pg: PgCluster) -> dict[str, str]:
    return {"TEST_PG_PASSWORD": pg.password}


RICH_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE SCHEMA shop;
CREATE TYPE shop.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE shop.customer (
    id bigserial PRIMARY KEY,
    email citext UNIQUE NOT NULL,
    mood shop.mood NOT NULL DEFAULT 'ok',
    profile jsonb,
    avatar bytea,
    tags text[],
    balance numeric(12, 4) CHECK (balance > -1000),
    seen_at timestamptz,
    born date,
    ratio double precision,
    ip inet,
    uid uuid
);
CREATE TABLE shop.orders (
    id serial PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES shop.customer (id) ON DELETE CASCADE,
    total numeric NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT now(),
    note text
);
CREATE INDEX orders_customer_idx ON shop.orders (customer_id, placed_at DESC);
CREATE INDEX customer_profile_gin ON shop.customer USING gin (profile);
COMMENT ON TABLE shop.customer IS 'People who buy things';
COMMENT ON COLUMN shop.orders.total IS 'Sum in euros, tax included';
CREATE VIEW shop.big_spenders AS
    SELECT c.email, sum(o.total) AS spent FROM shop.customer c JOIN shop.orders o ON o.customer_id = c.id GROUP BY c.email;
CREATE FUNCTION shop.order_count(cid bigint) RETURNS bigint LANGUAGE sql STABLE AS
    $$ SELECT count(*) FROM shop.orders WHERE customer_id = cid $$;
CREATE SEQUENCE shop.invoice_no START 1000;
INSERT INTO shop.customer (email, mood, profile, avatar, tags, balance, seen_at, born, ratio, ip, uid)
SELECT 'user' || g || '@Example.com',
       (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::shop.mood,
       jsonb_build_object('n', g, 'nested', jsonb_build_object('even', g % 2 = 0), 'list', jsonb_build_array(g, g * 2)),
       decode(md5(g::text), 'hex'),
       ARRAY['t' || g % 7, 'x,y', 'quote"d'],
       (g * 3.1415)::numeric(12, 4),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '37 minutes',
       date '1950-01-01' + g,
       g / 7.0,
       ('10.0.' || g % 255 || '.' || g % 250)::inet,
       md5('u' || g)::uuid
FROM generate_series(1, 2000) g;
INSERT INTO shop.customer (email) VALUES ('nulls@example.com');
INSERT INTO shop.orders (customer_id, total, placed_at, note)
SELECT 1 + g % 2000, (g % 500) + 0.99, timestamptz '2024-06-01 12:00+02' + g * interval '1 hour',
       CASE WHEN g % 5 = 0 THEN NULL ELSE repeat('ünïcödé ', g % 4) END
FROM generate_series(1, 5000) g;
SELECT nextval('shop.invoice_no') FROM generate_series(1, 42);
"""


def fill_rich(pg: PgCluster, dbname: str) -> None:
    with pg.connect(dbname) as conn:
        conn.execute(RICH_SCHEMA)


def fill_small(pg: PgCluster, dbname: str, marker: str) -> None:
    with pg.connect(dbname) as conn:
        conn.execute("CREATE TABLE marker (id int PRIMARY KEY, label text NOT NULL)")
        conn.execute("INSERT INTO marker SELECT g, %s || g FROM generate_series(1, 500) g", (marker,))


def fingerprint(pg: PgCluster, dbname: str) -> dict[str, object]:
    """What a user compares after a restore: rows and content per table, sequences, schema objects."""
    result: dict[str, object] = {}
    with pg.connect(dbname) as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall()
        for schema, table in tables:
            ident = sql.Identifier(schema, table)
            row = conn.execute(
                sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {} t").format(ident)
            ).fetchone()
            result[f"table {schema}.{table}"] = row
        queries = {
            "sequences": "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2",
            "views": "SELECT schemaname, viewname, definition FROM pg_views WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
            "functions": "SELECT n.nspname, p.proname, pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                         "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.prokind = 'f' "
                         "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') ORDER BY 1, 2",
            "indexes": "SELECT schemaname, indexname, indexdef FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
            "constraints": "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace NOT IN "
                           "('pg_catalog'::regnamespace, 'information_schema'::regnamespace) ORDER BY 1, 2",
            "comments": "SELECT objoid::regclass::text, objsubid, description FROM pg_description WHERE classoid = 'pg_class'::regclass ORDER BY 1, 2",
            "extensions": "SELECT extname FROM pg_extension ORDER BY 1",
            "enums": "SELECT t.typname, e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid ORDER BY 1, e.enumsortorder",
        }
        for name, query in queries.items():
            result[name] = conn.execute(query).fetchall()
    return result


def restore_leftovers(pg: PgCluster) -> set[str]:
    return {name for name in pg.databases() if "__restore_" in name}


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a condition with a bound; fail the test naming what never happened."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_in_threads(count: int, target: Callable[[], object], timeout: float = 120) -> None:
    """Run `target` in `count` threads at once and wait for all of them, bounded."""
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]  # a stuck one must not hold pytest's exit
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), f"a thread did not end within {timeout:.0f} s"


def record_spawns(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """From now on, the argv and the environment of every process this test process starts."""
    spawned: list[dict[str, Any]] = []
    real_popen = subprocess.Popen

    class SpyPopen(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            env = kwargs.get("env")
            spawned.append({"argv": [str(a) for a in args], "env": dict(os.environ if env is None else env)})
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", SpyPopen)
    return spawned


def run_until(argv: list[str], env: dict[str, str], ready: Callable[[], bool], what: str,
              act: Callable[[subprocess.Popen[str]], object]) -> tuple[int, str]:
    """Run the CLI, wait (bounded) until `ready`, then `act` on it mid-run; its exit code and stderr."""
    proc = subprocess.Popen([DB_BACKUP, *argv], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready, what)
        act(proc)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    return proc.returncode, err


@contextlib.contextmanager
def table_locked(pg: PgCluster, dbname: str, table: str) -> Iterator[None]:
    """Hold an ACCESS EXCLUSIVE lock, so a pg_dump of the database blocks on it mid-dump."""
    locker = pg.connect(dbname, autocommit=False)
    try:
        locker.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table)))
        yield
    finally:
        locker.close()


def lock_waiters(pg: PgCluster, dbname: str) -> int:
    with pg.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                           (dbname,)).fetchone()
    return int(row[0]) if row else 0


def backup_with_database_dropped_mid_dump(pg: PgCluster, dbname: str, env: dict[str, str], started: Callable[[], bool]) -> tuple[int, str]:
    """Run `backup app production` while a lock holds pg_dump mid-dump, then drop the database under it."""
    with table_locked(pg, dbname, "marker"):
        return run_until(["backup", "app", "production"], env, lambda: lock_waiters(pg, dbname) > 0 and started(),
                         "pg_dump to block on its lock with the upload started", lambda _: pg.drop(dbname))


def offsets_in(path: Path) -> dict[int, tuple[int, int]]:
    """Each TOC entry's data offset field: (state, position)."""
    with path.open("rb") as f:
        toc = archive.read_toc(f)
        result = {}
        for entry in toc.entries:
            f.seek(entry.offset_field)
            raw = f.read(1 + toc.off_size)
            result[entry.dump_id] = (raw[0], int.from_bytes(raw[1:], "little"))
        return result
