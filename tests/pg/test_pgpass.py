"""Without a password from db-backup, pg_dump/pg_restore find it where the connection check did.

The check (libpq inside db-backup) reads PGPASSWORD, PGPASSFILE or ~/.pgpass; the tools must use the
same source, or a restore that passed the check fails in pg_restore with "no password supplied".
The password still never reaches a tool's argv or environment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PgCluster, fill_rich, fill_small, fingerprint, record_spawns, run_cli, write_targets
from tests.helpers.cli import run_main


@pytest.fixture
def home(pg: PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME whose ~/.pgpass holds the password, and no other password source in the environment."""
    for var in ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "TEST_PG_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "home"
    folder.mkdir()
    pgpass = folder / ".pgpass"
    pgpass.write_text(f"{pg.host}:{pg.port}:*:{pg.user}:{pg.password}\n")
    pgpass.chmod(0o600)  # libpq ignores a passfile others can read
    monkeypatch.setenv("HOME", str(folder))
    return folder


def _no_password_targets(pg: PgCluster, tmp_path: Path, dbnames: dict[str, str]) -> Path:
    targets = write_targets(tmp_path / "targets.yaml", pg, dbnames, "file://./backups")
    targets.write_text(targets.read_text().replace("password: env:TEST_PG_PASSWORD", "password: null"))
    return targets


def test_restore_to_a_url_without_a_password_uses_the_users_pgpass(pg: PgCluster, dbname: str, tmp_path: Path, home: Path) -> None:
    fill_rich(pg, dbname)
    env = {"DB_BACKUP_TARGETS": str(_no_password_targets(pg, tmp_path, {"production": dbname}))}
    backup = run_cli("backup", "app", "production", env=env, cwd=tmp_path)
    assert backup.returncode == 0, backup.stderr
    local = f"{dbname}__laptop"

    restored = run_cli("restore", "app", "--from", "production", "--to-url", pg.url(local, password=False), env=env, cwd=tmp_path)

    assert restored.returncode == 0, restored.stderr
    assert fingerprint(pg, local) == fingerprint(pg, dbname)


def test_pgpassfile_is_honoured_and_its_absence_fails_in_the_connection_check(
    pg: PgCluster, dbname: str, tmp_path: Path, home: Path
) -> None:
    fill_small(pg, dbname, "x")
    elsewhere = tmp_path / "elsewhere.pgpass"
    (home / ".pgpass").rename(elsewhere)
    env = {"DB_BACKUP_TARGETS": str(_no_password_targets(pg, tmp_path, {"production": dbname}))}
    assert run_cli("backup", "app", "production", env={**env, "PGPASSFILE": str(elsewhere)}, cwd=tmp_path).returncode == 0
    # No source at all: the connection check says so, before pg_dump starts or anything is stored.
    missing = run_cli("backup", "app", "production", env=env, cwd=tmp_path)
    assert missing.returncode == 1
    assert "cannot connect to" in missing.stderr and "no password supplied" in missing.stderr
    assert "pg_dump failed" not in missing.stderr
    assert len(list((tmp_path / "backups").rglob("*.dump.json"))) == 1


def test_pgpassword_reaches_the_tools_only_through_a_private_passfile(
    pg: PgCluster, dbname: str, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_small(pg, dbname, "x")
    (home / ".pgpass").unlink()
    monkeypatch.setenv("PGPASSWORD", pg.password)
    monkeypatch.setenv("DB_BACKUP_TARGETS", str(_no_password_targets(pg, tmp_path, {"production": dbname})))
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.chdir(tmp_path)
    spawned = record_spawns(monkeypatch)
    local = f"{dbname}__laptop"
    for argv in (["backup", "app", "production"], ["restore", "app", "--from", "production", "--to-url", pg.url(local, password=False)]):
        run = run_main(argv, capsys)
        assert run.code == 0, run.err
    tools = [s for s in spawned if Path(s["argv"][0]).name in ("pg_dump", "pg_restore")]
    assert {Path(s["argv"][0]).name for s in tools} == {"pg_dump", "pg_restore"}
    for child in spawned:
        assert not any(pg.password in arg for arg in child["argv"])
        assert not any(pg.password in value for value in child["env"].values()), child["argv"][0]
    assert fingerprint(pg, local) == fingerprint(pg, dbname)
