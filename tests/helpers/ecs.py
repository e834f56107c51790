"""ECS test doubles, one of each: fake ECS and CloudWatch Logs behind real boto3 clients (an
AwsClients subclass), the stack's AWS side on moto, and a fake Fargate.

The fake services answer real botocore clients before anything is sent, so every request the
runner makes is still checked against the service model. moto's server runs in the test process,
so FakeFargate can hook its ECS backend: a started task runs its container command as a real
process, writes its output into moto's CloudWatch Logs and reports the exit code, which moto
alone cannot do.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.session
from botocore.awsrequest import AWSResponse
from botocore.client import BaseClient
from botocore.compat import HTTPHeaders
from botocore.exceptions import ClientError

from runner.aws import AwsClients
from runner.ecs import remote
from runner.ecs.request import RemoteJob, run_task_params, task_request
from runner.ecs.task import Backoff, Policy
from runner.ecs.taskdef import TaskDefinition
from runner.services import Services
from runner.settings import GithubEnv, Settings
from runner.targets import Registry, parse_registry
from tests.helpers.clock import FakeClock

if TYPE_CHECKING:
    import pytest
    from botocore.model import OperationModel
    from moto.ecs.models import EC2ContainerServiceBackend, Task
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_ecs.type_defs import RunTaskRequestTypeDef
    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient


# --- fake ECS and CloudWatch Logs behind real clients --------------------------------------------

UNIT_REGION = "eu-west-1"
ARN = f"arn:aws:ecs:{UNIT_REGION}:123456789012:task/db-backup/0123456789abcdef0123456789abcdef"
TASK_ID = ARN.rsplit("/", 1)[1]
AWSLOGS: Mapping[str, Any] = {"logDriver": "awslogs", "options": {
    "awslogs-group": "/ecs/db-backup", "awslogs-region": UNIT_REGION, "awslogs-stream-prefix": "ecs"}}


def client_error(code: str, message: str = "", op: str = "DescribeTasks") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, op)


def container(name: str, exit_code: int | None = None, reason: str | None = None, status: str = "STOPPED") -> dict[str, Any]:
    """A container as describe_tasks shows it."""
    item: dict[str, Any] = {"name": name, "lastStatus": status}
    if exit_code is not None:
        item["exitCode"] = exit_code
    if reason:
        item["reason"] = reason
    return item


def task(status: str, *containers: dict[str, Any], stop_code: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """A task as describe_tasks shows it."""
    item: dict[str, Any] = {"taskArn": ARN, "lastStatus": status, "containers": list(containers)}
    if stop_code:
        item["stopCode"] = stop_code
    if reason:
        item["stoppedReason"] = reason
    return item


def container_definition(name: str, *, essential: bool | None = True, logs: Mapping[str, Any] | None = AWSLOGS) -> dict[str, Any]:
    """A container of a task definition; essential None leaves the key out (ECS then counts it essential)."""
    item: dict[str, Any] = {"name": name, "image": "db-backup:test"}
    if essential is not None:
        item["essential"] = essential
    if logs is not None:
        item["logConfiguration"] = copy.deepcopy(dict(logs))
    return item


def task_definition(*containers: dict[str, Any], family: str = "db-backup", revision: int = 7) -> dict[str, Any]:
    """A task definition as describe_task_definition shows it: by default the stack's one container."""
    return {
        "taskDefinitionArn": f"arn:aws:ecs:{UNIT_REGION}:123456789012:task-definition/{family}:{revision}",
        "family": family, "revision": revision,
        "containerDefinitions": list(containers) or [container_definition("db-backup")],
    }


Client = TypeVar("Client", bound=BaseClient)


def _method(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


class _Answers:
    """Answers a real client's requests from this object's methods (RunTask -> run_task), in place
    of sending them; botocore has validated each request against the service model by then."""

    def __init__(self) -> None:
        self._attached: set[int] = set()
        self._params: dict[str, Any] = {}

    def attach(self, client: Client) -> Client:
        if id(client) not in self._attached:
            service = client.meta.service_model.service_id.hyphenize()
            client.meta.events.register(f"before-parameter-build.{service}", self._keep_params)
            # A before-call handler's answer replaces the request (botocore's own Stubber works so).
            client.meta.events.register(f"before-call.{service}", self._answer)  # type: ignore[arg-type]
            self._attached.add(id(client))
        return client

    def _keep_params(self, params: dict[str, Any], **_kwargs: Any) -> None:
        self._params = copy.deepcopy(params)

    def _answer(self, model: OperationModel, params: dict[str, Any], **_kwargs: Any) -> tuple[AWSResponse, dict[str, Any]]:
        answer: dict[str, Any] = getattr(self, _method(model.name))(**self._params)
        return AWSResponse(str(params.get("url", "")), 200, HTTPHeaders(), None), answer


class FakeEcs(_Answers):
    """describe_tasks answers from a script (the last entry repeats); run_task from another."""

    def __init__(self, states: list[Any], runs: list[Any] | None = None, on_run: Any = None,
                 taskdef: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.states = list(states)
        self.runs = list(runs or [])
        self.on_run = on_run
        self.taskdef = taskdef or task_definition()
        self.run_calls: list[dict[str, Any]] = []
        self.describe_calls = 0
        self.taskdef_calls: list[str] = []
        self.stops: list[str] = []

    def describe_task_definition(self, taskDefinition: str, **_kwargs: Any) -> dict[str, Any]:
        self.taskdef_calls.append(taskDefinition)
        return {"taskDefinition": self.taskdef}

    def run_task(self, **kwargs: Any) -> dict[str, Any]:
        self.run_calls.append(kwargs)
        result = self.runs.pop(0) if self.runs else {"tasks": [{"taskArn": ARN, "lastStatus": "PROVISIONING"}], "failures": []}
        if isinstance(result, BaseException):
            raise result
        if result.get("tasks") and self.on_run:
            self.on_run(kwargs)
        return dict(result)

    def describe_tasks(self, cluster: str, tasks: list[str]) -> dict[str, Any]:
        assert cluster == "db-backup" and tasks == [ARN]
        self.describe_calls += 1
        item = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if isinstance(item, BaseException):
            raise item
        if item is None:
            return {"tasks": [], "failures": [{"arn": ARN, "reason": "MISSING"}]}
        return {"tasks": [item], "failures": []}

    def stop_task(self, **kwargs: str) -> dict[str, Any]:
        assert kwargs["task"] == ARN and kwargs["cluster"] == "db-backup"
        reason = kwargs["reason"]
        self.stops.append(reason)
        self.states = [task("STOPPED", container("db-backup", 143), stop_code="UserInitiated", reason=reason)]
        return {"task": self.states[0]}


class FakeLogs(_Answers):
    """A log stream whose lines appear at given (fake) times; it may appear late or throttle."""

    def __init__(self, clock: FakeClock, lines: Sequence[tuple[float, str]], appears_at: float = 0.0,
                 throttle_calls: frozenset[int] = frozenset(), group: str = "/ecs/db-backup",
                 stream: str = f"ecs/db-backup/{TASK_ID}") -> None:
        super().__init__()
        self.clock = clock
        self.lines = lines
        self.appears_at = appears_at
        self.throttle_calls = throttle_calls
        self.group = group
        self.stream = stream
        self.calls = 0
        self.call_times: list[float] = []

    def get_log_events(self, **request: Any) -> dict[str, Any]:
        self.calls += 1
        self.call_times.append(self.clock.t)
        assert request["logGroupName"] == self.group and request["logStreamName"] == self.stream and request["startFromHead"]
        nextToken = request.get("nextToken")
        if self.calls in self.throttle_calls:
            raise client_error("ThrottlingException", "Rate exceeded", "GetLogEvents")
        if self.clock.t < self.appears_at:
            raise client_error("ResourceNotFoundException", "The specified log stream does not exist.", "GetLogEvents")
        start = int(nextToken.split("/")[1]) if nextToken else 0
        visible = [line for at, line in self.lines if at <= self.clock.t]
        page = visible[start : start + 2]  # small pages: the tail must follow nextForwardToken
        return {"events": [{"timestamp": 0, "message": m + "\n"} for m in page], "nextForwardToken": f"f/{start + len(page)}"}


_BOTOCORE = botocore.session.get_session()  # one session: the service models load once


class FakeAws(AwsClients):
    """The real AwsClients, making real boto3 clients whose requests the fakes answer."""

    def __init__(self, ecs: FakeEcs, logs: FakeLogs | None = None, *, region: str = UNIT_REGION,
                 logs_region: str | None = None) -> None:
        super().__init__(boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                               botocore_session=_BOTOCORE))
        self.fake_ecs = ecs
        self.fake_logs = logs
        self.region = region
        self.logs_region = logs_region or region

    def ecs(self, region: str) -> ECSClient:
        assert region == self.region
        return self.fake_ecs.attach(super().ecs(region))

    def ecs_held(self, region: str) -> ECSClient:
        assert region == self.region
        return self.fake_ecs.attach(super().ecs_held(region))

    def logs(self, region: str) -> CloudWatchLogsClient:
        assert region == self.logs_region and self.fake_logs is not None, region
        return self.fake_logs.attach(super().logs(region))

    def s3(self, region: str) -> S3Client:
        raise AssertionError("storage is a local folder in these tests")

    def ssm(self, region: str) -> SSMClient:
        raise AssertionError("the runner must not resolve database secrets for an ECS run")


# --- the stack's AWS side on moto (AWS_ENDPOINT_URL points boto3 at the moto server) ---------------

REGION = "us-east-1"
BUCKET = "db-backups"
DB_BACKUP = Path(sys.executable).parent / "db-backup"
PROCESS_LIMIT_S = 120


@dataclass(frozen=True)
class EcsInfra:
    """What the CloudFormation stack provides: network, cluster, task definition, log group, bucket."""

    cluster: str
    subnet: str
    security_group: str
    bucket: str
    task_definition: str  # the family
    container: str  # its essential container
    log_group: str | None  # None: the container has no log configuration
    stream_prefix: str | None


def register_task_definition(
    family: str = "db-backup", container: str = "db-backup", *, log_group: str | None = "/ecs/db-backup",
    stream_prefix: str | None = "ecs", log_region: str = REGION, sidecars: Sequence[str] = (),
) -> None:
    """A Fargate task definition: non-essential sidecars first, then the essential container; its
    awslogs group is created in `log_region`."""
    main: dict[str, Any] = {"name": container, "image": "db-backup:test", "essential": True, "memory": 512}  # moto needs memory
    if log_group is not None:
        options = {"awslogs-group": log_group, "awslogs-region": log_region}
        if stream_prefix is not None:
            options["awslogs-stream-prefix"] = stream_prefix
        main["logConfiguration"] = {"logDriver": "awslogs", "options": options}
        logs = boto3.client("logs", region_name=log_region)
        if not logs.describe_log_groups(logGroupNamePrefix=log_group)["logGroups"]:
            logs.create_log_group(logGroupName=log_group)
    sidecar_definitions = [{"name": name, "image": "sidecar:test", "essential": False, "memory": 128} for name in sidecars]
    boto3.client("ecs", region_name=REGION).register_task_definition(
        family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="1024",
        containerDefinitions=[*sidecar_definitions, main],  # type: ignore[list-item]
    )


def make_ecs_infra(
    *, bucket: str = BUCKET, cluster: str = "db-backup", family: str = "db-backup", container: str = "db-backup",
    log_group: str | None = "/ecs/db-backup", stream_prefix: str | None = "ecs", log_region: str = REGION,
    sidecars: Sequence[str] = (),
) -> EcsInfra:
    """The stack's resources on moto; by default with the stack's names."""
    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.40.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="db-backup-task", Description="db-backup task", VpcId=vpc)["GroupId"]
    boto3.client("ecs", region_name=REGION).create_cluster(clusterName=cluster)
    register_task_definition(family, container, log_group=log_group, stream_prefix=stream_prefix, log_region=log_region,
                             sidecars=sidecars)
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=bucket)
    return EcsInfra(cluster, subnet, group, bucket, family, container, log_group, stream_prefix)


def append_log(region: str, group: str, stream: str, *lines: str) -> None:
    """Write lines into moto's CloudWatch Logs as the awslogs driver would (stream made on first use)."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.logs.models import logs_backends

    backend = logs_backends[DEFAULT_ACCOUNT_ID][region]
    if stream not in backend.groups[group].streams:
        backend.create_log_stream(group, stream)
    now = int(time.time() * 1000)
    backend.put_log_events(group, stream, [{"timestamp": now, "message": line} for line in lines])


@dataclass
class FargateTask:
    """One task started on moto, as the fake Fargate saw it (and, in process mode, ran it)."""

    moto: Task
    command: list[str]
    environment: dict[str, str]
    container: str  # the container the command override is for
    awslogs: tuple[str, str, str] | None  # (region, group, stream) of that container's log
    returncode: int | None = None
    output: str = ""

    @property
    def arn(self) -> str:
        return str(self.moto.task_arn)

    @property
    def id(self) -> str:
        return str(self.moto.id)

    def append_log(self, *lines: str) -> None:
        assert self.awslogs is not None, "the task definition's container does not log to CloudWatch"
        append_log(*self.awslogs, *lines)


@dataclass
class FakeFargate:
    """Plays Fargate for moto's ECS while entered. By `mode`, a started task is left to moto's own
    stepping ("moto"), held RUNNING until stopped ("hold"), or its container command is run here as a
    real process ("process"): its output goes to the container's awslogs stream and its exit code to
    that container, as on Fargate. Each task gets one container per container definition."""

    cluster: str
    env: dict[str, str] = field(default_factory=dict)  # the task definition's environment and secrets
    mode: str = "process"
    tasks: list[FargateTask] = field(default_factory=list)
    on_describe: Callable[[FargateTask, int], None] | None = None
    describes: int = 0
    threads: list[threading.Thread] = field(default_factory=list)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def __enter__(self) -> FakeFargate:
        from moto.ecs.models import EC2ContainerServiceBackend

        original_run = EC2ContainerServiceBackend.run_task
        original_describe = EC2ContainerServiceBackend.describe_tasks

        def run_task(backend: EC2ContainerServiceBackend, *args: Any, **kwargs: Any) -> list[Task]:
            started = original_run(backend, *args, **kwargs)
            for item in started:
                self._started(backend, item)
            return started

        def describe_tasks(backend: EC2ContainerServiceBackend, *args: Any, **kwargs: Any) -> list[Task]:
            found = original_describe(backend, *args, **kwargs)
            self.describes += 1
            if self.on_describe:
                for item in found:
                    record = next((t for t in self.tasks if t.moto is item), None)
                    if record is not None:
                        self.on_describe(record, self.describes)
            return found

        setattr(EC2ContainerServiceBackend, "run_task", run_task)  # noqa: B010  # patched on the class moto's server uses
        setattr(EC2ContainerServiceBackend, "describe_tasks", describe_tasks)  # noqa: B010
        self._undo.append(lambda: setattr(EC2ContainerServiceBackend, "run_task", original_run))
        self._undo.append(lambda: setattr(EC2ContainerServiceBackend, "describe_tasks", original_describe))
        return self

    def __exit__(self, *_exc: object) -> None:
        while self._undo:
            self._undo.pop()()
        self.join()

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=PROCESS_LIMIT_S)

    def _started(self, backend: EC2ContainerServiceBackend, item: Task) -> None:
        from moto.ecs.models import Container

        if item.cluster_name != self.cluster:
            return
        definition = backend.describe_task_definition(item.task_definition_arn)
        specs: list[dict[str, Any]] = definition.container_definitions
        containers = []
        for spec in specs:  # moto itself makes only the first
            made = Container(definition)  # type: ignore[abstract]
            made.name, made.image = spec["name"], spec.get("image")
            containers.append(made)
        item.containers = containers
        override = (item.overrides.get("containerOverrides") or [{}])[0]
        name = str(override.get("name") or containers[-1].name)
        spec = next(s for s in specs if s["name"] == name)
        options = (spec.get("logConfiguration") or {}).get("options") or {}
        awslogs = None
        if "awslogs-group" in options and "awslogs-stream-prefix" in options:
            stream = f"{options['awslogs-stream-prefix']}/{name}/{item.id}"
            awslogs = (options.get("awslogs-region", REGION), options["awslogs-group"], stream)
        record = FargateTask(item, list(override.get("command") or []),
                             {e["name"]: e["value"] for e in override.get("environment") or []}, name, awslogs)
        self.tasks.append(record)
        if self.mode in ("hold", "process"):
            item.advance = lambda: None  # type: ignore[method-assign]  # stays RUNNING
        if self.mode == "process":
            thread = threading.Thread(target=self._run, args=(record,), name="fake-fargate", daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run(self, record: FargateTask) -> None:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "LC_ALL": "C.UTF-8",
               **self.env, **record.environment}
        proc = subprocess.Popen([str(DB_BACKUP), *record.command], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        killer = threading.Timer(PROCESS_LIMIT_S, proc.kill)
        killer.start()
        output = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.append(line)
                if record.awslogs is not None:
                    record.append_log(line.rstrip("\n"))
            code = proc.wait(timeout=PROCESS_LIMIT_S)
        finally:
            killer.cancel()
        record.output, record.returncode = "".join(output), code
        _exited(record.moto, record.container, code)


def _exited(item: Task, name: str, exit_code: int, reason: str = "Essential container in task exited") -> None:
    """Put a held task into STOPPED: container `name` exited with `exit_code`, the others were stopped."""
    for each in item.containers:
        each.exitCode = exit_code if each.name == name else 0
        each.last_status = "STOPPED"
    item.__dict__.pop("advance", None)
    item.stopped_reason = reason
    item.last_status = "STOPPED"
    item.desired_status = "STOPPED"


# --- the runner's side, for unit tests -----------------------------------------------------------

# Short waits, so a unit test's fake clock does not have to move far.
FAST = Policy(start_attempts=4, start_backoff=Backoff(5, 2, 60), poll_backoff=Backoff(2, 1.5, 30),
              log_interval=3, describe_errors=5, stop_wait_s=20, drain_quiet_s=4, drain_limit_s=30)
# What the runner reads from the stack's task definition (revision 7).
TASKDEF = TaskDefinition(name="db-backup:7", container="db-backup", logs=None, logs_missing="")


def services(clock: FakeClock, aws: FakeAws) -> Services:
    return Services(settings=Settings(), clock=clock, aws=aws)


NONPROD_ROLE = "arn:aws:iam::123456789012:role/db-backup-NonProductionTaskRole-ABC123"
# curation/production (protected) and curation/beta on ECS, with a non-production task role.
UNIT_TARGETS = """
version: 1
defaults:
  storage: file://{storage}
  region: eu-west-1
  ecs:
    cluster: db-backup
    task_definition: db-backup
    subnets: [subnet-a]
    nonproduction_task_role_arn: {role}
environments: {{production: {{protected: true}}, beta: {{}}}}
targets:
  - {{identifier: curation, env: production}}
  - {{identifier: curation, env: beta}}
"""


def unit_targets(tmp_path: Path) -> str:
    """UNIT_TARGETS with its store in `tmp_path`/store."""
    return UNIT_TARGETS.format(storage=tmp_path / "store", role=NONPROD_ROLE)


def unit_registry(tmp_path: Path) -> Registry:
    return parse_registry(unit_targets(tmp_path))


def use_targets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str | None = None) -> Path:
    """Write targets.yaml (UNIT_TARGETS unless given) and point the CLI at it."""
    path = tmp_path / "targets.yaml"
    path.write_text(unit_targets(tmp_path) if text is None else text)
    monkeypatch.setenv("DB_BACKUP_TARGETS", str(path))
    return path


def run_task_for(job: RemoteJob, environ: Mapping[str, str] | None = None, gh: GithubEnv | None = None,
                 request_id: str = "req1", token: int = 1) -> RunTaskRequestTypeDef:
    """The run_task request the runner would send for `job` (task definition TASKDEF)."""
    assert job.target.ecs is not None
    return run_task_params(job.target.ecs, task_request(job, TASKDEF, request_id, gh or GithubEnv(), environ or {}), token=token)


def command_of(params: Mapping[str, Any]) -> list[str]:
    """The command a run_task request gives the task's container."""
    return list(params["overrides"]["containerOverrides"][0]["command"])


def capture_jobs(monkeypatch: pytest.MonkeyPatch) -> list[RemoteJob]:
    """The jobs the CLI hands to the ECS runner, which is not run."""
    jobs: list[RemoteJob] = []
    monkeypatch.setattr(remote, "run", lambda job, *_args, **_kwargs: jobs.append(job))
    return jobs
