"""The ECS executor against the moto server over HTTP: the real requests, log tailing, reports."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from runner import cli
from runner.aws import AwsClients
from runner.ecs import remote
from runner.ecs.request import RemoteJob
from runner.ecs.task import Policy
from runner.errors import ExitCode
from runner.services import Services
from runner.settings import GithubEnv, Settings
from runner.targets import load_registry
from tests.aws.conftest import PASSWORD_VAR, EcsWorld
from tests.conftest import REPO, run_cli
from tests.helpers.backups import sample_manifest
from tests.helpers.clock import FakeClock
from tests.helpers.ecs import BUCKET, DB_BACKUP, REGION, FakeFargate, FargateTask, register_task_definition

SECRET = "pg-Secret-never-in-a-request-91"
BOGUS_DB = {"production": {"host": "db.internal", "port": 5432, "name": "curation", "user": "backup"}}


def put_backup(request_id: str, backup_id: str = "2024-05-01_02-00-00", size: int = 321) -> None:
    """What a successful task leaves in the bucket: the dump and its manifest."""
    key = f"curation/production/{backup_id}.dump"
    manifest = sample_manifest(key, backup_id=backup_id, duration_s=2.5, size=size, sha256="cd" * 32, request_id=request_id)
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

    def task_side(task: FargateTask, describe_count: int) -> None:
        # The stream appears only on the second look, like a container that starts logging late.
        if describe_count == 1:
            put_backup(option(task.command, "--request-id"))
        if describe_count >= 2:
            task.append_log(f"line {describe_count}")

    fake_fargate.on_describe = task_side
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    gh = GithubEnv(actions=True, step_summary=summary, output=output, repository="org/db-backup", run_id="4711", run_attempt="1")
    out = io.StringIO()
    services = Services(settings=Settings(), clock=FakeClock(), aws=AwsClients())
    job = RemoteJob(action="backup", target=target)
    report = remote.run(job, services, gh, timeout_s=3600, policy=Policy(drain_quiet_s=3), out=out)

    [fargate_task] = fake_fargate.tasks
    task = fargate_task.moto
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
    assert f"task-arn={task.arn}\n" in output.read_text() and "result=started\n" in output.read_text()
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
    assert task.moto.desired_status == "STOPPED" and "cancelled by SIGTERM" in task.moto.stopped_reason
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
    assert task.moto.desired_status == "STOPPED" and f"cancelled by {signum.name}" in task.moto.stopped_reason
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert outputs["result"] == "cancelled" and outputs["exit-code"] == "130"
    assert Path(outputs["stderr-file"]).read_text().splitlines()[-1].startswith(f"error: cancelled by {signum.name}")


# --- targets.yaml against the task definition ---------------------------------------------------------


@pytest.mark.parametrize(("named", "expected"), [
    ({"container": "app"},
     "error: ecs.container 'app' in targets.yaml is not the task definition's essential container 'db-backup' "
     "(db-backup:1); remove ecs.container or set it to 'db-backup'"),
    ({"log_group": "/ecs/elsewhere"},
     "error: ecs.log_group '/ecs/elsewhere' in targets.yaml is not the task definition's awslogs-group '/ecs/db-backup' "
     "(db-backup:1, container 'db-backup'); remove ecs.log_group or set it to '/ecs/db-backup'"),
    ({"log_stream_prefix": "jobs"},
     "error: ecs.log_stream_prefix 'jobs' in targets.yaml is not the task definition's awslogs-stream-prefix 'ecs' "
     "(db-backup:1, container 'db-backup'); remove ecs.log_stream_prefix or set it to 'ecs'"),
], ids=["container", "log_group", "log_stream_prefix"])
def test_a_setting_that_contradicts_the_task_definition_exits_2_before_any_task(
    ecs_world: EcsWorld, fake_fargate: FakeFargate, tmp_path: Path, named: dict[str, str], expected: str,
) -> None:
    targets = ecs_world.targets(BOGUS_DB, named=named)
    output = tmp_path / "output"
    done = run_cli("--targets", str(targets), "backup", "curation", "production", "--executor", "ecs",
                   env={"GITHUB_OUTPUT": str(output)})
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert done.stderr.splitlines() == [expected]
    assert fake_fargate.tasks == [] and fake_fargate.describes == 0
    assert boto3.client("ecs", region_name=REGION).list_tasks(cluster=ecs_world.infra.cluster)["taskArns"] == []
    assert "result=failure\n" in output.read_text()


def test_a_log_group_for_a_task_definition_without_awslogs_exits_2(ecs_world: EcsWorld, fake_fargate: FakeFargate) -> None:
    register_task_definition("quiet", "db-backup", log_group=None)
    targets = ecs_world.targets(BOGUS_DB, task_definition="quiet", named={"log_group": "/ecs/db-backup"})
    done = run_cli("--targets", str(targets), "backup", "curation", "production", "--executor", "ecs")
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert done.stderr.splitlines() == [
        "error: ecs.log_group '/ecs/db-backup' is set in targets.yaml, but container 'db-backup' of task definition "
        "quiet:1 has no log configuration; remove ecs.log_group"]
    assert fake_fargate.tasks == []


def test_several_essential_containers_need_ecs_container(ecs_world: EcsWorld, fake_fargate: FakeFargate) -> None:
    boto3.client("ecs", region_name=REGION).register_task_definition(
        family="pair", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="1024",
        containerDefinitions=[{"name": name, "image": "x:test", "essential": True, "memory": 256} for name in ("app", "proxy")],
    )
    done = run_cli("--targets", str(ecs_world.targets(BOGUS_DB, task_definition="pair", named={})),
                   "backup", "curation", "production", "--executor", "ecs")
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert done.stderr.splitlines() == [
        "error: task definition pair:1 has 2 essential containers ('app', 'proxy'); "
        "set ecs.container in targets.yaml to the one that runs db-backup"]
    assert fake_fargate.tasks == []


def test_a_task_definition_without_awslogs_runs_without_a_log_link(ecs_world: EcsWorld, fake_fargate: FakeFargate,
                                                                    tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    register_task_definition("quiet", "worker", log_group=None)
    target = load_registry(ecs_world.targets(BOGUS_DB, task_definition="quiet", named={})).get("curation", "production")
    fake_fargate.on_describe = lambda task, count: put_backup(option(task.command, "--request-id")) if count == 1 else None
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    out = io.StringIO()
    services = Services(settings=Settings(), clock=FakeClock(), aws=AwsClients())
    report = remote.run(RemoteJob(action="backup", target=target), services, GithubEnv(step_summary=summary, output=output),
                        timeout_s=3600, policy=Policy(drain_quiet_s=3), out=out)

    [task] = fake_fargate.tasks
    assert task.moto.overrides["containerOverrides"][0]["name"] == "worker"
    assert report.result == "success" and report.logs_url is None
    note = "not in CloudWatch Logs: container 'worker' of task definition quiet:1 has no log configuration"
    assert f"  logs: {note}\n" in out.getvalue()
    assert re.search(rf"^Logs +{re.escape(note)}$", out.getvalue(), re.MULTILINE), out.getvalue()  # the summary table's row
    text = summary.read_text()
    assert f"| Logs | {note} |" in text and "CloudWatch log stream" not in text and "[ECS task](" in text
    assert "logs-url=\n" in output.read_text()
    assert "never appeared" not in caplog.text
