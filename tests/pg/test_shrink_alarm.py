"""The shrink alarm on a real database emptied between two backups: a warning, a red status, and what clears it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import PgCluster, run_cli, write_targets

BIG_ROWS = 20_000


def _fill(pg: PgCluster, dbname: str) -> None:
    with pg.connect(dbname) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS events (id int PRIMARY KEY, payload text NOT NULL)")
        conn.execute("INSERT INTO events SELECT g, md5(g::text) || repeat('x', 100) FROM generate_series(1, %s) g", (BIG_ROWS,))


def _backup_id(stdout: str) -> str:
    """The id from the line "backup ID of app/production: ..." (on GitHub, mask commands come first)."""
    [line] = [line for line in stdout.splitlines() if line.startswith("backup ")]
    return line.split()[1]


def _backup(env: dict[str, str]) -> str:
    result = run_cli("backup", "app", "production", env=env)
    assert result.returncode == 0, result.stderr
    return _backup_id(result.stdout)


@pytest.fixture
def emptied(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> tuple[dict[str, str], str, Path]:
    """Three nights of a full database, then the night after its big table was emptied: the alarm fired."""
    _fill(pg, dbname)
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, "file://./backups")
    summary = tmp_path / "summary.md"
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    for _ in range(3):
        _backup(env)
    with pg.connect(dbname) as conn:
        conn.execute("TRUNCATE events")
    on_github = {**env, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    result = run_cli("backup", "app", "production", env=on_github)
    assert result.returncode == 0, result.stderr  # the backup itself is good: it completes
    small = _backup_id(result.stdout)
    assert f"WARNING shrink alarm: app/production: backup {small} shrank to" in result.stderr, result.stderr
    assert "of the median" in result.stderr and f"run `db-backup ack app production {small}`" in result.stderr
    [annotation] = [line for line in result.stdout.splitlines() if line.startswith("::warning")]
    assert annotation.startswith("::warning title=db-backup shrink alarm app/production::app/production: backup ")
    assert f"db-backup ack app production {small}" in annotation
    assert "Shrink alarm" in summary.read_text()
    return env, small, tmp_path


def test_status_fails_on_the_shrink_until_it_is_acknowledged(emptied: tuple[dict[str, str], str, Path]) -> None:
    env, small, tmp_path = emptied
    status = run_cli("status", env=env)
    assert status.returncode == 1, status.stderr
    assert f"backup {small} shrank to" in status.stderr and "SHRUNK" in status.stdout
    [row] = json.loads(run_cli("status", "--json", env=env).stdout)
    assert (row["newest"], row["stale"], row["shrink_alarm"], row["trend"]["previous"]) == (small, False, True, 3)

    acked = run_cli("ack", "app", "production", small, "--reason", "emptied on purpose", env={**env, "GITHUB_ACTOR": "octocat"})
    assert acked.returncode == 0, acked.stderr
    assert f"acknowledged backup {small} of app/production as octocat" in acked.stdout
    assert (tmp_path / "backups" / "app" / "production" / f"{small}.dump.ack.json").exists()
    status = run_cli("status", env=env)
    assert status.returncode == 0, status.stderr
    assert "shrunk, acknowledged" in status.stdout

    # The acknowledged backup is the new normal: the next (as small) backup does not fire again.
    result = run_cli("backup", "app", "production", env=env)
    assert result.returncode == 0 and "shrink alarm" not in result.stderr, result.stderr
    assert run_cli("status", env=env).returncode == 0


def test_a_newer_backup_back_in_range_clears_the_shrink(pg: PgCluster, dbname: str, emptied: tuple[dict[str, str], str, Path]) -> None:
    env, small, _ = emptied
    assert run_cli("status", env=env).returncode == 1
    _fill(pg, dbname)
    result = run_cli("backup", "app", "production", env=env)
    assert result.returncode == 0 and "shrink alarm" not in result.stderr, result.stderr
    status = run_cli("status", env=env)
    assert status.returncode == 0, status.stderr
    history = json.loads(run_cli("history", "app", "production", "--json", env=env).stdout)
    assert [b["shrunk"] for b in history["backups"]] == [False, True, False, False, False]
    assert history["backups"][1]["id"] == small and history["sparkline"][-2:] == "▁█"
