"""Which task role a run_task request asks for: restores into unprotected environments run as
the non-production task role (no production SSM reads), drills as the drill task role (no SSM at
all); backups and protected restores keep the task definition's role."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner.ecs import remote
from runner.ecs.request import RemoteJob, run_task_params, task_request
from runner.settings import GithubEnv
from runner.stores.local import LocalStore
from runner.targets import Registry, parse_registry
from tests.helpers.backups import write_manifest
from tests.helpers.cli import run_main
from tests.helpers.clock import FakeClock
from tests.helpers.ecs import FAST, NONPROD_ROLE, TASKDEF, FakeAws, FakeEcs, FakeLogs, container, services, task

DRILL_ROLE = "arn:aws:iam::123456789012:role/db-backup-DrillTaskRole-DEF456"

TARGETS = """
version: 1
defaults:
  storage: file://{storage}
  region: eu-west-1
  ecs:
    cluster: db-backup
    task_definition: db-backup
    subnets: [subnet-a]
    {role}
    {drill_role}
environments: {{production: {{protected: true}}, staging: {{protected: true}}, beta: {{}}}}
targets:
  - {{identifier: curation, env: production}}
  - {{identifier: curation, env: staging}}
  - {{identifier: curation, env: beta}}
"""


def targets_yaml(tmp_path: Path, role: str | None = NONPROD_ROLE, drill_role: str | None = None) -> str:
    line = f"nonproduction_task_role_arn: {role}" if role else ""
    drill_line = f"drill_task_role_arn: {drill_role}" if drill_role else ""
    return TARGETS.format(storage=tmp_path / "store", role=line, drill_role=drill_line)


def registry(tmp_path: Path, role: str | None = NONPROD_ROLE, drill_role: str | None = None) -> Registry:
    return parse_registry(targets_yaml(tmp_path, role, drill_role))


def restore_job(reg: Registry, source: str, dest: str) -> RemoteJob:
    confirm = dest if reg.get("curation", dest).protected else None
    return RemoteJob(action="restore", target=reg.get("curation", dest), source=reg.get("curation", source), backup="latest",
                     confirm=confirm)


def params_for(job: RemoteJob) -> dict[str, object]:
    assert job.target.ecs is not None
    request = task_request(job, TASKDEF, "req1", GithubEnv(), {})
    return dict(run_task_params(job.target.ecs, request, token=1)["overrides"])


def test_the_setting_is_read_from_targets_yaml(tmp_path: Path) -> None:
    ecs_config = registry(tmp_path).get("curation", "beta").ecs
    assert ecs_config is not None and ecs_config.nonproduction_task_role_arn == NONPROD_ROLE
    unset = registry(tmp_path, role=None).get("curation", "beta").ecs
    assert unset is not None and unset.nonproduction_task_role_arn is None
    assert unset.drill_task_role_arn is None
    drill = registry(tmp_path, drill_role=DRILL_ROLE).get("curation", "production").ecs
    assert drill is not None and drill.drill_task_role_arn == DRILL_ROLE


@pytest.mark.parametrize("drill_role", [None, DRILL_ROLE], ids=["without-drill-role", "with-drill-role"])
def test_validate_accepts_targets_with_or_without_the_drill_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], drill_role: str | None,
) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(targets_yaml(tmp_path, drill_role=drill_role))
    monkeypatch.setenv("DB_BACKUP_TARGETS", str(path))
    run = run_main(["validate"], capsys)
    assert run.code == 0
    assert "3 targets in 3 environments, valid" in run.out


def test_a_misspelt_drill_role_key_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(targets_yaml(tmp_path).replace("    \nenvironments", f"    drill_role_arn: {DRILL_ROLE}\nenvironments"))
    monkeypatch.setenv("DB_BACKUP_TARGETS", str(path))
    run = run_main(["validate"], capsys)
    assert run.code == 2
    assert "drill_role_arn" in run.err


def test_restore_into_an_unprotected_environment_runs_as_the_nonproduction_role(tmp_path: Path) -> None:
    overrides = params_for(restore_job(registry(tmp_path), "production", "beta"))
    assert overrides["taskRoleArn"] == NONPROD_ROLE
    assert "executionRoleArn" not in overrides


@pytest.mark.parametrize("dest", ["production", "staging"])
def test_restore_into_a_protected_environment_keeps_the_task_definition_role(tmp_path: Path, dest: str) -> None:
    overrides = params_for(restore_job(registry(tmp_path), "production", dest))
    assert "taskRoleArn" not in overrides


@pytest.mark.parametrize("env", ["production", "beta"])
def test_backups_keep_the_task_definition_role(tmp_path: Path, env: str) -> None:
    reg = registry(tmp_path)
    job = RemoteJob(action="backup", target=reg.get("curation", env))
    assert "taskRoleArn" not in params_for(job)


@pytest.mark.parametrize("env", ["production", "beta"])
def test_drills_run_as_the_drill_role_when_one_is_configured(tmp_path: Path, env: str) -> None:
    job = RemoteJob(action="drill", target=registry(tmp_path, drill_role=DRILL_ROLE).get("curation", env), backup="latest")
    overrides = params_for(job)
    assert overrides["taskRoleArn"] == DRILL_ROLE
    assert "executionRoleArn" not in overrides


@pytest.mark.parametrize("env", ["production", "beta"])
def test_drills_keep_the_task_definition_role_without_the_drill_role(tmp_path: Path, env: str) -> None:
    # The non-production role is for restores only: a drill never falls back to it.
    job = RemoteJob(action="drill", target=registry(tmp_path).get("curation", env), backup="latest")
    assert "taskRoleArn" not in params_for(job)


def test_the_drill_role_changes_no_restore_or_backup(tmp_path: Path) -> None:
    reg = registry(tmp_path, drill_role=DRILL_ROLE)
    assert params_for(restore_job(reg, "production", "beta"))["taskRoleArn"] == NONPROD_ROLE
    for dest in ("production", "staging"):
        assert "taskRoleArn" not in params_for(restore_job(reg, "production", dest)), dest
    for env in ("production", "beta"):
        assert "taskRoleArn" not in params_for(RemoteJob(action="backup", target=reg.get("curation", env))), env
    only_drill = registry(tmp_path, role=None, drill_role=DRILL_ROLE)
    assert "taskRoleArn" not in params_for(restore_job(only_drill, "production", "beta"))


def test_without_the_setting_nothing_is_overridden(tmp_path: Path) -> None:
    overrides = params_for(restore_job(registry(tmp_path, role=None), "production", "beta"))
    assert "taskRoleArn" not in overrides


def test_the_override_reaches_run_task(tmp_path: Path) -> None:
    clock = FakeClock()
    write_manifest(LocalStore(tmp_path / "store"), "curation", "production", datetime(2024, 5, 1, 1, 0, tzinfo=UTC), None)
    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("db-backup", 0))])
    job = restore_job(registry(tmp_path), "production", "beta")
    remote.run(job, services(clock, FakeAws(fake, FakeLogs(clock, []))), GithubEnv(), timeout_s=3600, policy=FAST,
               out=io.StringIO())
    (call,) = fake.run_calls
    assert call["overrides"]["taskRoleArn"] == NONPROD_ROLE
    assert call["overrides"]["containerOverrides"][0]["command"][:6] == [
        "restore", "curation", "--from", "production", "--to", "beta"]
