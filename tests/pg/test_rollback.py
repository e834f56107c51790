"""rollback on a real server: the database a restore replaced comes back, undoably, with a restore's refusals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import DB_BACKUP, PgCluster, fill_small, fingerprint, run_cli, wait_for, write_targets
from tests.helpers.scenes import backed_up_production


@dataclass(frozen=True)
class Scene:
    pg: PgCluster
    target: str  # beta's database
    source: str  # production's database
    env: dict[str, str]
    old: dict[str, object]  # what beta held before the restore
    new: dict[str, object]  # what the restore put there

    @property
    def previous(self) -> str:
        return f"{self.target}__previous"

    def state(self) -> tuple[dict[str, object], dict[str, object]]:
        """The data of the target and of __previous; right after a kill the server may still be ending the killed session."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return fingerprint(self.pg, self.target), fingerprint(self.pg, self.previous)
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def rollback(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli("rollback", "app", *args, env={**self.env, **extra}, timeout=120)


@pytest.fixture
def scene(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> Scene:
    """beta held small data, then a restore of production's rich backup replaced it (kept as __previous)."""
    source, env = backed_up_production(pg, dbname, tmp_path, pg_env, "old beta")
    old = fingerprint(pg, dbname)
    restored = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)
    assert restored.returncode == 0, restored.stderr
    scene = Scene(pg, dbname, source, env, old, fingerprint(pg, source))
    assert scene.state() == (scene.new, scene.old)
    return scene


def test_rollback_brings_back_the_replaced_data_and_a_second_one_undoes_it(scene: Scene) -> None:
    first = scene.rollback("beta")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("rolled back app/beta: ")
    assert f"now holds the data that was kept as {scene.previous}" in first.stdout
    assert scene.state() == (scene.old, scene.new)

    second = scene.rollback("beta")
    assert second.returncode == 0, second.stderr
    assert scene.state() == (scene.new, scene.old)
    assert not [name for name in scene.pg.databases() if name.startswith(f"{scene.target}__") and
                name not in (scene.previous, scene.source)], "the rollback left a database behind"


def test_a_protected_environment_needs_confirm_like_a_restore(scene: Scene) -> None:
    """production is protected: without --confirm it is refused (exit 2) and nothing changes; with it, it swaps."""
    with scene.pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(f"{scene.source}__previous")))
    fill_small(scene.pg, f"{scene.source}__previous", "kept")
    kept = fingerprint(scene.pg, f"{scene.source}__previous")

    refused = scene.rollback("production")
    assert refused.returncode == 2
    assert "app/production is protected; add --confirm production" in refused.stderr
    assert fingerprint(scene.pg, scene.source) == scene.new
    assert fingerprint(scene.pg, f"{scene.source}__previous") == kept
    assert scene.rollback("production", "--confirm", "beta").returncode == 2  # naming another environment is no confirm

    done = scene.rollback("production", "--confirm", "production")
    assert done.returncode == 0, done.stderr
    assert fingerprint(scene.pg, scene.source) == kept
    assert fingerprint(scene.pg, f"{scene.source}__previous") == scene.new


def test_without_a_previous_database_nothing_is_touched(scene: Scene) -> None:
    scene.pg.drop(scene.previous)
    before = scene.pg.databases()
    done = scene.rollback("beta")
    assert done.returncode == 2
    (line,) = [line for line in done.stderr.splitlines() if scene.previous in line]
    assert "nothing to roll back" in line and "restore a backup instead: db-backup restore app --from ENV --to beta" in line
    assert scene.pg.databases() == before
    assert fingerprint(scene.pg, scene.target) == scene.new


def test_an_unknown_environment_is_refused(scene: Scene) -> None:
    done = scene.rollback("gamma")
    assert done.returncode == 2
    assert "app has no target in environment 'gamma'" in done.stderr


def test_sessions_on_the_target_and_on_previous_are_ended_and_counted(scene: Scene) -> None:
    idle = psycopg.connect(**_kwargs(scene.pg, scene.target), application_name="report-tool", autocommit=True)
    in_transaction = psycopg.connect(**_kwargs(scene.pg, scene.target), autocommit=False)
    on_previous = psycopg.connect(**_kwargs(scene.pg, scene.previous), autocommit=True)
    in_transaction.execute("SELECT 1")
    try:
        done = scene.rollback("beta")
        assert done.returncode == 0, done.stderr
        assert "3 sessions ended" in done.stdout
        for conn in (idle, in_transaction, on_previous):
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
    finally:
        for conn in (idle, in_transaction, on_previous):
            conn.close()
    assert scene.state() == (scene.old, scene.new)
    again = scene.rollback("beta")
    assert again.returncode == 0 and "0 sessions ended" in again.stdout


def _kwargs(pg: PgCluster, dbname: str) -> dict[str, object]:
    return {"host": pg.host, "port": pg.port, "user": pg.user, "password": pg.password, "dbname": dbname, "connect_timeout": 10}


@contextlib.contextmanager
def paused_rollback(scene: Scene, step: str, tmp: Path) -> Iterator[subprocess.Popen[str]]:
    """A rollback held at `step` (DB_BACKUP_TEST_PAUSE_AT) in its own process group, killed -9 on leaving."""
    err = tmp / f"rollback-{step.replace(':', '-')}.stderr"
    base = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    with err.open("w") as handle:
        proc = subprocess.Popen([DB_BACKUP, "rollback", "app", "beta"], env={**base, **scene.env, "DB_BACKUP_TEST_PAUSE_AT": step},
                                stdout=subprocess.DEVNULL, stderr=handle, text=True, start_new_session=True)
    try:
        wait_for(lambda: f"paused at {step}" in err.read_text() or proc.poll() is not None, f"the rollback to reach {step}", 60)
        assert proc.poll() is None, err.read_text()[-2000:]
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.mark.parametrize("step", ["rollback:checked", "rollback:renamed-target", "rollback:renamed-previous", "rollback:before-commit"])
def test_kill_before_the_commit_leaves_both_databases_as_they_were(scene: Scene, tmp_path: Path, step: str) -> None:
    with paused_rollback(scene, step, tmp_path):
        pass
    assert scene.state() == (scene.new, scene.old)
    assert f"{scene.target}__rollback" not in scene.pg.databases()
    done = scene.rollback("beta")
    assert done.returncode == 0, done.stderr
    assert scene.state() == (scene.old, scene.new)


def test_kill_after_the_commit_leaves_the_rolled_back_data(scene: Scene, tmp_path: Path) -> None:
    with paused_rollback(scene, "rollback:committed", tmp_path):
        pass
    assert scene.state() == (scene.old, scene.new)


def test_a_session_that_cannot_end_fails_the_rollback_in_bounded_time_and_changes_nothing(scene: Scene) -> None:
    """A session on __previous whose server process is stopped (SIGSTOP) cannot end: the swap gives up naming it."""
    holder = psycopg.connect(**_kwargs(scene.pg, scene.previous), application_name="frozen-tool", autocommit=True)
    pid = holder.info.backend_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        done = scene.rollback("beta", DB_BACKUP_SWAP_WAIT_S="4")
        assert done.returncode == 1
        assert f"sessions on {scene.target} and {scene.previous} did not end within 4s" in done.stderr
        assert f"pid {pid}" in done.stderr and "frozen-tool" in done.stderr
        assert "the target is unchanged and nothing was rolled back" in done.stderr
        assert time.monotonic() - began < 60
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        holder.close()
    wait_for(lambda: pid not in _pids(scene.pg), "the unfrozen session to end")
    assert scene.state() == (scene.new, scene.old)


def _pids(pg: PgCluster) -> set[int]:
    with pg.connect() as conn:
        return {int(r[0]) for r in conn.execute("SELECT pid FROM pg_stat_activity")}


def _targets_as(scene: Scene, tmp: Path, user: str | None = None, extra: str = "", beta: str | None = None) -> dict[str, str]:
    """The scene's env with a targets.yaml whose beta is `beta`, reached as `user`, with `extra` defaults."""
    path = write_targets(tmp / "other-targets.yaml", scene.pg, {"production": scene.source, "beta": beta or scene.target},
                         f"file://{tmp / 'backups'}", extra=extra)
    if user is not None:
        path.write_text(path.read_text().replace(f"user: {scene.pg.user}\n", f"user: {user}\n"))
    return {"DB_BACKUP_TARGETS": str(path)}


def test_a_template_database_is_refused(scene: Scene, tmp_path: Path) -> None:
    before = scene.pg.databases()
    done = scene.rollback("beta", **_targets_as(scene, tmp_path, beta="template1"))
    assert done.returncode == 2
    assert "refusing to roll back template1" in done.stderr
    assert scene.pg.databases() == before


def test_without_the_target_the_statement_that_renames_previous_back_is_given(scene: Scene) -> None:
    """The previous database alone is left: the error gives the exact statement, and it works as given."""
    scene.pg.drop(scene.target)
    done = scene.rollback("beta")
    assert done.returncode == 2
    statement = f'ALTER DATABASE "{scene.previous}" RENAME TO "{scene.target}"'
    assert f"{scene.target} does not exist" in done.stderr and f"run {statement} on the server" in done.stderr
    with scene.pg.connect() as conn:
        conn.execute(statement)
    assert fingerprint(scene.pg, scene.target) == scene.old


ROLLER = "rollback_user"
ROLLER_PASSWORD = "rollback-user-Pw-31"  # the throwaway cluster's test role


@pytest.fixture
def roller(scene: Scene) -> Iterator[str]:
    """A login role that owns nothing and may not create databases."""
    with scene.pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLLER), sql.Literal(ROLLER_PASSWORD)))
    try:
        yield ROLLER
    finally:
        with scene.pg.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(ROLLER)))


def test_a_user_who_may_not_rename_is_refused_before_any_session_ends(scene: Scene, tmp_path: Path, roller: str) -> None:
    env = {**_targets_as(scene, tmp_path, user=roller), "TEST_PG_PASSWORD": ROLLER_PASSWORD}
    with scene.pg.connect(scene.target) as session:
        no_createdb = scene.rollback("beta", **env)
        assert no_createdb.returncode == 2
        assert f"{roller} may not create databases" in no_createdb.stderr and f"ALTER ROLE {roller} CREATEDB" in no_createdb.stderr
        with scene.pg.connect() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(roller)))
        not_owner = scene.rollback("beta", **env)
        assert not_owner.returncode == 2
        assert f"{roller} does not own {scene.target} and {scene.previous}" in not_owner.stderr
        session.execute("SELECT 1")  # still connected: nothing was ended
    assert scene.state() == (scene.new, scene.old)


def test_keep_previous_false_still_keeps_what_the_rollback_replaces(scene: Scene, tmp_path: Path) -> None:
    """A rollback is an undo: with keep_previous: false it warns, and keeps the replaced data so it can be undone."""
    done = scene.rollback("beta", **_targets_as(scene, tmp_path, extra="keep_previous: false"))
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and "keep_previous: false" in done.stderr and f"keeps the data it replaces as {scene.previous}" in done.stderr
    assert scene.state() == (scene.old, scene.new)
