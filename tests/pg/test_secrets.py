"""A distinctive password never leaks: not in output, logs, manifests, or any child's argv or environment."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner.aws import AwsClients
from runner.backup import run_backup
from runner.services import Services
from runner.settings import Settings
from runner.targets import load_registry
from tests.conftest import PgCluster, fill_small, record_spawns, write_targets
from tests.helpers.cli import run_main
from tests.helpers.clock import FakeClock

SECRET = "Zebra-Quartz-7781-do-not-leak"


@pytest.fixture
def secret_role(pg: PgCluster, dbname: str) -> str:
    role = f"{dbname}_backup"
    with pg.connect() as conn:
        conn.execute(f"CREATE ROLE \"{role}\" LOGIN CREATEDB PASSWORD '{SECRET}'")
        conn.execute(f'ALTER DATABASE "{dbname}" OWNER TO "{role}"')
    with pg.connect(dbname) as conn:
        conn.execute(f'SET ROLE "{role}"')
        conn.execute("CREATE TABLE marker (id int PRIMARY KEY, label text)")
        conn.execute("INSERT INTO marker SELECT g, 'x' || g FROM generate_series(1, 100) g")
    yield role
    with pg.connect() as conn:
        for name in pg.databases():
            if name.startswith(dbname):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_password_never_leaks(
    pg: PgCluster, dbname: str, secret_role: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, "file://./backups")
    targets.write_text(targets.read_text().replace(f"user: {pg.user}", f"user: {secret_role}"))
    monkeypatch.setenv("TEST_PG_PASSWORD", SECRET)
    monkeypatch.setenv("DB_BACKUP_TARGETS", str(targets))
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    spawned = record_spawns(monkeypatch)
    caplog.set_level("DEBUG")
    outputs = []
    for argv in (
        ["--verbose", "backup", "app", "production"],
        ["--verbose", "restore", "app", "--from", "production", "--to-url", f"postgresql://{secret_role}:{SECRET}@{pg.host}:{pg.port}/{dbname}_copy"],
        ["restore", "app", "--from", "production", "--to-url", f"postgresql://{secret_role}:wrong-{SECRET}@{pg.host}:{pg.port}/{dbname}_copy"],
    ):
        run = run_main(argv, capsys)
        code, output = run.code, run.output
        outputs.append((code, output))
    assert [code for code, _ in outputs] == [0, 0, 1]
    assert "password authentication failed" in outputs[2][1]
    tools = {Path(s["argv"][0]).name for s in spawned}
    assert {"pg_dump", "pg_restore"} <= tools
    for child in spawned:
        assert not any(SECRET in arg for arg in child["argv"]), child["argv"]
        assert not any(SECRET in value for value in child["env"].values()), child["argv"][0]
    assert all(SECRET not in output for _, output in outputs)
    assert SECRET not in caplog.text
    for path in (tmp_path / "backups").rglob("*"):
        if path.is_file() and path.suffix == ".json":
            assert SECRET not in path.read_text()
    # Where the job itself resolves a secret on a GitHub runner, it is masked first.
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    run = run_main(["backup", "app", "production"], capsys)
    code, output = run.code, run.output
    assert code == 0
    assert [line for line in output.splitlines() if SECRET in line] == [f"::add-mask::{SECRET}"]


def test_two_backups_in_the_same_second_never_overwrite(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    fill_small(pg, dbname, "x")
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)
    registry = load_registry(write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, "file://./backups"))
    services = Services(settings=Settings(), clock=FakeClock(datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)), aws=AwsClients())
    target = registry.get("app", "production")
    first = run_backup(target, services)
    second = run_backup(target, services)
    assert (first.manifest.id, second.manifest.id) == ("2026-05-06_07-08-09", "2026-05-06_07-08-09_2")
    folder = tmp_path / "backups" / "app" / "production"
    assert sorted(p.name for p in folder.iterdir()) == [
        "2026-05-06_07-08-09.dump", "2026-05-06_07-08-09.dump.json", "2026-05-06_07-08-09.globals.sql",
        "2026-05-06_07-08-09_2.dump", "2026-05-06_07-08-09_2.dump.json", "2026-05-06_07-08-09_2.globals.sql",
    ]
    assert first.manifest.sha256 != "" and second.manifest.created_at == first.manifest.created_at
