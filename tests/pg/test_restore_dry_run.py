"""restore --dry-run on a real server: it says what a restore would do, applies its refusals, and changes nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from runner import restore_preview
from runner.pg.session import lock_target
from tests.conftest import PgCluster, fill_rich, fill_small, fingerprint, free_port, run_cli, write_targets
from tests.helpers.cli import run_main

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


def test_a_dry_run_here_that_cannot_reach_the_server_fails_as_the_restore_would(scene: Scene) -> None:
    away = replace(scene.pg, port=free_port())
    targets = write_targets(scene.tmp_path / "away.yaml", away, {"production": scene.source, "beta": scene.target},
                            f"file://{scene.tmp_path / 'backups'}", extra=ECS_DEFAULTS)
    local = run_cli(*RESTORE, "--dry-run", "--executor", "local", env={**scene.env, "DB_BACKUP_TARGETS": str(targets)})
    assert local.returncode == 1 and "cannot connect to" in local.stderr


def test_a_restore_holding_the_target_is_named_and_the_dry_run_refuses(scene: Scene) -> None:
    before = scene.snapshot()
    with psycopg.connect(host=scene.pg.host, port=scene.pg.port, user=scene.pg.user, password=scene.pg.password,
                         dbname="postgres", autocommit=True) as other:
        lock_target(other, scene.target)  # what a restore into the target holds while it runs
        pid = other.info.backend_pid
        done = run_cli(*RESTORE, "--dry-run", env=scene.env)
    assert done.returncode == 2, done.stderr
    assert f"database: {scene.target} exists" in done.stdout  # the plan is still shown
    said = f"another restore into {scene.target} is running (session {pid} of {scene.pg.user} from "
    assert f"refused:  {said}" in done.stdout and "a restore now would be refused" in done.stdout
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {said}")
    assert scene.snapshot() == before


def test_sessions_on_the_previous_database_are_counted_as_ended(scene: Scene) -> None:
    previous = f"{scene.target}__previous"
    with psycopg.connect(host=scene.pg.host, port=scene.pg.port, user=scene.pg.user, password=scene.pg.password,
                         dbname=previous, application_name="old-report", autocommit=True) as reader:
        pid = reader.info.backend_pid
        done = run_cli(*RESTORE, "--dry-run", env=scene.env)
        assert reader.execute("SELECT 1").fetchone() == (1,)
    assert done.returncode == 0, done.stderr
    assert (f"would end 1 session on {previous} (dropped to make room): pid {pid} old-report "
            f"({scene.pg.user})") in done.stdout
    assert "sessions: none connected now" in done.stdout  # the target's own


def test_the_dry_run_checks_the_pg_restore_a_restore_would_use(scene: Scene) -> None:
    done = run_cli(*RESTORE, "--dry-run", env=scene.env)
    assert done.returncode == 0, done.stderr
    assert "tools:    pg_restore " in done.stdout and "reads this backup's archive" in done.stdout

    old = scene.tmp_path / "old-bin"
    old.mkdir()
    (old / "pg_restore").write_text("#!/bin/sh\necho 'pg_restore (PostgreSQL) 8.4.22'\n")
    (old / "pg_restore").chmod(0o755)
    refused = run_cli(*RESTORE, "--dry-run", env={**scene.env, "DB_BACKUP_PG_BINDIR": str(old)})
    assert refused.returncode == 2
    assert "which pg_restore 8.4.22 cannot read" in refused.stderr


def test_a_server_that_cannot_say_whether_the_target_exists_is_an_error(
    scene: Scene, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in scene.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(restore_preview, "database_exists", lambda _admin, _name: None)
    run = run_main([*RESTORE, "--dry-run"], capsys)
    assert run.code == 1
    assert f"cannot tell whether database {scene.target} exists" in run.err
    assert "does not exist" not in run.out
