"""Progress lines of a backup and a restore when stderr is not a terminal (CI, the ECS task's CloudWatch log)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import PgCluster, fingerprint, run_cli, write_targets

INTERVAL = 0.1
# Three tables whose rows each take a millisecond to check when loaded: the restore lasts several intervals on any machine.
SLOW_TABLES = ("slow_a", "slow_b", "slow_c")
SLOW_ROWS = 150


def _fill(pg: PgCluster, dbname: str) -> None:
    with pg.connect(dbname) as conn:
        # About 60 MB of hex text: pg_dump and zstd take several intervals over it.
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, a text, b text)")
        conn.execute("INSERT INTO big SELECT g, md5(g::text), md5((-g)::text) FROM generate_series(1, 700000) g")
        conn.execute("CREATE FUNCTION slow_ok(int) RETURNS boolean LANGUAGE sql AS 'SELECT pg_sleep(0.001) IS NOT NULL'")
        for name in SLOW_TABLES:
            conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY CHECK (slow_ok(id)))")
            conn.execute(f"INSERT INTO {name} SELECT generate_series(1, {SLOW_ROWS})")


def _progress(stderr: str, title: str) -> list[str]:
    return [line for line in stderr.splitlines() if f" INFO {title}: " in line]


@pytest.fixture
def env(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> dict[str, str]:
    beta = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{beta}"')
    _fill(pg, dbname)
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta}, "file://./backups",
                            extra="compression: zstd:3")
    return {**pg_env, "DB_BACKUP_TARGETS": str(targets), "DB_BACKUP_PROGRESS_INTERVAL": str(INTERVAL)}


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_backup_and_restore_log_progress_every_interval(
    pg: PgCluster, dbname: str, tmp_path: Path, env: dict[str, str], mode: str,
) -> None:
    backup = run_cli("backup", "app", "production", env=env)
    assert backup.returncode == 0, backup.stderr
    manifest = json.loads(next((tmp_path / "backups" / "app" / "production").glob("*.dump.json")).read_text())
    lines = _progress(backup.stderr, "backup of app/production")
    # One line per interval while pg_dump runs (plus the closing totals), never one per chunk.
    assert 2 <= len(lines) <= manifest["duration_s"] / INTERVAL + 3, backup.stderr
    assert all(re.search(r"read \d+(\.\d)? [KMG]?i?B of ~\d", line) for line in lines), lines  # a first backup: ~pg_database_size
    assert all(re.search(r"stored \d+(\.\d)? [KMG]?i?B, ", line) and " elapsed" in line for line in lines), lines
    assert any(re.search(r"[KMG]iB/s, .* elapsed, about .+ left", line) for line in lines), lines
    last = lines[-1]
    # The closing line shows what the manifest records.
    raw = manifest["uncompressed_bytes"] / 2**20
    assert f"read {raw:.1f} MiB" in last and f"stored {manifest['size_bytes'] / 2**20:.1f} MiB" in last, last
    assert env["TEST_PG_PASSWORD"] not in backup.stderr

    restored = run_cli("restore", "app", "--from", "production", "--to", "beta", env={**env, "DB_BACKUP_RESTORE_MODE": mode})
    assert restored.returncode == 0, restored.stderr
    lines = _progress(restored.stderr, f"restore into {dbname}__beta")
    assert len(lines) >= 2, restored.stderr
    done = " ".join(lines)
    # Every table is named once pg_restore finished it, and counted.
    for table in ("big", *SLOW_TABLES):
        assert f"public.{table}" in done, done
    assert "4 tables loaded" in lines[-1], lines[-1]
    if mode == "stream":
        assert f"read {manifest['size_bytes'] / 2**20:.1f} MiB of {manifest['size_bytes'] / 2**20:.1f} MiB (100%)" in lines[-1]
    else:  # the copy for pg_restore -j is downloaded first
        download = _progress(restored.stderr, f"download of {manifest['id']}")
        assert all("downloaded " in line for line in download), restored.stderr
    assert fingerprint(pg, f"{dbname}__beta") == fingerprint(pg, dbname)
    # pg_restore --verbose is chatter, not the log of a restore: only the progress lines show it.
    assert "pg_restore: creating" not in restored.stderr
