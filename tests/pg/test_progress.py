"""Progress lines of a backup and a restore when stderr is not a terminal (CI, the ECS task's CloudWatch log).

The CLI runs with a test hook (tests/helpers/progress.py) for a line every 0.1 s: users cannot go below 1 s.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import PgCluster, fingerprint, run_cli, write_targets
from tests.helpers.progress import FAST_INTERVAL, fast_progress_env

INTERVAL = FAST_INTERVAL
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


def _progress(stderr: str, title: str) -> tuple[list[str], str | None]:
    """The periodic lines of a stage, and its closing line (None without one)."""
    lines = stderr.splitlines()
    closing = [line for line in lines if f" INFO {title} finished: " in line]
    assert len(closing) <= 1, closing
    return [line for line in lines if f" INFO {title}: " in line], (closing[0] if closing else None)


@pytest.fixture
def env(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> dict[str, str]:
    beta = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{beta}"')
    _fill(pg, dbname)
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta}, "file://./backups",
                            extra="compression: zstd:3")
    return {**pg_env, "DB_BACKUP_TARGETS": str(targets), **fast_progress_env()}


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_backup_and_restore_log_progress_every_interval(
    pg: PgCluster, dbname: str, tmp_path: Path, env: dict[str, str], mode: str,
) -> None:
    backup = run_cli("backup", "app", "production", env=env)
    assert backup.returncode == 0, backup.stderr
    manifest = json.loads(next((tmp_path / "backups" / "app" / "production").glob("*.dump.json")).read_text())
    lines, last = _progress(backup.stderr, "backup of app/production")
    # One line per interval while pg_dump runs, never one per chunk.
    assert 1 <= len(lines) <= manifest["duration_s"] / INTERVAL + 2, backup.stderr
    assert all(re.search(r"read \d+(\.\d)? [KMG]?i?B of ~\d", line) for line in lines), lines  # a first backup: ~pg_database_size
    assert all(re.search(r"stored \d+(\.\d)? [KMG]?i?B, ", line) and " elapsed" in line for line in lines), lines
    assert any(re.search(r"[KMG]iB/s, .* elapsed, about .+ left", line) for line in lines), lines
    # The closing line gives the totals the manifest records: no share of the estimate, no time left.
    assert last is not None, backup.stderr
    raw = manifest["uncompressed_bytes"] / 2**20
    assert re.search(rf"finished: read {raw:.1f} MiB, stored {manifest['size_bytes'] / 2**20:.1f} MiB, [\d.]+ [KMG]iB/s, "
                     r"[\dms. ]+ in all$", last), last
    assert env["TEST_PG_PASSWORD"] not in backup.stderr

    restored = run_cli("restore", "app", "--from", "production", "--to", "beta", env={**env, "DB_BACKUP_RESTORE_MODE": mode})
    assert restored.returncode == 0, restored.stderr
    lines, last = _progress(restored.stderr, f"restore into {dbname}__beta")
    assert lines and last is not None, restored.stderr
    # Every table is named once pg_restore finished it, and counted.
    done = " ".join(m.group(1) for line in [*lines, last] if (m := re.search(r", done: (.+?)(, loading .+)?$", line)))
    for table in ("big", *SLOW_TABLES):
        assert f"public.{table}" in done, done
    assert "finished: 4 tables loaded" in last or re.search(r"finished: read [\d.]+ MiB, 4 tables loaded", last), last
    assert "%" not in last and " left" not in last and "loading " not in last, last
    if mode == "stream":
        # The stream's size is known, not guessed: the periodic lines count towards it.
        assert any(re.search(rf"read [\d.]+ [KM]?i?B of {manifest['size_bytes'] / 2**20:.1f} MiB \(\d+%\)", line) for line in lines), lines
        assert f"finished: read {manifest['size_bytes'] / 2**20:.1f} MiB, " in last, last
    else:  # pg_restore -j reads the downloaded copy itself: nothing is fed to it
        assert not any(" read " in line for line in [*lines, last]), lines
    assert fingerprint(pg, f"{dbname}__beta") == fingerprint(pg, dbname)
    # pg_restore --verbose is chatter, not the log of a restore: only the progress lines show it.
    assert "pg_restore: creating" not in restored.stderr
