"""Promises of a restore under faults: killed at any moment, the target accepts connections and holds
all of its old data or all of the new, no password is left on disk, and the next run cleans up."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import PgCluster, fill_small, fingerprint, run_cli, wait_for, write_targets
from tests.faults.conftest import Run, connectable_fingerprint, files_holding, leftovers, private_tmp, wait_paused
from tests.helpers.scenes import backed_up_production

RESTORE = ("restore", "app", "--from", "production", "--to", "beta")
STEPS_BEFORE_COMMIT = ("restore:checked", "restore:created", "restore:loaded",
                       "swap:dropped-previous", "swap:renamed-target", "swap:before-commit")
MODES = ("stream", "parallel")


@dataclass(frozen=True)
class Scene:
    pg: PgCluster
    target: str
    env: dict[str, str]
    tmp: Path
    old: dict[str, object]
    new: dict[str, object]

    def env_for(self, mode: str, **extra: str) -> dict[str, str]:
        return {**self.env, "DB_BACKUP_RESTORE_MODE": mode, **extra}

    def restore_ok(self, mode: str = "stream") -> None:
        done = run_cli(*RESTORE, env=self.env_for(mode))
        assert done.returncode == 0, done.stderr
        assert f", {mode}" in done.stdout, f"the restore did not run in {mode} mode: {done.stdout}"
        assert fingerprint(self.pg, self.target) == self.new
        assert leftovers(self.pg, self.tmp) == []

    def fresh_old_data(self, label: str) -> dict[str, object]:
        """Give the target data of its own again (and no __previous), so old and new differ; its fingerprint."""
        for name in (self.target, f"{self.target}__previous"):
            self.pg.drop(name)
        with self.pg.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.target)))
        fill_small(self.pg, self.target, label)
        return fingerprint(self.pg, self.target)

    def swap_waiting(self) -> bool:
        """The swap has started to wait for the target's sessions, as the server shows it."""
        with self.pg.connect() as conn:
            row = conn.execute(
                """SELECT (SELECT NOT datallowconn FROM pg_database WHERE datname = %s)
                          OR EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'db-backup%%'
                                     AND query ILIKE 'ALTER DATABASE%%RENAME%%' AND state = 'active')""",
                (self.target,),
            ).fetchone()
        return bool(row and row[0])

    def pg_pids(self) -> set[int]:
        with self.pg.connect() as conn:
            return {int(r[0]) for r in conn.execute("SELECT pid FROM pg_stat_activity")}

    def after_kill(self, expected: dict[str, object] | None = None) -> dict[str, object]:
        """The checks every kill must pass; the data the target was found holding."""
        seen = connectable_fingerprint(self.pg, self.target)
        assert seen in (self.old, self.new), "the target holds neither its old data nor the backup"
        if expected is not None:
            assert seen == expected
        assert files_holding(self.pg.password, self.tmp.parent) == [], "a file holding the password survived the kill"
        return seen


@pytest.fixture
def scene(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> Scene:
    """beta (the target) holds small data; production holds rich data and has one backup."""
    tmp = private_tmp(tmp_path)
    source, env = backed_up_production(pg, dbname, tmp_path, {**pg_env, "TMPDIR": str(tmp), "DB_BACKUP_PARALLEL_THRESHOLD_MB": "0"})
    return Scene(pg, dbname, env, tmp, fingerprint(pg, dbname), fingerprint(pg, source))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("step", STEPS_BEFORE_COMMIT)
def test_kill_before_the_swap_commits_leaves_the_old_data(scene: Scene, start_cli: Callable[..., Run], step: str, mode: str) -> None:
    """kill -9 at each step before the commit: the target keeps all of its old data, connectable."""
    run = start_cli(*RESTORE, env=scene.env_for(mode, DB_BACKUP_TEST_PAUSE_AT=step))
    wait_paused(run, step)
    run.kill_tree()
    scene.after_kill(expected=scene.old)
    scene.restore_ok(mode)


@pytest.mark.parametrize("mode", MODES)
def test_kill_right_after_the_commit_leaves_the_new_data(scene: Scene, start_cli: Callable[..., Run], mode: str) -> None:
    """kill -9 once the swap committed: the target holds the backup's data, and the old is kept as __previous."""
    run = start_cli(*RESTORE, env=scene.env_for(mode, DB_BACKUP_TEST_PAUSE_AT="swap:committed"))
    wait_paused(run, "swap:committed")
    run.kill_tree()
    scene.after_kill(expected=scene.new)
    assert fingerprint(scene.pg, f"{scene.target}__previous") == scene.old
    scene.restore_ok(mode)


@pytest.mark.parametrize("mode", MODES)
def test_kill_at_seeded_random_moments(scene: Scene, start_cli: Callable[..., Run], mode: str) -> None:
    """Eight kills -9 at seeded random moments of a restore's work (download, load, swap): each leaves old or new data."""
    measured = start_cli(*RESTORE, env=scene.env_for(mode), name="measured")
    wait_for(lambda: "INFO restoring " in measured.stderr() or measured.proc.poll() is not None, "the restore to start its work")
    began = time.monotonic()
    assert measured.wait() == 0, measured.stderr()
    work = time.monotonic() - began  # from the checks' end to the exit
    rnd = random.Random(f"restore-{mode}")
    landed = 0
    for attempt in range(8):
        old = scene.fresh_old_data(f"old-{attempt}")
        run = start_cli(*RESTORE, env=scene.env_for(mode), name=f"random-{attempt}")
        wait_for(lambda run=run: "INFO restoring " in run.stderr() or run.proc.poll() is not None,
                 "the restore to start its work")
        time.sleep(rnd.uniform(0.0, 0.8 * work))
        landed += run.proc.poll() is None
        run.kill_tree()
        seen = connectable_fingerprint(scene.pg, scene.target)
        assert seen in (old, scene.new), f"kill {attempt}: the target holds neither its old data nor the backup"
        assert files_holding(scene.pg.password, scene.tmp.parent) == [], "a file holding the password survived the kill"
    assert landed >= 5, f"only {landed} of 8 kills landed while the restore was still running"
    scene.restore_ok(mode)


@pytest.fixture
def frozen_session(scene: Scene) -> Iterator[int]:
    """A session on the target whose server process is stopped (SIGSTOP): it cannot end when told to."""
    holder = scene.pg.connect(scene.target)
    row = holder.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    pid = int(row[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):  # ended already once a test let it go on
            os.kill(pid, signal.SIGCONT)
        holder.close()


def test_a_session_that_cannot_end_fails_the_restore_and_changes_nothing(scene: Scene, frozen_session: int) -> None:
    """The swap waits a bounded time for the target's sessions, then gives up naming them; the target is as it was.

    A stopped backend also holds every DROP DATABASE on the server (it never answers the barrier),
    so dropping the fresh copy is bounded too; the next restore drops it once the server lets it.
    """
    began = time.monotonic()
    env = scene.env_for("stream", DB_BACKUP_SWAP_WAIT_S="6", DB_BACKUP_ADMIN_TIMEOUT_S="10")
    with scene.pg.connect(scene.target) as other:  # one that can end: it is ended, and the failure says so
        done = run_cli(*RESTORE, env=env, timeout=120)
        with pytest.raises(psycopg.OperationalError):
            other.execute("SELECT 1")
    assert done.returncode == 1
    assert "did not end within 6s" in done.stderr and f"pid {frozen_session}" in done.stderr
    assert "the target is unchanged and the restore was not applied, but 1 session was ended" in done.stderr
    assert re.search(r"waiting for sessions on \S+ to end \(\d+s of at most 6s\)", done.stderr), done.stderr  # the wait shows
    assert time.monotonic() - began < 60
    scene.after_kill(expected=scene.old)
    os.kill(frozen_session, signal.SIGCONT)
    wait_for(lambda: frozen_session not in scene.pg_pids(), "the unfrozen session to end")
    scene.restore_ok()


def test_kill_while_the_swap_waits_for_a_session_leaves_the_target_connectable(
    scene: Scene, frozen_session: int, start_cli: Callable[..., Run]
) -> None:
    """kill -9 while the swap waits for a session that will not end: no ALLOW_CONNECTIONS false is left behind."""
    run = start_cli(*RESTORE, env=scene.env_for("stream", DB_BACKUP_SWAP_WAIT_S="60"))
    wait_for(lambda: scene.swap_waiting() or run.proc.poll() is not None, "the swap to wait for the session", 90)
    time.sleep(1)  # well inside the wait
    assert run.proc.poll() is None and scene.swap_waiting(), f"the swap was not waiting: {run.stderr()[-2000:]}"
    run.kill_tree()
    scene.after_kill(expected=scene.old)  # while the frozen session still exists
    with scene.pg.connect() as conn:
        row = conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (scene.target,)).fetchone()
    assert row == (True,)


def test_two_restores_into_one_target_exactly_one_runs(scene: Scene, start_cli: Callable[..., Run]) -> None:
    """A second restore into a target that is being restored fails at once with exit 2, naming the first."""
    first = start_cli(*RESTORE, env=scene.env_for("stream", DB_BACKUP_TEST_PAUSE_AT="restore:created"))
    wait_paused(first, "restore:created")
    (fresh,) = (name for name in scene.pg.databases() if name.startswith(f"{scene.target}__restore_"))
    began = time.monotonic()
    second = run_cli(*RESTORE, env=scene.env_for("stream"))
    assert second.returncode == 2
    assert "another restore into" in second.stderr and "is running" in second.stderr
    assert time.monotonic() - began < 30
    # The first one's fresh database is in use, not a leftover: the second must not have dropped it.
    assert fresh in scene.pg.databases()
    first.kill_tree()
    scene.restore_ok()


def test_leftover_databases_of_any_backup_id_are_dropped_by_the_next_restore(scene: Scene, pg: PgCluster) -> None:
    """Temporary databases of earlier restores into this target go; another database's do not."""
    mine = f"{scene.target}__restore_2020-01-01_00-00-00"
    other = f"{scene.target}x__restore_2020-01-01_00-00-00"
    users = f"{scene.target}__restore_notes"  # not a name db-backup makes
    with pg.connect() as conn:
        for name in (mine, other, users):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        done = run_cli(*RESTORE, env=scene.env_for("stream"))
        assert done.returncode == 0, done.stderr
        assert f"dropped {mine}, left by an interrupted restore" in done.stderr
        assert mine not in pg.databases() and other in pg.databases() and users in pg.databases()
    finally:
        pg.drop(other)
        pg.drop(users)


RESTORER = "swap_restorer"
RESTORER_PASSWORD = "swap-restorer-Pw-77"  # the throwaway cluster's test role


def test_a_session_the_restorer_may_not_end_is_named_and_the_others_still_end(pg: PgCluster, dbname: str, tmp_path: Path) -> None:
    """A non-superuser restorer cannot end a superuser's session: the swap still ends its own sessions, then names the one it may not."""
    target = f"{dbname}__owned"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(sql.Identifier(RESTORER), sql.Literal(RESTORER_PASSWORD)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(target), sql.Identifier(RESTORER)))
    try:
        fill_small(pg, dbname, "new")
        targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, f"file://{tmp_path / 'backups'}",
                                target_extra="ignore_privileges: true")
        env = {"TEST_PG_PASSWORD": pg.password, "DB_BACKUP_TARGETS": str(targets)}
        assert run_cli("backup", "app", "production", env=env).returncode == 0
        url = f"postgresql://{RESTORER}@{pg.host}:{pg.port}/{target}"
        before = fingerprint(pg, target)
        with pg.connect(target) as superuser_session, psycopg.connect(
            host=pg.host, port=pg.port, user=RESTORER, password=RESTORER_PASSWORD, dbname=target, autocommit=True,
        ) as own_session:
            su_pid = superuser_session.info.backend_pid
            own_pid = own_session.info.backend_pid
            done = run_cli("restore", "app", "--from", "production", "--to-url", url,
                           env={**env, "PGPASSWORD": RESTORER_PASSWORD, "DB_BACKUP_SWAP_WAIT_S": "6"}, timeout=120)
            assert done.returncode == 1
            assert f"pid {su_pid}" in done.stderr and f"may not end session {su_pid}" in done.stderr
            assert "the target is unchanged" in done.stderr
            with pg.connect() as conn:
                alive = {int(r[0]) for r in conn.execute("SELECT pid FROM pg_stat_activity")}
            assert su_pid in alive and own_pid not in alive
        assert fingerprint(pg, target) == before
        assert not any(name.startswith(f"{target}__restore_") for name in pg.databases())
    finally:
        pg.drop(target)
        with pg.connect() as conn:
            for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datdba = %s::regrole", (RESTORER,)).fetchall():
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(RESTORER)))


def test_sessions_on_the_older_previous_it_drops_are_counted(scene: Scene) -> None:
    """A restore drops the older __previous with its sessions: the line counts them with the target's."""
    scene.restore_ok()  # now beta has a __previous
    previous = f"{scene.target}__previous"
    with scene.pg.connect(previous) as on_previous, scene.pg.connect(scene.target) as on_target:
        done = run_cli(*RESTORE, env=scene.env_for("stream"))
        assert done.returncode == 0, done.stderr
        for session in (on_previous, on_target):
            with pytest.raises(psycopg.OperationalError):
                session.execute("SELECT 1")
    assert "2 sessions ended" in done.stdout
    again = run_cli(*RESTORE, env=scene.env_for("stream"))
    assert again.returncode == 0 and "0 sessions ended" in again.stdout
