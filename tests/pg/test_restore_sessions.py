"""pg_restore's sessions get settings that speed a bulk load: seen from inside the restore, by a CHECK it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg import sql

from runner.pg.session import bulk_load_settings
from tests.conftest import PgCluster, fingerprint, run_cli, write_targets


def _fill(pg: PgCluster, dbname: str) -> None:
    with pg.connect(dbname) as conn:
        # True here, so the data goes into the dump; elsewhere the row loads only under 256MB of maintenance_work_mem.
        conn.execute(sql.SQL(
            "CREATE FUNCTION public.bulk_loaded(int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN "
            "IF current_database() <> {} AND current_setting('maintenance_work_mem') <> '256MB' THEN "
            "RAISE EXCEPTION 'loaded with maintenance_work_mem %', current_setting('maintenance_work_mem'); END IF; "
            "RETURN true; END $$"
        ).format(sql.Literal(dbname)))
        conn.execute("CREATE TABLE public.rows (id int PRIMARY KEY CHECK (public.bulk_loaded(id)))")
        conn.execute("INSERT INTO public.rows SELECT generate_series(1, 100)")


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_the_restore_sessions_build_with_more_maintenance_memory_and_zero_leaves_the_servers(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], mode: str,
) -> None:
    _fill(pg, dbname)
    beta = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(beta)))
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta}, f"file://{tmp_path / 'backups'}")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "DB_BACKUP_RESTORE_MODE": mode}
    assert run_cli("backup", "app", "production", env=env).returncode == 0

    done = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)
    assert done.returncode == 0, done.stderr
    assert fingerprint(pg, beta) == fingerprint(pg, dbname)

    before = fingerprint(pg, beta)
    off = run_cli("restore", "app", "--from", "production", "--to", "beta", env={**env, "DB_BACKUP_RESTORE_MAINTENANCE_MB": "0"})
    assert off.returncode == 1
    assert "loaded with maintenance_work_mem 64MB" in off.stderr, off.stderr
    assert fingerprint(pg, beta) == before


def test_a_server_that_gives_more_is_never_lowered(pg: PgCluster, dbname: str) -> None:
    with pg.connect(dbname) as conn:
        assert bulk_load_settings(conn, 256) == {"maintenance_work_mem": "256MB"}
        assert bulk_load_settings(conn, 0) == {}
        conn.execute("SET maintenance_work_mem = '1GB'")
        assert bulk_load_settings(conn, 256) == {}
