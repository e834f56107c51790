"""ECS fixtures on the moto server: a cluster, task definition, log group, bucket, and a fake Fargate.

moto's server runs in this process, so its ECS backend can be patched here: a started task can
run its command as a real local process, write its output into moto's CloudWatch Logs, and
report that process's exit code, which moto alone cannot do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ecs.models import EC2ContainerServiceBackend, Task
from moto.logs.models import logs_backends

from tests.conftest import MotoServer

REGION = "us-east-1"
CLUSTER = "db-backup"
CONTAINER = "db-backup"
LOG_GROUP = "/ecs/db-backup"
BUCKET = "db-backups"
PASSWORD_VAR = "DB_BACKUP_TEST_PGPASSWORD"
DB_BACKUP = Path(sys.executable).parent / "db-backup"
PROCESS_LIMIT_S = 120


@dataclass
class EcsWorld:
    """The AWS side of one test, as targets.yaml needs it."""

    endpoint: str
    subnet: str
    security_group: str
    tmp: Path

    def targets(self, databases: dict[str, dict[str, Any]], protected: bool = False) -> Path:
        """Write targets.yaml: one target per env of identifier `curation`, database as given."""
        lines = [
            "version: 1",
            "defaults:",
            f"  storage: s3://{BUCKET}",
            f"  region: {REGION}",
            "  ecs:",
            f"    cluster: {CLUSTER}",
            "    task_definition: db-backup",
            f"    container: {CONTAINER}",
            f"    subnets: [{self.subnet}]",
            f"    security_groups: [{self.security_group}]",
            "    assign_public_ip: false",
            f"    log_group: {LOG_GROUP}",
            "environments:",
            f"  production: {{protected: {'true' if protected else 'false'}}}",
            "  beta: {}",
            "targets:",
        ]
        for env, db in databases.items():
            lines.append(f"  - identifier: curation\n    env: {env}\n    database: {{host: {db['host']}, port: {db['port']}, "
                         f"name: {db['name']}, user: {db['user']}, password: 'env:{PASSWORD_VAR}'}}")
        path = self.tmp / "targets.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path


@pytest.fixture
def ecs_world(aws: MotoServer, tmp_path: Path) -> EcsWorld:
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnet = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"][0]["SubnetId"]
    group = ec2.create_security_group(GroupName="db-backup-task", Description="task", VpcId=vpc)["GroupId"]
    ecs = boto3.client("ecs", region_name=REGION)
    ecs.create_cluster(clusterName=CLUSTER)
    ecs.register_task_definition(
        family="db-backup", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="1024", memory="2048",
        containerDefinitions=[{
            "name": CONTAINER, "image": "db-backup:test", "essential": True, "memory": 2048,  # moto needs memory here
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": LOG_GROUP, "awslogs-region": REGION, "awslogs-stream-prefix": "ecs"}},
        }],
    )
    boto3.client("logs", region_name=REGION).create_log_group(logGroupName=LOG_GROUP)
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    return EcsWorld(aws.endpoint, subnet, group, tmp_path)


def append_log(stream: str, *lines: str) -> None:
    """Write lines into moto's CloudWatch Logs as the awslogs driver would (stream made on first use)."""
    backend = logs_backends[DEFAULT_ACCOUNT_ID][REGION]
    group = backend.groups[LOG_GROUP]
    if stream not in group.streams:
        backend.create_log_stream(LOG_GROUP, stream)
    now = int(time.time() * 1000)
    backend.put_log_events(LOG_GROUP, stream, [{"timestamp": now, "message": line} for line in lines])


def stream_of(task: Task) -> str:
    return f"ecs/{CONTAINER}/{task.id}"


def finish(task: Task, exit_code: int, reason: str = "Essential container in task exited") -> None:
    """Put a held task into STOPPED with this exit code on its container."""
    for container in task.containers:
        container.exitCode = exit_code
        container.last_status = "STOPPED"
    task.__dict__.pop("advance", None)
    task.stopped_reason = reason
    task.last_status = "STOPPED"
    task.desired_status = "STOPPED"


@dataclass
class FakeFargate:
    """Hooks into moto's ECS: see each started task and, if asked, run its command for real."""

    mode: str = "moto"  # moto: moto's own stepping; hold: RUNNING until stopped; process: run the command
    env: dict[str, str] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list)
    on_describe: Callable[[Task, int], None] | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    describes: int = 0

    def started(self, task: Task) -> None:
        self.tasks.append(task)
        if self.mode in ("hold", "process"):
            task.advance = lambda: None  # type: ignore[method-assign]  # stays RUNNING
        if self.mode == "process":
            thread = threading.Thread(target=self._run, args=(task,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def command(self, task: Task) -> list[str]:
        return list(task.overrides["containerOverrides"][0]["command"])

    def _run(self, task: Task) -> None:
        override = task.overrides["containerOverrides"][0]
        env = {**self.env, **{item["name"]: item["value"] for item in override.get("environment", [])}}
        proc = subprocess.Popen([str(DB_BACKUP), *override["command"]], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        killer = threading.Timer(PROCESS_LIMIT_S, proc.kill)
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                append_log(stream_of(task), line.rstrip("\n"))
            code = proc.wait(timeout=PROCESS_LIMIT_S)
        finally:
            killer.cancel()
        finish(task, code)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=PROCESS_LIMIT_S)


@pytest.fixture
def fake_fargate(ecs_world: EcsWorld, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFargate]:
    fake = FakeFargate(env={
        "PATH": os.environ.get("PATH", ""), "HOME": str(ecs_world.tmp), "LC_ALL": "C.UTF-8",
        "AWS_ENDPOINT_URL": ecs_world.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION, "DB_BACKUP_TARGETS": str(ecs_world.tmp / "targets.yaml"),
    })
    original_run = EC2ContainerServiceBackend.run_task
    original_describe = EC2ContainerServiceBackend.describe_tasks

    def run_task(backend: EC2ContainerServiceBackend, *args: Any, **kwargs: Any) -> list[Task]:
        tasks = original_run(backend, *args, **kwargs)
        for task in tasks:
            fake.started(task)
        return tasks

    def describe_tasks(backend: EC2ContainerServiceBackend, *args: Any, **kwargs: Any) -> list[Task]:
        found = original_describe(backend, *args, **kwargs)
        fake.describes += 1
        if fake.on_describe:
            for task in found:
                fake.on_describe(task, fake.describes)
        return found

    monkeypatch.setattr(EC2ContainerServiceBackend, "run_task", run_task)
    monkeypatch.setattr(EC2ContainerServiceBackend, "describe_tasks", describe_tasks)
    yield fake
    fake.join()
