"""End to end: runner → (fake) Fargate task running the real CLI → PostgreSQL → S3 → manifest → summary."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from runner import cli
from runner.aws import AwsClients
from runner.catalog import list_backups
from runner.clock import SystemClock
from runner.ecs import remote
from runner.ecs.request import RemoteJob
from runner.ecs.task import Backoff, Policy
from runner.errors import ExitCode, JobFailed
from runner.services import Services
from runner.settings import GithubEnv, Settings
from runner.targets import load_registry, parse_registry
from tests.aws.conftest import PASSWORD_VAR, EcsWorld
from tests.conftest import PgCluster
from tests.helpers.ecs import BUCKET, FakeFargate

# The task is a real process taking real seconds, so the clock is real; the intervals are short.
QUICK = Policy(start_attempts=2, start_backoff=Backoff(0.1, 2, 1), poll_backoff=Backoff(0.1, 1.5, 0.5),
               log_interval=0.1, describe_errors=5, stop_wait_s=5, drain_quiet_s=0.5, drain_limit_s=5)
LOGS_REGION = "us-west-2"


@pytest.fixture
def task_definition_names() -> dict[str, Any]:
    """A task definition unlike the stack's: none of the names the runner once assumed (container
    db-backup, group /ecs/db-backup, prefix ecs), a sidecar listed first, and its logs in another
    region than the task. targets.yaml names none of them: the runner reads them all."""
    return {"container": "app", "log_group": "/acme/nightly-jobs", "stream_prefix": "jobs", "log_region": LOGS_REGION,
            "sidecars": ("log-router",)}


def logs_url(task_id: str) -> str:
    return (f"https://{LOGS_REGION}.console.aws.amazon.com/cloudwatch/home?region={LOGS_REGION}#logsV2:log-groups/log-group/"
            f"$252Facme$252Fnightly-jobs/log-events/jobs$252Fapp$252F{task_id}")


@pytest.fixture
def world(ecs_world: EcsWorld, fake_fargate: FakeFargate, pg: PgCluster, dbname: str,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[EcsWorld, FakeFargate, Path]]:
    """Targets curation/production (dbname, with data) and curation/beta (an empty sibling database)."""
    beta = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(beta)))
    with pg.connect(dbname) as conn:
        conn.execute("CREATE TABLE genes (id int PRIMARY KEY, symbol text)")
        conn.execute("INSERT INTO genes SELECT g, 'gene-' || g FROM generate_series(1, 500) g")
    base = {"host": pg.host, "port": pg.port, "user": pg.user}
    targets = ecs_world.targets({"production": {**base, "name": dbname}, "beta": {**base, "name": beta}}, named={})
    assert "container:" not in targets.read_text() and "log_" not in targets.read_text()
    fake_fargate.mode = "process"
    # The task definition's secret, which only the task gets (the runner never sees it here).
    fake_fargate.env.update({PASSWORD_VAR: pg.password, "DB_BACKUP_PG_BINDIR": str(pg.bindir), "DB_BACKUP_TARGETS": str(targets)})
    monkeypatch.delenv(PASSWORD_VAR, raising=False)
    for name in [k for k in os.environ if k.startswith("GITHUB_")]:
        monkeypatch.delenv(name)
    yield ecs_world, fake_fargate, targets


def services() -> Services:
    return Services(settings=Settings(), clock=SystemClock(), aws=AwsClients())


def test_backup_runs_whole(world: tuple[EcsWorld, FakeFargate, Path], tmp_path: Path) -> None:
    _, fargate, targets = world
    target = load_registry(targets).get("curation", "production")
    gh = GithubEnv(step_summary=tmp_path / "summary.md", output=tmp_path / "output")
    out = io.StringIO()
    job = RemoteJob(action="backup", target=target)
    report = remote.run(job, services(), gh, timeout_s=120, policy=QUICK, out=out)

    assert report.result == "success", out.getvalue()
    [entry] = list_backups(services().store(target), "curation", "production")
    assert entry.manifest is not None and entry.manifest.request_id is not None
    assert report.backup_id == entry.id and report.size_bytes == entry.size_bytes == entry.manifest.size_bytes
    assert report.backup_uri == f"s3://{BUCKET}/curation/production/{entry.id}.dump"
    assert f"[task] backup {entry.id} of curation/production" in out.getvalue()  # the task's own output, tailed
    outputs = (tmp_path / "output").read_text()
    assert f"backup-id={entry.id}\n" in outputs and "result=success\n" in outputs
    assert entry.manifest.sha256 in (tmp_path / "summary.md").read_text()
    [task] = fargate.tasks
    assert entry.manifest.request_id == task.moto.overrides["containerOverrides"][0]["command"][-1]
    # The task definition's names: its essential container ran the command, its stream was tailed and linked.
    assert task.moto.overrides["containerOverrides"][0]["name"] == "app"
    assert task.awslogs == (LOGS_REGION, "/acme/nightly-jobs", f"jobs/app/{task.id}")
    assert report.logs_url == logs_url(task.id) and f"logs-url={logs_url(task.id)}\n" in outputs
    assert f"[CloudWatch log stream]({logs_url(task.id)})" in (tmp_path / "summary.md").read_text()


def test_restore_runs_whole_through_the_cli(world: tuple[EcsWorld, FakeFargate, Path], pg: PgCluster, dbname: str,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, fargate, targets = world
    target = load_registry(targets).get("curation", "production")
    backup = remote.run(RemoteJob(action="backup", target=target), services(), GithubEnv(), timeout_s=120, policy=QUICK,
                        out=io.StringIO())
    output = tmp_path / "output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    monkeypatch.setattr(remote, "Policy", lambda: QUICK)  # the CLI uses the default policy; make it quick
    cli.app(args=["--targets", str(targets), "restore", "curation", "--from", "production", "--to", "beta",
                  "--executor", "ecs", "--timeout", "2m"], standalone_mode=False)

    command = fargate.tasks[-1].moto.overrides["containerOverrides"][0]["command"]
    assert command == ["restore", "curation", "--from", "production", "--to", "beta", "--backup", backup.backup_id,
                       "--executor", "local"]
    with pg.connect(f"{dbname}__beta") as conn:
        assert conn.execute("SELECT count(*) FROM genes").fetchone() == (500,)
    outputs = output.read_text()
    assert f"backup-id={backup.backup_id}\n" in outputs and "result=success\n" in outputs
    assert f"curation/production {backup.backup_id}" in (tmp_path / "summary.md").read_text()


def test_a_failing_task_fails_the_run_with_its_log(world: tuple[EcsWorld, FakeFargate, Path], tmp_path: Path) -> None:
    _, fargate, targets = world
    fargate.env[PASSWORD_VAR] = "wrong-password"
    target = load_registry(targets).get("curation", "production")
    gh = GithubEnv(actions=True, step_summary=tmp_path / "summary.md", output=tmp_path / "output")
    out = io.StringIO()
    with pytest.raises(JobFailed, match="exited with code") as caught:
        remote.run(RemoteJob(action="backup", target=target), services(), gh, timeout_s=120, policy=QUICK, out=out)
    assert caught.value.exit_code == ExitCode.FAILED
    # The verdict is the essential container's exit code (the sidecar listed before it exited 0), named.
    [task] = fargate.tasks
    assert task.returncode == 1 and [c.name for c in task.moto.containers] == ["log-router", "app"]
    assert str(caught.value).startswith(f"container app of ECS task {task.id} exited with code 1 (the job failed)")
    summary = (tmp_path / "summary.md").read_text()
    assert "failure" in summary and "<details>" in summary and "password authentication failed" in summary
    assert "the task said: cannot connect" in str(caught.value)
    assert "result=failure\n" in (tmp_path / "output").read_text()
    assert "wrong-password" not in summary + out.getvalue()
    assert list_backups(services().store(target), "curation", "production") == []


def test_the_task_works_from_the_runners_targets_not_its_images(world: tuple[EcsWorld, FakeFargate, Path], pg: PgCluster,
                                                                dbname: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The image's targets.yaml is stale: production still names the database it moved away from.
    _, fargate, targets = world
    stale = tmp_path / "image-targets.yaml"
    stale.write_text(targets.read_text().replace(f"name: {dbname},", f"name: {dbname}__beta,"))
    assert load_registry(stale).get("curation", "production").database.name == f"{dbname}__beta"
    fargate.env["DB_BACKUP_TARGETS"] = str(stale)
    monkeypatch.setattr(remote, "Policy", lambda: QUICK)
    cli.app(args=["--targets", str(targets), "backup", "curation", "production", "--executor", "ecs", "--timeout", "2m"],
            standalone_mode=False)

    [entry] = list_backups(services().store(load_registry(targets).get("curation", "production")), "curation", "production")
    assert entry.manifest is not None and entry.manifest.database == dbname
    [task] = fargate.tasks
    sent = {item["name"]: item["value"] for item in task.moto.overrides["containerOverrides"][0]["environment"]}
    assert [(t.identifier, t.env) for t in parse_registry(sent["DB_BACKUP_TARGETS_JSON"]).targets] == [("curation", "production")]
    assert f"env:{PASSWORD_VAR}" in sent["DB_BACKUP_TARGETS_JSON"] and pg.password not in repr(task.moto.overrides)
