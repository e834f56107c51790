"""The ECS executor against the moto server over HTTP: the real requests, log tailing, reports."""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ecs.models import Task
from moto.s3.models import s3_backends

from runner import cli, ecs, remote
from runner.aws import AwsClients
from runner.errors import ExitCode
from runner.jobs import Services
from runner.settings import GithubEnv, Settings
from runner.storage import Manifest
from runner.targets import load_registry
from tests.aws.conftest import BUCKET, DB_BACKUP, PASSWORD_VAR, REGION, EcsWorld, FakeFargate, append_log, stream_of
from tests.conftest import REPO

SECRET = "pg-Secret-never-in-a-request-91"
BOGUS_DB = {"production": {"host": "db.internal", "port": 5432, "name": "curation", "user": "backup"}}


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> datetime:
        return datetime(2024, 5, 1, 2, 0, tzinfo=UTC)

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def put_backup(request_id: str, backup_id: str = "2024-05-01_02-00-00", size: int = 321) -> None:
    """What a successful task leaves in the bucket: the dump and its manifest."""
    key = f"curation/production/{backup_id}.dump"
    manifest = Manifest(identifier="curation", env="production", id=backup_id, key=key,
                        created_at=datetime(2024, 5, 1, 2, 0, tzinfo=UTC), duration_s=2.5, size_bytes=size,
                        sha256="cd" * 32, format="custom", compression="zstd:1", compressed_by="zstd",
                        pg_dump_version="17.2", server_version="16.4", database="curation", tool_version="0.1.0",
                        request_id=request_id)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.put_object(BUCKET, key, b"d" * size)
    backend.put_object(BUCKET, key + ".json", manifest.to_json().encode())


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_run_task_request_logs_summary_and_outputs(ecs_world: EcsWorld, fake_fargate: FakeFargate,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(PASSWORD_VAR, SECRET)
    monkeypatch.setenv("DB_BACKUP_PART_SIZE_MB", "32")
    registry = load_registry(ecs_world.targets(BOGUS_DB))
    target = registry.get("curation", "production")

    def task_side(task: Task, describe_count: int) -> None:
        # The stream appears only on the second look, like a container that starts logging late.
        if describe_count == 1:
            put_backup(option(fake_fargate.command(task), "--request-id"))
        if describe_count >= 2:
            append_log(stream_of(task), f"line {describe_count}")

    fake_fargate.on_describe = task_side
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    gh = GithubEnv(actions=True, step_summary=summary, output=output, repository="org/db-backup", run_id="4711", run_attempt="1")
    out = io.StringIO()
    services = Services(settings=Settings(), clock=FakeClock(), aws=AwsClients())
    job = remote.RemoteJob(action="backup", target=target, argv=("backup", "curation", "production"))
    report = remote.run(job, services, gh, timeout_s=3600, policy=ecs.Policy(drain_quiet_s=3), out=out)

    [task] = fake_fargate.tasks
    override = task.overrides["containerOverrides"][0]
    assert override["name"] == "db-backup"
    assert override["command"][:5] == ["backup", "curation", "production", "--executor", "local"]
    assert override["environment"] == [{"name": "DB_BACKUP_PART_SIZE_MB", "value": "32"}]
    assert task.launch_type == "FARGATE"
    assert task.network_configuration == {"awsvpcConfiguration": {
        "subnets": [ecs_world.subnet], "securityGroups": [ecs_world.security_group], "assignPublicIp": "DISABLED"}}
    assert task.started_by == "db-backup/gh-4711-1"
    assert {"key": "db-backup:target", "value": "curation/production"} in task.tags
    assert SECRET not in json.dumps([task.overrides, task.tags, task.started_by])

    assert report.result == "success" and report.task_arn == task.task_arn
    assert report.backup_id == "2024-05-01_02-00-00" and report.size_bytes == 321
    printed = out.getvalue()
    assert "[task] line 2\n" in printed and "[task] line 3\n" in printed
    assert printed.index("[task] line 2") < printed.index("[task] line 3")

    logs_url = (f"https://{REGION}.console.aws.amazon.com/cloudwatch/home?region={REGION}#logsV2:log-groups/log-group/"
                f"$252Fecs$252Fdb-backup/log-events/ecs$252Fdb-backup$252F{task.id}")
    task_url = f"https://{REGION}.console.aws.amazon.com/ecs/v2/clusters/db-backup/tasks/{task.id}/configuration?region={REGION}"
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert outputs == {"backup-id": "2024-05-01_02-00-00", "backup-uri": f"s3://{BUCKET}/curation/production/2024-05-01_02-00-00.dump",
                       "task-arn": task.task_arn, "logs-url": logs_url, "result": "success"}
    text = summary.read_text()
    assert f"[CloudWatch log stream]({logs_url})" in text and f"[ECS task]({task_url})" in text
    assert "| Size | 321 B (321 bytes) |" in text and "<details>" not in text
    assert SECRET not in text + printed


def test_cli_detach_starts_and_returns_the_arn(ecs_world: EcsWorld, fake_fargate: FakeFargate,
                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    targets = ecs_world.targets(BOGUS_DB)
    output = tmp_path / "output"
    for name in [k for k in os.environ if k.startswith("GITHUB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    cli.app(args=["--targets", str(targets), "backup", "curation", "production", "--executor", "ecs", "--detach"],
            standalone_mode=False)
    [task] = fake_fargate.tasks
    assert f"task-arn={task.task_arn}\n" in output.read_text() and "result=started\n" in output.read_text()
    assert fake_fargate.describes == 0


def _read_lines(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def _wait_until_following(proc: subprocess.Popen[str], fake_fargate: FakeFargate) -> None:
    """Until the runner has started its task and polled it once: it is in the follow loop."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    while not any(line.startswith("started ECS task") for line in seen):
        seen.append(lines.get(timeout=60))
    deadline = time.monotonic() + 30
    while fake_fargate.describes < 1:
        assert time.monotonic() < deadline, "the runner never polled the task"
        time.sleep(0.05)


@pytest.mark.parametrize("moment", ["between polls", "during describe_tasks"])
def test_sigterm_while_following_stops_the_task_and_exits_130(ecs_world: EcsWorld, fake_fargate: FakeFargate,
                                                              tmp_path: Path, moment: str) -> None:
    # "during describe_tasks" holds the first answer until the signal has landed inside the request:
    # botocore once wrapped that signal into a retried HTTPClientError, and the cancel was lost.
    fake_fargate.mode = "hold"
    in_request, answer = threading.Event(), threading.Event()
    if moment == "during describe_tasks":
        def hold_first(_task: Any, count: int) -> None:
            if count == 1:
                in_request.set()
                answer.wait(timeout=30)
        fake_fargate.on_describe = hold_first
    targets = ecs_world.targets(BOGUS_DB)
    env = {**fake_fargate.env, "DB_BACKUP_TARGETS": str(targets), "AWS_REGION": REGION,
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"), "GITHUB_OUTPUT": str(tmp_path / "output")}
    proc = subprocess.Popen([str(DB_BACKUP), "backup", "curation", "production", "--executor", "ecs"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_until_following(proc, fake_fargate)
        if moment == "during describe_tasks":
            assert in_request.wait(timeout=30)
            time.sleep(0.2)  # the runner is now blocked reading the answer
        proc.send_signal(signal.SIGTERM)
        if moment == "during describe_tasks":
            time.sleep(0.2)
            answer.set()
        code = proc.wait(timeout=60)
    finally:
        answer.set()
        if proc.poll() is None:
            proc.kill()
    assert code == ExitCode.CANCELLED
    [task] = fake_fargate.tasks
    assert task.desired_status == "STOPPED" and "cancelled by SIGTERM" in task.stopped_reason
    assert "result=cancelled\n" in (tmp_path / "output").read_text()
    assert "cancelled" in (tmp_path / "summary.md").read_text()


def _action_run_step() -> str:
    action = yaml.safe_load((REPO / "actions" / "db-backup" / "action.yml").read_text())
    [step] = [s for s in action["runs"]["steps"] if s.get("id") == "run"]
    return str(step["run"])


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_cancelling_the_action_step_stops_the_task(ecs_world: EcsWorld, fake_fargate: FakeFargate, tmp_path: Path,
                                                   signum: signal.Signals) -> None:
    # GitHub signals only the step's bash on cancel; the action's script must pass it on to db-backup.
    fake_fargate.mode = "hold"
    output = tmp_path / "output"
    env = {**fake_fargate.env, "AWS_REGION": REGION, "IN_COMMAND": "backup", "IN_IDENTIFIER": "curation",
           "IN_ENV": "production", "IN_FROM": "", "IN_TO": "", "IN_BACKUP": "", "IN_CONFIRM": "",
           "IN_TARGETS": str(ecs_world.targets(BOGUS_DB)), "PY": sys.executable, "RUNNER_TEMP": str(tmp_path),
           "GITHUB_RUN_ID": "4711", "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    # As GitHub runs a `shell: bash` step: bash --noprofile --norc -eo pipefail {0}.
    script = tmp_path / "step.sh"
    script.write_text(_action_run_step())
    proc = subprocess.Popen(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_until_following(proc, fake_fargate)
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == ExitCode.CANCELLED
    [task] = fake_fargate.tasks
    assert task.desired_status == "STOPPED" and f"cancelled by {signum.name}" in task.stopped_reason
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert outputs["result"] == "cancelled" and outputs["exit-code"] == "130"
    assert Path(outputs["stderr-file"]).read_text().splitlines()[-1].startswith(f"error: cancelled by {signum.name}")
