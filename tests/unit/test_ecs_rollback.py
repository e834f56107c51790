"""A rollback as an ECS task: the command the task runs, its role, the report, and the CLI's refusals first."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from runner.ecs import remote
from runner.ecs.request import RemoteJob
from runner.github import SUCCESS
from runner.settings import GithubEnv
from tests.helpers.cli import run_main
from tests.helpers.clock import FakeClock
from tests.helpers.ecs import (
    FAST,
    NONPROD_ROLE,
    FakeAws,
    FakeEcs,
    FakeLogs,
    capture_jobs,
    command_of,
    container,
    run_task_for,
    services,
    task,
    unit_registry,
    use_targets,
)


def test_the_task_runs_the_rollback_locally_with_the_restore_roles() -> None:
    reg = unit_registry(Path("/nowhere"))
    params = run_task_for(RemoteJob(action="rollback", target=reg.get("curation", "beta")))
    assert command_of(params) == ["rollback", "curation", "beta", "--executor", "local"]
    # Like a restore into an unprotected environment: the non-production role, which reads only its credentials.
    assert params["overrides"]["taskRoleArn"] == NONPROD_ROLE
    assert {"key": "db-backup:action", "value": "rollback"} in params["tags"]

    params = run_task_for(RemoteJob(action="rollback", target=reg.get("curation", "production"), confirm="production",
                                    verbose=True))
    assert command_of(params) == ["--verbose", "rollback", "curation", "production", "--confirm", "production", "--executor", "local"]
    assert "taskRoleArn" not in params["overrides"]  # the task definition's role, as for a production restore


def test_a_rollback_has_no_source() -> None:
    reg = unit_registry(Path("/nowhere"))
    with pytest.raises(ValueError, match="no source"):
        RemoteJob(action="rollback", target=reg.get("curation", "beta"), source=reg.get("curation", "production"))


def test_a_remote_rollback_is_reported_as_one(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("db-backup", 0))])
    job = RemoteJob(action="rollback", target=unit_registry(tmp_path).get("curation", "beta"))
    out = io.StringIO()
    report = remote.run(job, services(clock, FakeAws(fake, FakeLogs(clock, []))), GithubEnv(), timeout_s=3600, policy=FAST, out=out)
    assert report.result == SUCCESS and report.action == "rollback" and report.target == "curation/beta"
    assert report.backup_id is None  # nothing is resolved in the store: no backup is involved
    assert fake.run_calls[0]["overrides"]["containerOverrides"][0]["command"] == ["rollback", "curation", "beta", "--executor", "local"]


@pytest.fixture
def started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[RemoteJob]:
    """The jobs the CLI hands to the ECS runner (which is not run)."""
    use_targets(monkeypatch, tmp_path)
    return capture_jobs(monkeypatch)


def test_the_cli_refuses_a_protected_rollback_before_starting_a_task(started: list[RemoteJob], capsys: pytest.CaptureFixture[str]) -> None:
    run = run_main(["rollback", "curation", "production", "--executor", "ecs"], capsys)
    assert run.code == 2
    assert "curation/production is protected; add --confirm production" in run.err
    assert started == []


def test_the_cli_runs_where_the_target_says_and_passes_the_confirm(started: list[RemoteJob], capsys: pytest.CaptureFixture[str]) -> None:
    # targets.yaml has defaults.ecs: its targets run as ECS tasks unless told otherwise.
    assert run_main(["rollback", "curation", "beta"], capsys).code == 0
    assert run_main(["rollback", "curation", "production", "--executor", "ecs", "--confirm", "production"], capsys).code == 0
    assert [(job.action, job.target.name, job.confirm, job.source) for job in started] == [
        ("rollback", "curation/beta", None, None), ("rollback", "curation/production", "production", None)]
