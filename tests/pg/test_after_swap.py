"""Once the swap has committed, the target holds the restored data: no message may say otherwise.

Fault injection (in process, through the real CLI entry point): a signal or an error is raised at
the points after the commit; the output must never call the target "unchanged", and the data and
the leftovers must match what the last line says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner import restore
from runner.errors import Interrupted
from runner.pg import admin
from tests.conftest import PgCluster, fill_small, restore_leftovers, write_targets
from tests.helpers.cli import run_main


@pytest.fixture
def beta(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    fill_small(pg, dbname, "prod")
    fill_small(pg, name, "oldbeta")
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    return name


def _targets(pg: PgCluster, dbname: str, beta: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_previous: bool) -> None:
    extra = "" if keep_previous else "keep_previous: false"
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta}, f"file://{tmp_path}/backups", extra=extra)
    monkeypatch.setenv("DB_BACKUP_TARGETS", str(targets))


def _fail_dropping(pg: PgCluster, name: str, error: BaseException, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropping `name` raises `error` (while it still exists); every other drop is real."""
    real_drop = admin.drop_database

    def drop(conn: Any, dropped: str) -> None:
        if dropped == name and dropped in pg.databases():
            raise error
        real_drop(conn, dropped)

    monkeypatch.setattr(admin, "drop_database", drop)


def _label(pg: PgCluster, name: str) -> str:
    with pg.connect(name) as conn:
        row = conn.execute("SELECT min(label) FROM marker").fetchone()
    assert row is not None
    return str(row[0])


def test_signal_while_dropping_the_old_database(
    pg: PgCluster, dbname: str, beta: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    _targets(pg, dbname, beta, tmp_path, monkeypatch, keep_previous=False)
    assert run_main(["backup", "app", "production"], capsys).code == 0
    # Lands while keep_previous: false drops the old data.
    _fail_dropping(pg, f"{beta}__previous", Interrupted("cancelled by SIGTERM"), monkeypatch)

    run = run_main(["restore", "app", "--from", "production", "--to", "beta"], capsys)
    code, output = run.code, run.output

    assert code == 130, output
    assert output.strip().splitlines()[-1] == (
        f"error: cancelled by SIGTERM after the swap: {beta} already holds the restored backup; "
        f"the old data is kept as {beta}__previous"
    )
    assert "unchanged" not in output
    assert _label(pg, beta) == "prod1"
    assert _label(pg, f"{beta}__previous") == "oldbeta1"
    assert restore_leftovers(pg) == set()


def test_signal_after_the_swap_committed(
    pg: PgCluster, dbname: str, beta: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    _targets(pg, dbname, beta, tmp_path, monkeypatch, keep_previous=True)
    assert run_main(["backup", "app", "production"], capsys).code == 0

    def checkpoints(_settings: Any) -> Any:
        def at(step: str) -> None:
            if step == "swap:committed":
                raise Interrupted("cancelled by SIGINT")  # lands right after both renames committed
        return at

    monkeypatch.setattr(restore, "checkpoints", checkpoints)

    run = run_main(["restore", "app", "--from", "production", "--to", "beta"], capsys)
    code, output = run.code, run.output

    assert code == 130, output
    assert output.strip().splitlines()[-1] == (
        f"error: cancelled by SIGINT after the swap: {beta} already holds the restored backup; "
        f"the old data is kept as {beta}__previous"
    )
    assert "INFO restoring" in output  # the log is part of what is checked
    assert "unchanged" not in output and "dropping" not in output
    assert _label(pg, beta) == "prod1"
    assert f"{beta}__previous" in pg.databases()
    assert restore_leftovers(pg) == set()


def test_failing_to_drop_the_old_database_still_restores(
    pg: PgCluster, dbname: str, beta: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    _targets(pg, dbname, beta, tmp_path, monkeypatch, keep_previous=False)
    assert run_main(["backup", "app", "production"], capsys).code == 0
    _fail_dropping(pg, f"{beta}__previous", psycopg.errors.InsufficientPrivilege("must be owner of database"), monkeypatch)

    run = run_main(["restore", "app", "--from", "production", "--to", "beta"], capsys)
    code, output = run.code, run.output

    assert code == 0, output
    assert (f"{beta} holds the restored backup, but dropping the old data {beta}__previous failed: "
            "must be owner of database; drop it by hand") in output
    assert f"previous database kept as {beta}__previous" in output
    assert "unchanged" not in output
    assert _label(pg, beta) == "prod1"
