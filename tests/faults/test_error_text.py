"""Promises about what a failure says: the real cause, not the last symptom."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from tests.conftest import PgCluster, fill_small, run_cli, write_targets

RESTORER = "restorer_no_super"
RESTORER_PASSWORD = "restorer-Pw-31337"  # the throwaway cluster's test role


@pytest.fixture
def restorer(pg: PgCluster) -> Iterator[str]:
    """A role that may create databases but not act as the dump's owner (postgres), as on RDS."""
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
            sql.Identifier(RESTORER), sql.Literal(RESTORER_PASSWORD)))
    try:
        yield RESTORER
    finally:
        with pg.connect() as conn:
            for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datdba = %s::regrole", (RESTORER,)).fetchall():
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(RESTORER)))


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_a_failed_pg_restore_reports_its_own_first_error(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], restorer: str, mode: str
) -> None:
    """pg_restore's first error and its `Command was:` line, not zstd's broken pipe or a dead worker."""
    fill_small(pg, dbname, "x")
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, f"file://{tmp_path / 'backups'}")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "DB_BACKUP_RESTORE_MODE": mode, "DB_BACKUP_PARALLEL_THRESHOLD_MB": "0"}
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    url = f"postgresql://{restorer}@{pg.host}:{pg.port}/{dbname}__laptop"
    done = run_cli("restore", "app", "--from", "production", "--to-url", url, env={**env, "PGPASSWORD": RESTORER_PASSWORD})
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: pg_restore failed (exit 1): pg_restore: error: could not execute query: ERROR:  must be ")
    assert "Command was: ALTER TABLE public.marker OWNER TO postgres;" in error
    assert "zstd" not in error and "worker process died" not in error
    assert f"{dbname}__laptop" not in pg.databases()


def test_connection_refused_keeps_its_cause(tmp_path: Path, pg: PgCluster, pg_env: dict[str, str], dbname: str) -> None:
    """libpq's reason (Connection refused) is in the error, not only its hint."""
    fill_small(pg, dbname, "x")
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, f"file://{tmp_path / 'backups'}")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    done = run_cli("restore", "app", "--from", "production", "--to-url", "postgresql://nobody@127.0.0.1:1/x", env=env)
    assert done.returncode == 1
    assert "Connection refused" in done.stderr
    assert done.stderr.count("error:") == 1
