"""scripts/demo.py's PostgreSQL cluster: running until `stop`, and never left running without its folder."""

from __future__ import annotations

import importlib.util
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from runner.errors import InfraError
from runner.pg import cluster
from tests.conftest import REPO


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """scripts/demo.py, its state file in tmp_path."""
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "DEMO", tmp_path)
    monkeypatch.setattr(module, "STATE", tmp_path / "cluster.json")
    return module


def _postmaster(datadir: Path) -> int:
    return int((datadir / "postmaster.pid").read_text().splitlines()[0])


def _is_postgres(pid: int) -> bool:
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _start_then(monkeypatch: pytest.MonkeyPatch, after: Callable[[], None]) -> dict[str, Any]:
    """Make the server start for real, then `after` happen inside the start; what it started is recorded."""
    real_start = cluster._start
    seen: dict[str, Any] = {}

    def start(bindir: Path, root: Path, pgdata: Path, port: int, extra: str) -> None:
        real_start(bindir, root, pgdata, port, extra)
        seen.update(root=root, pid=_postmaster(pgdata))
        after()

    monkeypatch.setattr(cluster, "_start", start)
    return seen


def _timeout() -> None:
    raise InfraError("pg_ctl start did not finish within 90s")


def _ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize(("after", "raised"), [(_timeout, InfraError), (_ctrl_c, KeyboardInterrupt)], ids=["timeout", "ctrl-c"])
def test_a_start_that_fails_once_the_server_is_up_stops_it_before_removing_its_folder(
    demo: ModuleType, monkeypatch: pytest.MonkeyPatch, after: Callable[[], None], raised: type[BaseException],
) -> None:
    seen = _start_then(monkeypatch, after)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(raised):
            demo.start_cluster()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen, "the server never started"
    assert not _is_postgres(seen["pid"]), "the server outlived the failed start"
    assert not seen["root"].exists()
    assert not demo.STATE.exists()


def test_the_demo_cluster_runs_until_stop(demo: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    running = demo.start_cluster()
    try:
        with psycopg.connect(host=running.host, port=running.port, user=running.user, password=demo.PASSWORD,
                             dbname="postgres", connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        pid = _postmaster(Path(running.datadir))
        assert demo.STATE.exists()
    finally:
        assert demo.stop_cluster() == 0
    assert capsys.readouterr().out == (f"stopped the demo PostgreSQL cluster on {running.host}:{running.port} "
                                       f"and removed its data ({running.root})\n")
    assert not _is_postgres(pid) and not Path(running.root).exists() and not demo.STATE.exists()
    assert demo.stop_cluster() == 0
    assert capsys.readouterr().out == "no demo PostgreSQL cluster is running; nothing to stop\n"
