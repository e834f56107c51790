"""The folder store end to end: the real CLI and a real PostgreSQL, with the filesystem failing under it."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PgCluster, fill_small, write_targets
from tests.helpers.cli import run_main


@pytest.mark.parametrize(
    ("fault", "code", "reason", "step"),
    [
        # A filesystem without hard links: found when the id is reserved (a link), before pg_dump runs.
        ("link", errno.EPERM, "Operation not permitted", "starting"),
        ("fsync", errno.ENOSPC, "No space left on device", "completing"),  # the disk filled up as the dump ended
    ],
)
def test_a_backup_whose_file_cannot_be_completed_exits_3_and_leaves_nothing(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], fault: str, code: int, reason: str, step: str,
) -> None:
    fill_small(pg, dbname, "prod")
    backups = tmp_path / "backups"
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, f"file://{backups}")
    for name, value in {**pg_env, "DB_BACKUP_TARGETS": str(targets), "DB_BACKUP_PG_BINDIR": str(pg.bindir)}.items():
        monkeypatch.setenv(name, value)

    def failing(*_args: Any, **_kwargs: Any) -> None:  # fault injection in this process; pg_dump is unaffected
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, fault, failing)
    run = run_main(["backup", "app", "production"], capsys)
    exit_code, err = run.code, run.err_lines
    assert exit_code == 3, err
    assert err[-1].startswith(f"error: {step} {backups}/app/production/")
    assert f".dump failed: {reason}; check the folder's" in err[-1] and err[-1].endswith(", then run again")
    assert not any("unexpected" in line or "Traceback" in line for line in err)
    assert [p.name for p in backups.rglob("*") if p.is_file()] == []  # no dump, no manifest, no hidden .partial
