"""Scenes several test modules start from, built on the real test cluster through the real CLI."""

from __future__ import annotations

from pathlib import Path

from psycopg import sql

from tests.conftest import PgCluster, fill_rich, fill_small, run_cli, write_targets


def backed_up_production(pg: PgCluster, beta: str, tmp_path: Path, env: dict[str, str], label: str = "old") -> tuple[str, dict[str, str]]:
    """app/production (`{beta}__src`, rich data, one backup) and app/beta (`beta`, small data labelled `label`): the source's name and `env` with its targets.yaml."""
    source = f"{beta}__src"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(source)))
    fill_rich(pg, source)
    fill_small(pg, beta, label)
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": source, "beta": beta}, f"file://{tmp_path / 'backups'}")
    env = {**env, "DB_BACKUP_TARGETS": str(targets)}
    done = run_cli("backup", "app", "production", env=env)
    assert done.returncode == 0, done.stderr
    return source, env
