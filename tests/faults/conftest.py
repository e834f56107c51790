"""What the fault tests share: runs that can be killed as a whole tree, and the checks after a kill."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import DB_BACKUP, PgCluster, fingerprint, restore_leftovers, wait_for


@dataclass
class Run:
    """A db-backup process in its own process group, so a kill reaches pg_dump, zstd and pg_restore too."""

    proc: subprocess.Popen[str]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill_tree(self) -> None:
        """kill -9 of the whole tree, as the OOM killer or ECS past its stop timeout would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait(self, timeout: float = 180) -> int:
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def start_cli(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def start(*argv: str, env: dict[str, str], name: str = "run") -> Run:
        err = tmp_path / f"{name}-{len(runs)}.stderr"
        with err.open("w") as handle:
            # As run_cli: no GITHUB_* from a CI runner, which would make the CLI emit masks and summaries.
            base = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
            proc = subprocess.Popen([DB_BACKUP, *argv], env={**base, **env}, stdout=subprocess.DEVNULL,
                                    stderr=handle, text=True, start_new_session=True)
        run = Run(proc, err)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.kill_tree()


def wait_paused(run: Run, step: str, timeout: float = 60) -> None:
    """Until the run reports it holds at `step` (DB_BACKUP_TEST_PAUSE_AT); fails if it ended instead."""
    wait_for(lambda: f"paused at {step}" in run.stderr() or run.proc.poll() is not None, f"the run to reach {step}", timeout)
    assert run.proc.poll() is None, f"the run ended before {step}: {run.stderr()[-2000:]}"


def private_tmp(tmp_path: Path) -> Path:
    """A TMPDIR of the run's own, so a test can see every file it left."""
    folder = tmp_path / "tmp"
    folder.mkdir(exist_ok=True)
    return folder


def files_holding(secret: str, *folders: Path) -> list[Path]:
    """Every file under the folders whose bytes contain the secret."""
    needle = secret.encode()
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


def connectable_fingerprint(pg: PgCluster, dbname: str) -> dict[str, object]:
    """The target as a client sees it right after the fault: it must accept a connection (bounded)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return fingerprint(pg, dbname)
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"{dbname} does not accept connections after the fault: {exc}")
            time.sleep(0.2)


def leftovers(pg: PgCluster, tmp: Path) -> list[str]:
    """What an interrupted run may leave: temporary databases and work folders."""
    found = sorted(restore_leftovers(pg))
    found += sorted(p.name for p in tmp.iterdir() if p.name.startswith(("db-backup-", ".db-backup-")))
    return found
