"""Fault injection: the thread that moves pg_dump's output into zstd fails mid-dump.

zstd ends cleanly when its input stops early, so without a check a truncated dump would be stored
with a valid manifest. os.splice is replaced to make the failure happen on purpose.
"""

from __future__ import annotations

import errno
import os
import select
import time
from pathlib import Path
from typing import Any

import pytest

from runner.aws import AwsClients
from runner.backup import run_backup
from runner.clock import SystemClock
from runner.errors import ExitCode, JobFailed
from runner.services import Services
from runner.settings import Settings
from runner.targets import load_registry
from tests.conftest import PgCluster, fill_rich, fill_small, write_targets


def _writer_gone(fd: int, timeout_s: float = 30.0) -> None:
    """Wait (bounded) until pg_dump has closed its end of the pipe: it wrote everything and exited."""
    poller = select.poll()
    poller.register(fd, select.POLLHUP)
    deadline = time.monotonic() + timeout_s
    while not any(events & select.POLLHUP for _, events in poller.poll(100)):
        assert time.monotonic() < deadline, "pg_dump never finished writing"


@pytest.mark.parametrize("when", ["after-pg_dump-exited", "mid-dump"])
def test_a_failing_pump_fails_the_backup_and_stores_nothing(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    # Small enough to fit in the pipe's buffer, so pg_dump itself ends well and only the pump fails.
    fill_small(pg, dbname, "x") if when == "after-pg_dump-exited" else fill_rich(pg, dbname)
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, f"file://{tmp_path}/backups", extra="compression: zstd:1")
    target = load_registry(targets).get("app", "production")
    services = Services(settings=Settings(), clock=SystemClock(), aws=AwsClients())
    real_splice = getattr(os, "splice", None)
    calls = 0

    def fail_after_the_first_chunk(src: int, dst: int, count: int, *rest: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1 and real_splice is not None:
            return int(real_splice(src, dst, 1024, *rest))
        if when == "after-pg_dump-exited":
            _writer_gone(src)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "splice", fail_after_the_first_chunk, raising=False)

    with pytest.raises(JobFailed) as failed:
        run_backup(target, services)

    assert str(failed.value).startswith("moving pg_dump's output into zstd failed ([Errno 22] Invalid argument)")
    assert "the backup is incomplete and was not kept" in str(failed.value)
    assert failed.value.exit_code == ExitCode.FAILED
    stored = [p for p in (tmp_path / "backups").rglob("*") if p.is_file()] if (tmp_path / "backups").exists() else []
    assert stored == []
    monkeypatch.undo()
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)
    # The same pipeline works once the pump does: the failure above was the injected one.
    assert run_backup(target, services).manifest.uncompressed_bytes
