"""A restore drill as an ECS task: its command, its role, and the report built from the record it leaves."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runner.ecs import remote
from runner.ecs.request import RemoteJob
from runner.errors import InfraError, JobFailed
from runner.github import SUCCESS
from runner.manifest import Manifest
from runner.records import DrillRecord, put_record
from runner.settings import GithubEnv
from runner.stores.local import LocalStore
from runner.targets import Registry, parse_registry
from tests.helpers.backups import write_manifest
from tests.helpers.cli import run_main
from tests.helpers.clock import FakeClock
from tests.helpers.ecs import (
    FAST,
    NONPROD_ROLE,
    FakeAws,
    FakeEcs,
    FakeLogs,
    command_of,
    container,
    run_task_for,
    services,
    task,
    unit_registry,
    unit_targets,
    use_targets,
)


def drill_job(reg: Registry, env: str, backup: str = "latest", verbose: bool = False) -> RemoteJob:
    return RemoteJob(action="drill", target=reg.get("curation", env), backup=backup, verbose=verbose)


@pytest.mark.parametrize("env", ["production", "beta"])
def test_the_task_runs_the_drill_locally_with_the_task_definitions_role(tmp_path: Path, env: str) -> None:
    job = drill_job(unit_registry(tmp_path), env, backup="2024-05-01_01-00-00", verbose=True)
    params = run_task_for(job, {"DB_BACKUP_RESTORE_MODE": "stream", "PGPASSWORD": "no"})
    (override,) = params["overrides"]["containerOverrides"]
    assert command_of(params) == ["--verbose", "drill", "curation", env, "--backup", "2024-05-01_01-00-00", "--executor", "local"]
    assert "--confirm" not in override["command"]  # no environment is touched
    assert override["environment"] == [{"name": "DB_BACKUP_RESTORE_MODE", "value": "stream"}]
    # Without drill_task_role_arn a drill keeps the task definition's role, which may write its record.
    assert "taskRoleArn" not in params["overrides"]
    assert {"key": "db-backup:action", "value": "drill"} in params["tags"]
    assert {"key": "db-backup:target", "value": f"curation/{env}"} in params["tags"]


def _stored(tmp_path: Path) -> tuple[LocalStore, Manifest]:
    store = LocalStore(tmp_path / "store")
    return store, write_manifest(store, "curation", "production", datetime(2024, 5, 1, 1, 0, tzinfo=UTC), None)


def _record(backup_id: str, ok: bool) -> DrillRecord:
    return DrillRecord(backup_id=backup_id, checked_at=datetime(2024, 5, 2, tzinfo=UTC), ok=ok,
                       problem=None if ok else 'pg_restore failed (exit 1): role "x" does not exist', restore_duration_s=12.5,
                       server="throwaway cluster (PostgreSQL 17.2)", tables={"public.t": 3}, restored_tables={"public.t": 3} if ok else {})


def _run(tmp_path: Path, fake: FakeEcs) -> Any:
    clock = FakeClock()
    job = drill_job(unit_registry(tmp_path), "production")
    return remote.run(job, services(clock, FakeAws(fake, FakeLogs(clock, []))), GithubEnv(), timeout_s=3600, policy=FAST,
                      out=io.StringIO())


def test_latest_is_pinned_and_the_report_says_what_the_drill_recorded(tmp_path: Path) -> None:
    store, manifest = _stored(tmp_path)
    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("db-backup", 0))],
                   on_run=lambda _kwargs: put_record(store, manifest.key, _record(manifest.id, ok=True)))

    report = _run(tmp_path, fake)

    (call,) = fake.run_calls
    assert call["overrides"]["containerOverrides"][0]["command"] == [
        "drill", "curation", "production", "--backup", manifest.id, "--executor", "local"]
    assert report.result == SUCCESS and report.action == "drill" and report.backup_id == manifest.id
    assert report.message is not None and "1 table, 3 rows" in report.message and "PostgreSQL 17.2" in report.message


def test_a_task_that_exits_0_without_a_record_is_a_failure(tmp_path: Path) -> None:
    _stored(tmp_path)
    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("db-backup", 0))])
    with pytest.raises(JobFailed, match="left no drill record"):
        _run(tmp_path, fake)


def test_a_failed_drill_fails_the_run_with_its_reason(tmp_path: Path) -> None:
    store, manifest = _stored(tmp_path)
    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("db-backup", 1))],
                   on_run=lambda _kwargs: put_record(store, manifest.key, _record(manifest.id, ok=False)))
    with pytest.raises(JobFailed, match="exit"):
        _run(tmp_path, fake)


def test_a_to_url_drill_is_not_sent_to_ecs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    use_targets(monkeypatch, tmp_path)
    run = run_main(["drill", "curation", "beta", "--to-url", "postgresql://drill@scratch:5432/postgres", "--executor", "ecs"], capsys)
    assert run.code == 2
    assert run.err_lines[-1] == "error: --to-url drills run locally; drop --executor ecs"


def test_when_latest_could_not_be_pinned_the_record_written_since_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nightly backup finishing mid-drill is not the backup the task drilled."""
    store, manifest = _stored(tmp_path)
    real = remote.resolve_backup
    calls: list[str] = []

    def flaky(*args: Any) -> Any:
        calls.append(args[-1])
        if len(calls) == 1:
            raise InfraError("the store is slow to answer")
        return real(*args)

    monkeypatch.setattr(remote, "resolve_backup", flaky)
    clock = FakeClock()

    def task_ran(_kwargs: Any) -> None:
        put_record(store, manifest.key, replace(_record(manifest.id, ok=True), checked_at=clock.now()))
        write_manifest(store, "curation", "production", datetime(2024, 5, 1, 3, 0, tzinfo=UTC), None)  # the nightly, meanwhile

    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("db-backup", 0))], on_run=task_ran)
    job = drill_job(unit_registry(tmp_path), "production")
    report = remote.run(job, services(clock, FakeAws(fake, FakeLogs(clock, []))), GithubEnv(), timeout_s=3600, policy=FAST,
                        out=io.StringIO())

    (call,) = fake.run_calls
    assert "latest" in call["overrides"]["containerOverrides"][0]["command"]
    assert report.result == SUCCESS and report.message is not None and "1 table, 3 rows" in report.message


def test_when_latest_could_not_be_pinned_an_older_record_is_not_this_drills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, manifest = _stored(tmp_path)
    put_record(store, manifest.key, replace(_record(manifest.id, ok=True), checked_at=datetime(2024, 4, 1, tzinfo=UTC)))

    def unreachable(*_args: Any) -> Any:
        raise InfraError("the store is slow to answer")

    monkeypatch.setattr(remote, "resolve_backup", unreachable)
    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("db-backup", 0))])
    with pytest.raises(JobFailed, match=r"left no drill record .* since"):
        _run(tmp_path, fake)


def test_json_of_an_ecs_drill_is_refused_not_silently_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    use_targets(monkeypatch, tmp_path)
    run = run_main(["drill", "curation", "beta", "--executor", "ecs", "--json"], capsys)
    assert run.code == 2
    assert run.err_lines[-1].startswith("error: --json prints a local drill's record;")


DRILL_ROLE = "arn:aws:iam::123456789012:role/db-backup-DrillTaskRole-DEF456"


def test_with_a_drill_role_configured_the_task_runs_as_it(tmp_path: Path) -> None:
    """The drill runs the dump's SQL as superuser in the task: the role that cannot read database credentials."""
    store, manifest = _stored(tmp_path)
    text = unit_targets(tmp_path).replace(f"    nonproduction_task_role_arn: {NONPROD_ROLE}\n",
                                          f"    nonproduction_task_role_arn: {NONPROD_ROLE}\n    drill_task_role_arn: {DRILL_ROLE}\n")
    reg = parse_registry(text)
    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("db-backup", 0))],
                   on_run=lambda _kwargs: put_record(store, manifest.key, _record(manifest.id, ok=True)))
    clock = FakeClock()
    report = remote.run(drill_job(reg, "production"), services(clock, FakeAws(fake, FakeLogs(clock, []))), GithubEnv(),
                        timeout_s=3600, policy=FAST, out=io.StringIO())

    (call,) = fake.run_calls
    assert call["overrides"]["taskRoleArn"] == DRILL_ROLE
    assert call["overrides"]["containerOverrides"][0]["command"][:3] == ["drill", "curation", "production"]
    assert report.result == SUCCESS
