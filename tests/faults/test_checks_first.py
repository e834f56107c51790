"""Promises of a restore's checks: what can be known before downloading is checked before anything is touched."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from tests.conftest import PgCluster, fill_small, fingerprint, restore_leftovers, run_cli, write_targets

NO_CREATEDB = "restorer_no_createdb"
NO_CREATEDB_PASSWORD = "nocreate-Pw-4242"  # the throwaway cluster's test role


def _backup(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> tuple[dict[str, str], Path]:
    fill_small(pg, dbname, "x")
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": f"{dbname}__beta"},
                            f"file://{tmp_path / 'backups'}")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    done = run_cli("backup", "app", "production", env=env)
    assert done.returncode == 0, done.stderr
    (dump,) = (tmp_path / "backups").rglob("*.dump")
    return env, dump


def _rewrite(dump: Path, data: bytes) -> None:
    """Replace a stored dump and keep its manifest matching, as a newer pg_dump's backup would be."""
    dump.write_bytes(data)
    manifest_path = dump.with_name(dump.name + ".json")
    manifest = json.loads(manifest_path.read_text())
    manifest.update(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_an_archive_too_new_for_this_pg_restore_is_refused_before_anything_is_touched(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], mode: str
) -> None:
    """A pg_dump 16+ archive (format 1.15) with pg_restore 15: exit 2 naming the client to install; no database touched."""
    env, dump = _backup(pg, dbname, tmp_path, pg_env)
    archive = bytearray(subprocess.run(["zstd", "-d", "-c", str(dump)], capture_output=True, check=True).stdout)
    assert archive[:5] == b"PGDMP" and archive[6] <= 14
    archive[6] = 15
    _rewrite(dump, subprocess.run(["zstd", "-q", "-c"], input=bytes(archive), capture_output=True, check=True).stdout)
    beta = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(beta)))
    fill_small(pg, beta, "beta")
    old = fingerprint(pg, beta)
    before = pg.databases()
    done = run_cli("restore", "app", "--from", "production", "--to", "beta",
                   env={**env, "DB_BACKUP_RESTORE_MODE": mode, "DB_BACKUP_PARALLEL_THRESHOLD_MB": "0"})
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "archive of format 1.15, which pg_restore 15." in line
    assert "install the PostgreSQL client tools 16 or newer" in line
    assert pg.databases() == before
    assert fingerprint(pg, beta) == old
    assert restore_leftovers(pg) == set()


@pytest.fixture
def no_createdb(pg: PgCluster) -> Iterator[str]:
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(NO_CREATEDB), sql.Literal(NO_CREATEDB_PASSWORD)))
    try:
        yield NO_CREATEDB
    finally:
        with pg.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(NO_CREATEDB)))


def test_a_user_who_may_not_create_databases_is_refused_before_the_download(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], no_createdb: str
) -> None:
    """Without CREATEDB the restore cannot build its fresh database: exit 2 saying what to grant, nothing touched."""
    env, _dump = _backup(pg, dbname, tmp_path, pg_env)
    old = fingerprint(pg, dbname)
    url = f"postgresql://{no_createdb}@{pg.host}:{pg.port}/{dbname}"
    done = run_cli("restore", "app", "--from", "production", "--to-url", url, env={**env, "PGPASSWORD": NO_CREATEDB_PASSWORD})
    assert done.returncode == 2, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [done.stderr.strip().splitlines()[-1]]
    assert f"{no_createdb} may not create databases" in done.stderr
    assert f"ALTER ROLE {no_createdb} CREATEDB" in done.stderr
    assert "INFO restoring " not in done.stderr  # refused before the download began (the log line that starts it)
    assert fingerprint(pg, dbname) == old
    assert restore_leftovers(pg) == set()
