"""Once the swap has committed, the target holds the restored data: no message may say otherwise.

Fault injection (in process, through the real CLI entry point): a signal or an error is raised at
the points after the commit; the output must never call the target "unchanged", and the data and
the leftovers must match what the last line says.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runner import restore
from runner.credentials import Connection
from runner.errors import Interrupted, JobFailed
from runner.pg import admin, swap
from tests.conftest import PgCluster, fill_small, restore_leftovers, wait_for, write_targets
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


def _end_the_swap_session(pg: PgCluster) -> None:
    """From outside, end the restore's admin session while its renames wait for COMMIT."""
    with pg.connect() as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction' "
                           "AND query ILIKE 'ALTER DATABASE%RENAME%'").fetchone()
        assert row is not None, "no swap transaction was waiting for its COMMIT"
        conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
    wait_for(lambda: row[0] not in _pids(pg), "the swap's session to end")


def _pids(pg: PgCluster) -> set[int]:
    with pg.connect() as conn:
        return {int(r[0]) for r in conn.execute("SELECT pid FROM pg_stat_activity")}


def _at(step: str, action: Callable[[], None]) -> Callable[[Any], Callable[[str], None]]:
    def checkpoints(_settings: Any) -> Callable[[str], None]:
        def at(reached: str) -> None:
            if reached == step:
                action()
        return at
    return checkpoints


def test_a_connection_lost_at_commit_is_checked_and_reported_as_it_is(
    pg: PgCluster, dbname: str, beta: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The swap's session dies just before COMMIT: the swap asks the server, which says it did not go through."""
    _targets(pg, dbname, beta, tmp_path, monkeypatch, keep_previous=True)
    assert run_main(["backup", "app", "production"], capsys).code == 0
    monkeypatch.setattr(restore, "checkpoints", _at("swap:before-commit", lambda: _end_the_swap_session(pg)))

    run = run_main(["restore", "app", "--from", "production", "--to", "beta"], capsys)

    assert run.code == 1, run.output
    assert run.err_lines[-1].startswith(f"error: swapping the restored database into {beta} failed: ")
    assert run.err_lines[-1].endswith("; the target is unchanged")
    assert _label(pg, beta) == "oldbeta1"
    assert f"{beta}__previous" not in pg.databases()


def test_when_the_commit_cannot_be_checked_the_outcome_is_called_unknown(
    pg: PgCluster, dbname: str, beta: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The swap's session dies at COMMIT and the server cannot be reached: no claim either way, and how to find out."""
    _targets(pg, dbname, beta, tmp_path, monkeypatch, keep_previous=True)
    assert run_main(["backup", "app", "production"], capsys).code == 0

    def refuse(conn: Any) -> Any:
        raise JobFailed(f"cannot connect to {conn.describe()}: Connection refused")

    def lose_everything() -> None:
        _end_the_swap_session(pg)
        monkeypatch.setattr(swap, "connect", refuse)

    monkeypatch.setattr(restore, "checkpoints", _at("swap:before-commit", lose_everything))

    run = run_main(["restore", "app", "--from", "production", "--to", "beta"], capsys)

    assert run.code == 1, run.output
    last = run.err_lines[-1]
    assert "the outcome is unknown" in last and "Connection refused" in last
    assert "SELECT oid, datname FROM pg_database" in last
    assert "unchanged" not in run.output
    found = re.search(rf"if {beta} has oid (\d+) \(the database called (\S+) before the swap\)", last)
    assert found, last
    # What the message tells the user to compare matches the server: the swap did not go through.
    with pg.connect() as conn:
        oids = dict(conn.execute("SELECT datname, oid FROM pg_database").fetchall())
    assert oids[found.group(2)] == int(found.group(1)) != oids[beta]
    assert _label(pg, beta) == "oldbeta1"


def test_the_session_ender_stops_before_the_commit(
    pg: PgCluster, dbname: str, beta: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Once COMMIT is sent, sessions on the target's name are on the new data: nothing may end them any more."""
    _targets(pg, dbname, beta, tmp_path, monkeypatch, keep_previous=True)
    assert run_main(["backup", "app", "production"], capsys).code == 0
    enders: list[int] = []
    monkeypatch.setattr(restore, "checkpoints", _at("swap:before-commit", lambda: enders.append(sum(
        thread.name == "swap-session-ender" and thread.is_alive() for thread in threading.enumerate()))))
    with pg.connect(beta) as session:
        run = run_main(["restore", "app", "--from", "production", "--to", "beta"], capsys)
        assert run.code == 0, run.output
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
    assert enders == [0]
    assert "1 session ended" in run.out
    assert _label(pg, beta) == "prod1"


def test_the_check_after_a_lost_commit_first_ends_the_session_that_may_still_commit(pg: PgCluster, dbname: str) -> None:
    """The server still runs the swap's session (the client lost it, the server did not): it is ended, then the names are read."""
    arriving = f"{dbname}__arriving"
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{arriving}"')
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (arriving,)).fetchone()
    assert oid is not None
    lost = pg.connect(autocommit=False)
    try:
        lost.execute(f'ALTER DATABASE "{dbname}" RENAME TO "{dbname}__parked"')
        lost.execute(f'ALTER DATABASE "{arriving}" RENAME TO "{dbname}"')
        session = swap._own_session(lost)
        admin_conn = Connection(pg.host, pg.port, "postgres", pg.user, pg.password)
        assert swap._committed(admin_conn, dbname, int(oid[0]), session) is False
        assert session.pid not in _pids(pg)
    finally:
        lost.close()
    assert {dbname, arriving} <= pg.databases()


def _lose_the_reply_to_the_swaps_commit(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], Callable[[str], None]]:
    """The swap's COMMIT lands on the server, but its reply never reaches the client: the connection drops."""
    armed: list[bool] = []
    real = psycopg.Connection.transaction

    @contextlib.contextmanager
    def transaction(self: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> Iterator[Any]:
        with real(self, *args, **kwargs) as tx:
            yield tx
        if armed:
            armed.clear()
            self.close()
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(psycopg.Connection, "transaction", transaction)
    return _at("swap:before-commit", lambda: armed.append(True))


def test_a_lost_reply_to_a_commit_that_went_through_is_a_restore_that_went_through(
    pg: PgCluster, dbname: str, beta: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The check after the lost connection finds the restored database under the target's name: success, said so."""
    _targets(pg, dbname, beta, tmp_path, monkeypatch, keep_previous=True)
    assert run_main(["backup", "app", "production"], capsys).code == 0
    monkeypatch.setattr(restore, "checkpoints", _lose_the_reply_to_the_swaps_commit(monkeypatch))

    run = run_main(["restore", "app", "--from", "production", "--to", "beta"], capsys)

    assert run.code == 0, run.output
    assert "unchanged" not in run.output and "unknown" not in run.output
    assert _label(pg, beta) == "prod1"
    assert _label(pg, f"{beta}__previous") == "oldbeta1"


def test_a_cancel_during_the_check_after_a_lost_commit_never_claims_the_target_unchanged(
    pg: PgCluster, dbname: str, beta: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """GitHub's second signal lands while the lost COMMIT is being checked: the swap did go through, so the
    run may only call the outcome unknown and say how to find out, and must leave the restored data in place."""
    _targets(pg, dbname, beta, tmp_path, monkeypatch, keep_previous=True)
    assert run_main(["backup", "app", "production"], capsys).code == 0
    monkeypatch.setattr(restore, "checkpoints", _lose_the_reply_to_the_swaps_commit(monkeypatch))

    def cancelled(*_args: Any) -> bool:
        raise Interrupted("cancelled by SIGTERM")

    monkeypatch.setattr(swap, "_committed", cancelled)

    run = run_main(["restore", "app", "--from", "production", "--to", "beta"], capsys)

    assert run.code == 130, run.output
    assert "unchanged" not in run.output
    last = run.err_lines[-1]
    assert "cancelled by SIGTERM during the swap" in last, last
    assert "the outcome is unknown" in last and "the check that followed was cancelled" in last, last
    assert _label(pg, beta) == "prod1"
    assert _label(pg, f"{beta}__previous") == "oldbeta1"


def test_a_session_ender_that_would_not_stop_is_not_waited_for_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each wait for a stuck ender runs inside the swap's transaction: after one in vain, stop() returns at once."""
    monkeypatch.setattr(swap, "STOP_WAIT_S", 0.3)
    ender = swap._SessionEnder(Connection("127.0.0.1", 1, "postgres", "nobody", None), ("db",))
    release = threading.Event()
    ender._thread = threading.Thread(target=lambda: release.wait(10), daemon=True)
    ender._thread.start()
    try:
        started = time.monotonic()
        assert ender.stop(renamed=True) is False
        assert ender.stop(renamed=False) is False
        assert ender.stop(renamed=False) is False
        assert time.monotonic() - started < 0.5  # one wait of 0.3 s, not three
    finally:
        release.set()
