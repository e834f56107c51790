"""restore --dry-run on a real server: it says what a restore would do, applies its refusals, and changes nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import PgCluster, fill_rich, fill_small, fingerprint, free_port, run_cli, write_targets

RESTORE = ("restore", "app", "--from", "production", "--to", "beta")
ECS_DEFAULTS = "ecs:\n  cluster: db-backup\n  task_definition: db-backup\n  subnets: [subnet-a]"


@dataclass(frozen=True)
class Scene:
    pg: PgCluster
    target: str
    source: str
    tmp_path: Path
    env: dict[str, str]

    def snapshot(self) -> tuple[object, ...]:
        """Everything a restore could change: the server's databases and their data, the store's objects, the temp folder."""
        databases = sorted(self.pg.databases())
        mine = {name: fingerprint(self.pg, name) for name in databases if name.startswith(self.target)}
        store = {str(p.relative_to(self.tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted((self.tmp_path / "backups").rglob("*")) if p.is_file()}
        temp = sorted(p.name for p in (self.tmp_path / "tmp").iterdir())
        return databases, mine, store, temp


@pytest.fixture
def scene(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> Scene:
    """production has one backup; beta has been restored once, so it has a __previous too."""
    source = f"{dbname}__src"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(source)))
    fill_rich(pg, source)
    fill_small(pg, dbname, "beta")
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": source, "beta": dbname}, f"file://{tmp_path / 'backups'}")
    (tmp_path / "tmp").mkdir()
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "TMPDIR": str(tmp_path / "tmp")}
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    done = run_cli(*RESTORE, env=env)
    assert done.returncode == 0, done.stderr
    return Scene(pg, dbname, source, tmp_path, env)


@pytest.fixture
def session_on_target(scene: Scene) -> Iterator[psycopg.Connection]:
    conn = psycopg.connect(host=scene.pg.host, port=scene.pg.port, user=scene.pg.user, password=scene.pg.password,
                           dbname=scene.target, application_name="report-tool", autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def test_dry_run_says_what_would_happen_and_changes_nothing(scene: Scene, session_on_target: psycopg.Connection) -> None:
    (manifest,) = (scene.tmp_path / "backups" / "app" / "production").glob("*.dump.json")
    backup_id = manifest.name.removesuffix(".dump.json")
    before = scene.snapshot()

    done = run_cli(*RESTORE, "--dry-run", "--with-roles", env=scene.env)

    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("dry run: nothing was changed")
    assert f"backup:   app/production {backup_id} (complete, " in out and "created " in out
    assert f"target:   app/beta, database {scene.target}" in out
    assert f"database: {scene.target} exists" in out
    assert "sessions: 1 session would be ended now" in out and "report-tool" in out and scene.pg.user in out
    assert f"kept as {scene.target}__previous; the existing {scene.target}__previous would be dropped first" in out
    assert "mode:     stream" in out
    assert "roles:    every role the backup needs exists" in out
    assert scene.pg.password not in done.stdout + done.stderr
    assert scene.snapshot() == before
    assert session_on_target.execute("SELECT 1").fetchone() == (1,)  # the session was only counted


def test_dry_run_into_a_new_database_says_it_would_be_created(scene: Scene) -> None:
    new = f"{scene.target}__laptop"
    done = run_cli("restore", "app", "--from", "production", "--to-url", scene.pg.url(new, password=False), "--dry-run",
                   env={**scene.env, "PGPASSWORD": scene.pg.password})
    assert done.returncode == 0, done.stderr
    assert f"database: {new} does not exist; it would be created" in done.stdout
    assert new not in scene.pg.databases()


def test_dry_run_applies_the_refusals_of_a_restore(scene: Scene) -> None:
    before = scene.snapshot()
    refused = run_cli("restore", "app", "--from", "beta", "--to", "production", "--dry-run", env=scene.env)
    assert refused.returncode == 2
    assert "refusing to restore app/beta into app/production" in refused.stderr
    protected = run_cli("restore", "app", "--from", "production", "--to", "production", "--dry-run", env=scene.env)
    assert protected.returncode == 2
    assert "app/production is protected; add --confirm production" in protected.stderr
    unknown = run_cli(*RESTORE, "--backup", "2020-01-01_00-00-00", "--dry-run", env=scene.env)
    assert unknown.returncode == 2 and "no backup 2020-01-01_00-00-00" in unknown.stderr
    assert scene.snapshot() == before


def test_an_ecs_dry_run_runs_here_and_says_when_the_server_is_out_of_reach(scene: Scene) -> None:
    """The database of an ECS target may be reachable only from the task's network: the rest is still shown."""
    away = replace(scene.pg, port=free_port())
    targets = write_targets(scene.tmp_path / "ecs.yaml", away, {"production": scene.source, "beta": scene.target},
                            f"file://{scene.tmp_path / 'backups'}", extra=ECS_DEFAULTS)
    done = run_cli(*RESTORE, "--dry-run", env={**scene.env, "DB_BACKUP_TARGETS": str(targets)})
    assert done.returncode == 0, done.stderr
    assert "server:   not reachable from here (cannot connect to" in done.stdout
    assert "runs:     in an ECS task" in done.stdout and "backup:   app/production " in done.stdout
    # Run locally, the same restore would fail at that connection: so does its dry run.
    local = run_cli(*RESTORE, "--dry-run", "--executor", "local", env={**scene.env, "DB_BACKUP_TARGETS": str(targets)})
    assert local.returncode == 1 and "cannot connect to" in local.stderr
