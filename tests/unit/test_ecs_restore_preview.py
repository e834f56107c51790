"""restore --dry-run with --executor ecs: the store is read here, the server only by an ECS task."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runner.ecs import remote
from runner.ecs.request import RemoteJob
from runner.errors import InfraError
from runner.github import SUCCESS
from runner.manifest import Manifest
from runner.settings import GithubEnv
from runner.stores.local import LocalStore
from tests.helpers.backups import write_manifest
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

DRY_RUN = ["restore", "curation", "--from", "production", "--to", "beta", "--dry-run"]


def stored(tmp_path: Path) -> Manifest:
    return write_manifest(LocalStore(tmp_path / "store"), "curation", "production", datetime(2024, 5, 1, 1, 0, tzinfo=UTC), None)


def preview_job(tmp_path: Path, to: str = "beta", **kwargs: Any) -> RemoteJob:
    reg = unit_registry(tmp_path)
    return RemoteJob(action="preview", target=reg.get("curation", to), source=reg.get("curation", "production"), **kwargs)


def test_the_task_runs_the_dry_run_locally_with_the_restores_role(tmp_path: Path) -> None:
    params = run_task_for(preview_job(tmp_path, backup="2024-05-01_01-00-00", with_roles=True))
    assert command_of(params) == ["restore", "curation", "--from", "production", "--to", "beta", "--backup", "2024-05-01_01-00-00",
                                  "--with-roles", "--dry-run", "--executor", "local"]
    # It reads the same credentials as the restore it previews, so it runs as the same role.
    assert params["overrides"]["taskRoleArn"] == NONPROD_ROLE
    assert {"key": "db-backup:action", "value": "preview"} in params["tags"]

    params = run_task_for(preview_job(tmp_path, to="production", confirm="production"))
    assert command_of(params)[-5:] == ["--confirm", "production", "--dry-run", "--executor", "local"]
    assert "taskRoleArn" not in params["overrides"]


def test_a_preview_needs_its_source() -> None:
    reg = unit_registry(Path("/nowhere"))
    with pytest.raises(ValueError, match="a preview needs its source target"):
        RemoteJob(action="preview", target=reg.get("curation", "beta"))


def test_the_tasks_plan_is_shown_here_and_latest_is_pinned(tmp_path: Path) -> None:
    manifest = stored(tmp_path)
    clock = FakeClock()
    said = [(1.0, "dry run: nothing was changed"), (1.0, "database: curation exists; its data would be replaced"),
            (1.0, "sessions: 1 session would be ended now: pid 42 report-tool (app)")]
    fake = FakeEcs([task("RUNNING"), task("RUNNING"), task("STOPPED", container("db-backup", 0))])
    out = io.StringIO()
    # FakeAws refuses SSM: nothing in the runner resolves the database's credentials.
    report = remote.run(preview_job(tmp_path), services(clock, FakeAws(fake, FakeLogs(clock, said))), GithubEnv(), timeout_s=600,
                        policy=FAST, out=out)

    assert report.result == SUCCESS and report.action == "preview" and report.backup_id == manifest.id
    assert command_of(fake.run_calls[0])[:8] == ["restore", "curation", "--from", "production", "--to", "beta", "--backup", manifest.id]
    printed = out.getvalue()
    assert "[task] sessions: 1 session would be ended now: pid 42 report-tool (app)" in printed


def test_the_cli_shows_what_it_knows_and_hands_the_server_to_a_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """targets.yaml names the database by ssm: references only: no AWS call resolves them here."""
    manifest = stored(tmp_path)
    use_targets(monkeypatch, tmp_path)
    jobs = capture_jobs(monkeypatch)

    run = run_main(DRY_RUN, capsys)

    assert run.code == 0, run.err
    assert run.out.startswith("dry run: nothing was changed\n")
    assert f"backup:   curation/production {manifest.id} (complete, " in run.out
    assert "target:   curation/beta, its database named in targets.yaml (resolved by the task)" in run.out
    assert "server:   read by an ECS task (its output follows)" in run.out and "nothing is read from here" in run.out
    assert "previous: the current database would be kept as NAME__previous" in run.out
    assert "runs:     in an ECS task" in run.out
    assert "tools:" not in run.out  # the task's pg_restore counts, not this machine's
    assert [(j.action, j.target.name, j.source.name if j.source else None, j.confirm) for j in jobs] == [
        ("preview", "curation/beta", "curation/production", None)]


def test_when_no_task_can_run_the_cli_says_how_to_see_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    manifest = stored(tmp_path)
    use_targets(monkeypatch, tmp_path)

    def denied(*_args: Any, **_kwargs: Any) -> None:
        raise InfraError("AWS denied ecs:RunTask")

    monkeypatch.setattr(remote, "run", denied)
    run = run_main(DRY_RUN, capsys)

    assert run.code == 3
    assert "backup:   curation/production" in run.out  # what is known without the server is still shown
    assert run.err_lines[-1] == (
        "error: the server was not read: AWS denied ecs:RunTask; from a machine that reaches the database, run "
        f"db-backup restore curation --from production --to beta --backup {manifest.id} --dry-run --executor local")


def test_the_refusals_of_a_restore_come_before_any_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    stored(tmp_path)
    use_targets(monkeypatch, tmp_path)
    jobs = capture_jobs(monkeypatch)
    refused = run_main(["restore", "curation", "--from", "beta", "--to", "production", "--dry-run"], capsys)
    assert refused.code == 2 and "refusing to restore curation/beta into curation/production" in refused.err
    assert jobs == []
