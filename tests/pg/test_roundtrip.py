"""Backup and restore through the CLI into a local folder, on a real PostgreSQL server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import PgCluster, fill_rich, fill_small, fingerprint, restore_leftovers, run_cli, write_targets


@pytest.fixture
def beta_db(pg: PgCluster, dbname: str) -> str:
    """A second database in the same cluster, cleaned up with the first one."""
    name = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


@pytest.mark.parametrize("compression", ["zstd:1", "zstd:3", "gzip:6", "none"])
@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_round_trip_keeps_every_row_and_object(
    pg: PgCluster, dbname: str, beta_db: str, tmp_path: Path, pg_env: dict[str, str], compression: str, mode: str
) -> None:
    fill_rich(pg, dbname)
    fill_small(pg, beta_db, "old beta")
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta_db}, "file://./backups",
                            extra=f"compression: {compression}")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "DB_BACKUP_RESTORE_MODE": mode}

    backup = run_cli("backup", "app", "production", env=env)
    assert backup.returncode == 0, backup.stderr
    manifests = list((tmp_path / "backups" / "app" / "production").glob("*.dump.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    assert manifest["compression"] == compression
    assert manifest["identifier"] == "app" and manifest["env"] == "production"
    assert manifest["size_bytes"] == (tmp_path / "backups" / manifest["key"]).stat().st_size
    if compression.startswith("gzip"):
        assert manifest["uncompressed_bytes"] is None  # pg_dump compressed it itself
    else:
        assert manifest["uncompressed_bytes"] >= manifest["size_bytes"] > 0
    assert manifest["compressed_by"] == ("zstd" if compression.startswith("zstd") else "pg_dump")

    restored = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)
    assert restored.returncode == 0, restored.stderr
    assert f"backup {manifest['id']}" in restored.stdout
    if mode == "parallel":  # db-backup's archives are written through a pipe: the offsets come after the download
        assert "wrote the data offsets of 2 tables" in restored.stderr, restored.stderr
    assert fingerprint(pg, beta_db) == fingerprint(pg, dbname)
    # The database it replaced is kept for a one-step rollback, with its old rows.
    with pg.connect(f"{beta_db}__previous") as conn:
        assert conn.execute("SELECT count(*) FROM marker").fetchone() == (500,)
    assert restore_leftovers(pg) == set()


def test_list_shows_complete_backups_newest_first(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> None:
    fill_small(pg, dbname, "x")
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, "file://./backups")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    for _ in range(2):
        assert run_cli("backup", "app", "production", env=env).returncode == 0
    listed = run_cli("list", "app", "production", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert len(entries) == 2
    assert [e["status"] for e in entries] == ["complete", "complete"]
    assert entries[0]["id"] > entries[1]["id"] or entries[0]["id"].endswith("_2")
    assert all(len(e["sha256"]) == 64 for e in entries)
    table = run_cli("list", "app", "production", env=env)
    assert "complete" in table.stdout and entries[0]["id"] in table.stdout.splitlines()[1]


def test_restore_into_a_url_creates_the_missing_database(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> None:
    fill_rich(pg, dbname)
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, "file://./backups")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "PGPASSWORD": pg.password}
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    local = f"{dbname}__laptop"
    result = run_cli("restore", "app", "--from", "production", "--to-url", pg.url(local, password=False), env=env)
    assert result.returncode == 0, result.stderr
    assert fingerprint(pg, local) == fingerprint(pg, dbname)
    assert f"{local}__previous" not in pg.databases()


def test_restore_keeps_owner_and_drops_previous_when_asked(pg: PgCluster, dbname: str, beta_db: str, tmp_path: Path, pg_env: dict[str, str]) -> None:
    fill_small(pg, dbname, "prod")
    with pg.connect() as conn:
        conn.execute("DO $$ BEGIN CREATE ROLE app_owner; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        conn.execute(f'ALTER DATABASE "{beta_db}" OWNER TO app_owner')
        conn.execute(f'ALTER DATABASE "{beta_db}" SET work_mem TO \'12MB\'')
        conn.execute(f'ALTER DATABASE "{beta_db}" SET search_path TO "$user", public, shop')
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta_db}, "file://./backups",
                            extra="keep_previous: false")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    result = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)
    assert result.returncode == 0, result.stderr
    with pg.connect() as conn:
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (beta_db,)).fetchone()
        settings = conn.execute(
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s", (beta_db,)
        ).fetchone()
    assert owner == ("app_owner",)
    assert settings is not None and sorted(settings[0]) == sorted(["work_mem=12MB", 'search_path="$user", public, shop'])
    assert f"{beta_db}__previous" not in pg.databases()
    assert fingerprint(pg, beta_db) == fingerprint(pg, dbname)


def test_restore_disconnects_sessions_on_the_target(pg: PgCluster, dbname: str, beta_db: str, tmp_path: Path, pg_env: dict[str, str]) -> None:
    import psycopg

    fill_small(pg, dbname, "prod")
    fill_small(pg, beta_db, "beta")
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta_db}, "file://./backups")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    idle = pg.connect(beta_db)
    in_transaction = pg.connect(beta_db, autocommit=False)
    in_transaction.execute("SELECT * FROM marker FOR UPDATE")
    try:
        result = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        for conn in (idle, in_transaction):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
    finally:
        idle.close()
        in_transaction.close()
    with pg.connect(beta_db) as conn:
        assert conn.execute("SELECT min(label) FROM marker").fetchone() == ("prod1",)


def test_names_near_the_identifier_limit(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> None:
    fill_small(pg, dbname, "prod")
    long_name = (dbname + "__" + "x" * 63)[:63]
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{long_name}"')
    fill_small(pg, long_name, "long")
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": long_name}, "file://./backups")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    for _ in range(2):  # the second time a shortened __previous already exists and is replaced
        result = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)
        assert result.returncode == 0, result.stderr
    names = pg.databases()
    assert long_name in names
    previous = [n for n in names if n.startswith(long_name[:20]) and n.endswith("__previous")]
    assert len(previous) == 1 and len(previous[0].encode()) <= 63
    with pg.connect(previous[0]) as conn:
        assert conn.execute("SELECT min(label) FROM marker").fetchone() == ("prod1",)
    assert restore_leftovers(pg) == set()
