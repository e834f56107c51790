"""Failures and refusals: the target is never touched, storage never holds half a backup."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    PgCluster,
    backup_with_database_dropped_mid_dump,
    fill_small,
    fingerprint,
    restore_leftovers,
    run_cli,
    write_targets,
)


@pytest.fixture
def setup(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> tuple[dict[str, str], str, str]:
    beta = f"{dbname}__beta"
    alpha = f"{dbname}__alpha"
    for name in (beta, alpha):
        with pg.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    fill_small(pg, dbname, "prod")
    fill_small(pg, beta, "beta")
    fill_small(pg, alpha, "alpha")
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta, "alpha": alpha}, "file://./backups")
    return {**pg_env, "DB_BACKUP_TARGETS": str(targets)}, beta, alpha


def _stored(tmp_path: Path) -> list[str]:
    root = tmp_path / "backups"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _only_manifest(tmp_path: Path) -> Path:
    (manifest,) = (tmp_path / "backups").rglob("*.dump.json")
    return manifest


def test_checksum_mismatch_leaves_target_untouched(pg: PgCluster, setup: tuple[dict[str, str], str, str], tmp_path: Path) -> None:
    env, beta, _ = setup
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    manifest_path = _only_manifest(tmp_path)
    manifest = json.loads(manifest_path.read_text())
    manifest["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    before = fingerprint(pg, beta)
    for mode in ("stream", "parallel"):
        result = run_cli("restore", "app", "--from", "production", "--to", "beta", "--backup", manifest["id"],
                         env={**env, "DB_BACKUP_RESTORE_MODE": mode})
        assert result.returncode == 1, result.stderr
        assert "checksum mismatch" in result.stderr
        assert fingerprint(pg, beta) == before
        assert restore_leftovers(pg) == set()
        assert f"{beta}__previous" not in pg.databases()


@pytest.mark.parametrize("mode", ["stream", "parallel"])
@pytest.mark.parametrize("compression", ["none", "zstd:1"])
def test_corrupted_dump_fails_in_pg_restore_and_target_survives(
    pg: PgCluster, setup: tuple[dict[str, str], str, str], tmp_path: Path, mode: str, compression: str
) -> None:
    env, beta, _ = setup
    targets = Path(env["DB_BACKUP_TARGETS"])
    targets.write_text(targets.read_text().replace("  region: us-east-1", f"  region: us-east-1\n  compression: {compression}"))
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    manifest_path = _only_manifest(tmp_path)
    manifest = json.loads(manifest_path.read_text())
    dump = tmp_path / "backups" / manifest["key"]
    data = dump.read_bytes()
    # Truncated in the middle, with a manifest that matches: only pg_restore (or zstd) can notice.
    damaged = data[: len(data) // 2]
    dump.write_bytes(damaged)
    import hashlib

    manifest.update(sha256=hashlib.sha256(damaged).hexdigest(), size_bytes=len(damaged))
    manifest_path.write_text(json.dumps(manifest))
    before = fingerprint(pg, beta)
    result = run_cli("restore", "app", "--from", "production", "--to", "beta", env={**env, "DB_BACKUP_RESTORE_MODE": mode})
    assert result.returncode == 1, result.stderr
    assert "failed" in result.stderr.splitlines()[-1]
    assert result.stderr.splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.stderr
    assert fingerprint(pg, beta) == before
    assert restore_leftovers(pg) == set()


def test_backup_with_wrong_password_leaves_nothing(pg: PgCluster, setup: tuple[dict[str, str], str, str], tmp_path: Path) -> None:
    env, _, _ = setup
    result = run_cli("backup", "app", "production", env={**env, "TEST_PG_PASSWORD": "not-the-password"})
    assert result.returncode == 1
    assert "password authentication failed" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout
    assert _stored(tmp_path) == []


def test_database_dropped_mid_dump_leaves_nothing(pg: PgCluster, dbname: str, setup: tuple[dict[str, str], str, str], tmp_path: Path) -> None:
    env, _, _ = setup
    partial = tmp_path / "backups" / "app" / "production"
    code, err = backup_with_database_dropped_mid_dump(pg, dbname, env, lambda: any(partial.glob(".*.partial")))
    assert code == 1, err
    assert "pg_dump failed" in err
    assert _stored(tmp_path) == []
    assert list(partial.iterdir()) == []


def test_refusals_touch_nothing(pg: PgCluster, setup: tuple[dict[str, str], str, str], tmp_path: Path) -> None:
    env, beta, alpha = setup
    assert run_cli("backup", "app", "alpha", env=env).returncode == 0
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    databases = pg.databases()
    prints = {name: fingerprint(pg, name) for name in (beta, alpha)}
    cases = [
        (["restore", "app", "--from", "alpha", "--to", "production"], "refusing to restore app/alpha into app/production"),
        (["restore", "app", "--from", "beta", "--to", "production", "--confirm", "production"], "refusing"),
        (["restore", "app", "--from", "production", "--to", "production"], "add --confirm production"),
        (["restore", "app", "--from", "production", "--to", "production", "--confirm", "beta"], "add --confirm production"),
        (["restore", "nope", "--from", "production", "--to", "beta"], "unknown target 'nope'"),
        (["restore", "app", "--from", "dev", "--to", "beta"], "app has no target in environment 'dev'"),
        (["restore", "app", "--from", "beta", "--to", "alpha"], "no backup to restore for app/beta"),
        (["restore", "app", "--from", "production", "--to", "beta", "--backup", "2001-01-01_00-00-00"], "no backup 2001-01-01_00-00-00"),
        (["restore", "app", "--from", "production", "--to", "beta", "--backup", "yesterday"], "not of the form"),
        (["restore", "app", "--from", "production"], "give exactly one of --to ENV or --to-url URL"),
        (["restore", "app", "--from", "production", "--to", "beta", "--to-url", "postgresql://x/y"], "give exactly one"),
        (["backup", "app", "staging"], "app has no target in environment 'staging'"),
        (["list", "ghost", "beta"], "unknown target 'ghost'"),
    ]
    for argv, words in cases:
        result = run_cli(*argv, env=env)
        assert result.returncode == 2, (argv, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, result.stderr)
        assert words in lines[0], (argv, lines[0])
    assert pg.databases() == databases
    assert {name: fingerprint(pg, name) for name in (beta, alpha)} == prints


def test_upward_restore_allowed_when_the_target_says_so(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> None:
    alpha = f"{dbname}__alpha"
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{alpha}"')
    fill_small(pg, alpha, "alpha")
    targets = write_targets(tmp_path / "targets.yaml", pg, {"beta": dbname, "alpha": alpha}, "file://./backups",
                            target_extra="allow_upward_restore: true")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    assert run_cli("backup", "app", "alpha", env=env).returncode == 0
    result = run_cli("restore", "app", "--from", "alpha", "--to", "beta", env=env)
    assert result.returncode == 0, result.stderr
    assert fingerprint(pg, dbname) == fingerprint(pg, alpha)


def test_protected_restore_with_confirm(pg: PgCluster, dbname: str, setup: tuple[dict[str, str], str, str]) -> None:
    env, _, _ = setup
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    result = run_cli("restore", "app", "--from", "production", "--to", "production", "--confirm", "production", env=env)
    assert result.returncode == 0, result.stderr
    assert f"{dbname}__previous" in pg.databases()


def test_legacy_dump_restores_by_id_and_as_fallback(pg: PgCluster, dbname: str, setup: tuple[dict[str, str], str, str], tmp_path: Path) -> None:
    env, beta, _ = setup
    folder = tmp_path / "backups" / "app" / "production"
    folder.mkdir(parents=True)
    # The old system: plain pg_dump -Fc (default gzip) under {identifier}/{env}/{timestamp}.dump, no manifest.
    subprocess.run(
        [str(pg.bindir / "pg_dump"), "-Fc", "-h", pg.host, "-p", str(pg.port), "-U", pg.user, "-f", str(folder / "2021-03-04_05-06-07.dump"), dbname],
        env={**os.environ, "PGPASSWORD": pg.password}, check=True, timeout=120,
    )
    listed = run_cli("list", "app", "production", "--json", env=env)
    assert json.loads(listed.stdout)[0]["status"] == "legacy"
    result = run_cli("restore", "app", "--from", "production", "--to", "beta", "--backup", "2021-03-04_05-06-07", env=env)
    assert result.returncode == 0, result.stderr
    assert "legacy dump, no checksum" in result.stdout
    assert fingerprint(pg, beta) == fingerprint(pg, dbname)
    result = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)
    assert result.returncode == 0, result.stderr
    assert "falling back to the newest legacy dump 2021-03-04_05-06-07" in result.stderr


def test_status_turns_a_gap_red(pg: PgCluster, setup: tuple[dict[str, str], str, str], tmp_path: Path) -> None:
    env, _, _ = setup
    result = run_cli("status", env=env)
    assert result.returncode == 1
    assert "3 targets have no backup newer than 26h" in result.stderr
    for environment in ("production", "beta"):
        assert run_cli("backup", "app", environment, env=env).returncode == 0
    old = tmp_path / "backups" / "app" / "alpha" / "2020-01-01_00-00-00.dump"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"PGDMP old system")
    result = run_cli("status", "--json", env=env)
    assert result.returncode == 1
    assert [(r["env"], r["stale"]) for r in json.loads(result.stdout)] == [("production", False), ("beta", False), ("alpha", True)]
    assert "1 target has no backup newer than 26h: app/alpha" in result.stderr
    assert run_cli("backup", "app", "alpha", env=env).returncode == 0
    result = run_cli("status", env=env)
    assert result.returncode == 0, result.stderr
    assert "STALE" not in result.stdout
