"""Where the throwaway cluster finds its server programs, and what it says when they are missing."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from runner import signals
from runner.errors import BadInput, Interrupted
from runner.pg import cluster


def _server(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("initdb", "pg_ctl"):
        (folder / name).write_text("")
    return folder


def test_db_backup_pg_bindir_wins_when_it_holds_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = _server(tmp_path / "17" / "bin")
    monkeypatch.setenv("DB_BACKUP_PG_BINDIR", str(chosen))
    assert cluster.pg_bindir() == chosen


def test_a_client_only_bindir_falls_back_to_the_newest_installed_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client_only = tmp_path / "client"
    client_only.mkdir()
    monkeypatch.setenv("DB_BACKUP_PG_BINDIR", str(client_only))
    found = [str(tmp_path / "usr/lib/postgresql/9/bin"), str(tmp_path / "usr/lib/postgresql/16/bin")]
    for path in found:
        _server(Path(path))
    monkeypatch.setattr(cluster.glob, "glob", lambda _pattern: found)
    monkeypatch.setattr(cluster, "_major_of", lambda path: int(Path(path).parent.name))
    assert cluster.pg_bindir() == Path(found[1])


def test_missing_server_programs_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_BACKUP_PG_BINDIR", str(tmp_path))
    monkeypatch.setattr(cluster.glob, "glob", lambda _pattern: [])
    with pytest.raises(BadInput) as caught:
        cluster.pg_bindir()
    message = str(caught.value)
    assert "initdb and pg_ctl are missing" in message and str(tmp_path) in message
    assert "apt-get install postgresql-17" in message and "DB_BACKUP_PG_BINDIR" in message


def test_the_password_stays_out_of_the_clusters_repr(tmp_path: Path) -> None:
    made = cluster.Cluster("127.0.0.1", 5432, "postgres", "s3cret-pw", tmp_path, tmp_path)
    assert "s3cret-pw" not in repr(made) and "s3cret-pw" not in made.url() and "s3cret-pw" not in repr(made.connection())


def test_the_server_gets_a_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restored dump's SQL runs as the server's superuser and could read the server's environment."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-4711")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-secret")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.delenv("TMPDIR", raising=False)
    env = cluster.server_env()
    assert env == {"PATH": os.environ["PATH"], "LC_ALL": "C", "TZ": "UTC"}


def test_only_the_clusters_own_postmaster_is_killed(tmp_path: Path) -> None:
    assert not cluster._is_postmaster_of(os.getpid(), tmp_path)  # pytest, not postgres
    assert not cluster._is_postmaster_of(2**22 + 1, tmp_path)  # no such process


def test_a_second_cancel_during_teardown_waits_until_the_cluster_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GitHub sends SIGINT, then SIGTERM: the second must not skip the stop or the folder's removal."""
    monkeypatch.setattr(cluster, "_initdb", lambda *_args: None)
    monkeypatch.setattr(cluster, "_start", lambda *_args: None)
    stopped: list[Path] = []

    def stop(_bindir: Path, pgdata: Path) -> None:
        signal.raise_signal(signal.SIGTERM)  # the second cancel, mid-teardown
        stopped.append(pgdata)

    monkeypatch.setattr(cluster, "_stop", stop)
    previous = signal.signal(signal.SIGTERM, signals.on_signal)
    try:
        with pytest.raises(Interrupted, match="SIGTERM"), cluster.throwaway_cluster("pw", bindir=tmp_path, parent=tmp_path) as made:
            root = made.datadir.parent
        assert stopped == [made.datadir] and not root.exists()
    finally:
        signal.signal(signal.SIGTERM, previous)
