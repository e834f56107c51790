"""The ECS executor against a fake ECS client and a fake clock: every path moto cannot produce."""

from __future__ import annotations

import io
import os
import signal
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    UnauthorizedSSOTokenError,
)

from runner import cli, ecs, remote
from runner.errors import Cancelled, ExitCode, InfraError, Interrupted, JobFailed, TimedOut
from runner.jobs import Services
from runner.logs import LogTail
from runner.settings import GithubEnv, Settings
from runner.storage import LocalStore, Manifest, make_id
from runner.targets import Target, parse_registry

ARN = "arn:aws:ecs:eu-west-1:123456789012:task/db-backup/0123456789abcdef0123456789abcdef"
TASK_ID = ARN.rsplit("/", 1)[1]


class FakeClock:
    """Time moves only when someone sleeps; a cancel can be scheduled to arrive during a sleep."""

    def __init__(self, cancel_at: float | None = None) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []
        self.cancel_at = cancel_at

    def now(self) -> datetime:
        return datetime(2024, 5, 1, 2, 0, tzinfo=UTC) + timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.t += seconds
        if self.cancel_at is not None and self.t >= self.cancel_at:
            self.cancel_at = None
            raise Interrupted("cancelled by SIGTERM")


def client_error(code: str, message: str = "", op: str = "DescribeTasks") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, op)


def container(name: str, exit_code: int | None = None, reason: str | None = None, status: str = "STOPPED") -> dict[str, Any]:
    item: dict[str, Any] = {"name": name, "lastStatus": status}
    if exit_code is not None:
        item["exitCode"] = exit_code
    if reason:
        item["reason"] = reason
    return item


def task(status: str, *containers: dict[str, Any], stop_code: str | None = None, reason: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"taskArn": ARN, "lastStatus": status, "containers": list(containers)}
    if stop_code:
        item["stopCode"] = stop_code
    if reason:
        item["stoppedReason"] = reason
    return item


class FakeEcs:
    """describe_tasks answers from a script (the last entry repeats); run_task from another."""

    def __init__(self, states: list[Any], runs: list[Any] | None = None, on_run: Any = None) -> None:
        self.states = list(states)
        self.runs = list(runs or [])
        self.on_run = on_run
        self.run_calls: list[dict[str, Any]] = []
        self.describe_calls = 0
        self.stops: list[str] = []

    def run_task(self, **kwargs: Any) -> dict[str, Any]:
        self.run_calls.append(kwargs)
        result = self.runs.pop(0) if self.runs else {"tasks": [{"taskArn": ARN, "lastStatus": "PROVISIONING"}], "failures": []}
        if isinstance(result, Exception):
            raise result
        if result.get("tasks") and self.on_run:
            self.on_run(kwargs)
        return result

    def describe_tasks(self, cluster: str, tasks: list[str]) -> dict[str, Any]:
        assert cluster == "db-backup" and tasks == [ARN]
        self.describe_calls += 1
        item = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if isinstance(item, Exception):
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


class FakeLogs:
    """A log stream whose lines appear at given (fake) times; it may appear late or throttle."""

    def __init__(self, clock: FakeClock, lines: list[tuple[float, str]], appears_at: float = 0.0,
                 throttle_calls: frozenset[int] = frozenset()) -> None:
        self.clock = clock
        self.lines = lines
        self.appears_at = appears_at
        self.throttle_calls = throttle_calls
        self.calls = 0
        self.call_times: list[float] = []

    def get_log_events(self, logGroupName: str, logStreamName: str, startFromHead: bool, nextToken: str | None = None) -> dict[str, Any]:
        self.calls += 1
        self.call_times.append(self.clock.t)
        assert logGroupName == "/ecs/db-backup" and logStreamName == f"ecs/db-backup/{TASK_ID}" and startFromHead
        if self.calls in self.throttle_calls:
            raise client_error("ThrottlingException", "Rate exceeded", "GetLogEvents")
        if self.clock.t < self.appears_at:
            raise client_error("ResourceNotFoundException", "The specified log stream does not exist.", "GetLogEvents")
        start = int(nextToken.split("/")[1]) if nextToken else 0
        visible = [line for at, line in self.lines if at <= self.clock.t]
        page = visible[start : start + 2]  # small pages: the tail must follow nextForwardToken
        return {"events": [{"timestamp": 0, "message": m + "\n"} for m in page], "nextForwardToken": f"f/{start + len(page)}"}


class FakeAws:
    def __init__(self, ecs_client: FakeEcs, logs_client: FakeLogs | None = None) -> None:
        self._ecs = ecs_client
        self._logs = logs_client

    def ecs(self, region: str) -> FakeEcs:
        assert region == "eu-west-1"
        return self._ecs

    ecs_held = ecs

    def logs(self, region: str) -> FakeLogs:
        assert region == "eu-west-1" and self._logs is not None
        return self._logs

    def s3(self, region: str) -> Any:
        raise AssertionError("storage is a local folder in these tests")

    def ssm(self, region: str) -> Any:
        raise AssertionError("the runner must not resolve database secrets for an ECS run")


TARGETS = """
version: 1
defaults:
  storage: file://{storage}
  region: eu-west-1
  ecs:
    cluster: db-backup
    task_definition: db-backup:7
    container: db-backup
    subnets: [subnet-a, subnet-b]
    security_groups: [sg-1]
    assign_public_ip: true
environments: {{production: {{protected: true}}, beta: {{}}}}
targets:
  - identifier: curation
    env: production
    database: {{host: db.internal, name: curation, user: backup, password: "env:CURATION_PASSWORD"}}
  - {{identifier: curation, env: beta}}
"""

FAST = ecs.Policy(start_attempts=4, start_backoff=ecs.Backoff(5, 2, 60), poll_backoff=ecs.Backoff(2, 1.5, 30),
                  log_interval=3, describe_errors=5, stop_wait_s=20, drain_quiet_s=4, drain_limit_s=30)


def target(tmp_path: Path, env: str = "production") -> Target:
    return parse_registry(TARGETS.format(storage=tmp_path / "store")).get("curation", env)


def services(clock: FakeClock, aws: FakeAws) -> Services:
    return Services(settings=Settings(), clock=clock, aws=aws)  # type: ignore[arg-type]


def write_manifest(store: LocalStore, identifier: str, env: str, when: datetime, request_id: str | None, size: int = 1234) -> Manifest:
    backup_id = make_id(when)
    key = store.key(identifier, env, backup_id)
    (store.root / key).parent.mkdir(parents=True, exist_ok=True)
    (store.root / key).write_bytes(b"x" * size)
    manifest = Manifest(identifier=identifier, env=env, id=backup_id, key=key, created_at=when, duration_s=1.0,
                        size_bytes=size, sha256="ab" * 32, format="custom", compression="zstd:1", compressed_by="zstd",
                        pg_dump_version="17.2", server_version="16.4", database=identifier, tool_version="0.1.0",
                        request_id=request_id)
    store.put_manifest(manifest)
    return manifest


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def backup_job(t: Target) -> remote.RemoteJob:
    return remote.RemoteJob(action="backup", target=t, argv=("backup", "curation", "production"))


# --- starting -----------------------------------------------------------------------------------


def test_run_task_request_is_fargate_awsvpc_with_the_same_cli_and_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATION_PASSWORD", "hunter2-secret")
    t = target(tmp_path)
    gh = GithubEnv(actions=True, repository="org/db-backup", run_id="991", run_attempt="2", actor="alice", server_url="https://github.com")
    request = remote.task_request(backup_job(t), "req123", gh, {"DB_BACKUP_PART_SIZE_MB": "64", "CURATION_PASSWORD": "hunter2-secret"})
    assert t.ecs is not None
    params = ecs.run_task_params(t.ecs, request, token=1)
    assert params["cluster"] == "db-backup" and params["taskDefinition"] == "db-backup:7"
    assert params["launchType"] == "FARGATE" and params["count"] == 1
    assert params["networkConfiguration"] == {"awsvpcConfiguration": {
        "subnets": ["subnet-a", "subnet-b"], "securityGroups": ["sg-1"], "assignPublicIp": "ENABLED"}}
    override = params["overrides"]["containerOverrides"][0]
    assert override["name"] == "db-backup"
    assert override["command"] == ["backup", "curation", "production", "--executor", "local", "--request-id", "req123"]
    assert override["environment"] == [{"name": "DB_BACKUP_PART_SIZE_MB", "value": "64"}]
    assert params["startedBy"] == "db-backup/gh-991-2"
    tags = {tag["key"]: tag["value"] for tag in params["tags"]}
    assert tags["db-backup:target"] == "curation/production" and tags["github:run-id"] == "991"
    assert tags["github:run-url"] == "https://github.com/org/db-backup/actions/runs/991"
    assert tags["db-backup:request-id"] == "req123"
    assert "hunter2-secret" not in repr(params)
    assert ecs.run_task_params(t.ecs, request, token=2)["clientToken"] != params["clientToken"]


def test_run_task_failures_and_throttling_are_retried_with_growing_backoff(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([None], runs=[
        {"tasks": [], "failures": [{"arn": "x", "reason": "Capacity is unavailable at this time. Please try again later or in a different availability zone"}]},
        client_error("ThrottlingException", "Rate exceeded", "RunTask"),
        {"tasks": [], "failures": [{"arn": "x", "reason": "RESOURCE:ENI"}]},
    ])
    t = target(tmp_path)
    assert t.ecs is not None
    started: list[str] = []
    arn = ecs.start(fake, t.ecs, remote.task_request(backup_job(t), "r", GithubEnv(), {}), clock, FAST,  # type: ignore[arg-type]
                    on_started=started.append)
    assert arn == ARN and started == [ARN]
    assert len(fake.run_calls) == 4
    assert clock.sleeps == [5, 10, 20]


def test_run_task_retries_an_unclear_failure_with_the_same_token(tmp_path: Path) -> None:
    # A timeout or a server error may have started the task: only the same token can tell ECS so.
    fake = FakeEcs([None], runs=[
        ReadTimeoutError(endpoint_url="https://ecs.us-east-1.amazonaws.com"),
        client_error("ServerException", "Service unavailable", "RunTask"),
        {"tasks": [], "failures": [{"arn": "x", "reason": "RESOURCE:ENI"}]},
        client_error("ThrottlingException", "Rate exceeded", "RunTask"),
    ])
    t = target(tmp_path)
    assert t.ecs is not None
    policy = replace(FAST, start_attempts=5)
    arn = ecs.start(fake, t.ecs, remote.task_request(backup_job(t), "r", GithubEnv(), {}), FakeClock(), policy)  # type: ignore[arg-type]
    assert arn == ARN
    assert [call["clientToken"] for call in fake.run_calls] == ["r-1", "r-1", "r-1", "r-2", "r-2"]


def test_run_task_gives_up_after_bounded_attempts_with_the_reason(tmp_path: Path) -> None:
    clock = FakeClock()
    failure = {"tasks": [], "failures": [{"arn": "x", "reason": "RESOURCE:FARGATE", "detail": "no capacity in eu-west-1a"}]}
    fake = FakeEcs([None], runs=[failure] * 10)
    t = target(tmp_path)
    assert t.ecs is not None
    with pytest.raises(InfraError) as caught:
        ecs.start(fake, t.ecs, remote.task_request(backup_job(t), "r", GithubEnv(), {}), clock, FAST)  # type: ignore[arg-type]
    assert caught.value.exit_code == ExitCode.INFRA
    assert "after 4 attempts" in str(caught.value) and "RESOURCE:FARGATE (no capacity in eu-west-1a)" in str(caught.value)
    assert len(fake.run_calls) == 4 and sum(clock.sleeps) == 5 + 10 + 20


def test_run_task_access_denied_is_not_retried(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([None], runs=[client_error("AccessDeniedException", "not authorized to perform ecs:RunTask", "RunTask")])
    t = target(tmp_path)
    assert t.ecs is not None
    with pytest.raises(InfraError, match="AccessDeniedException: not authorized") as caught:
        ecs.start(fake, t.ecs, remote.task_request(backup_job(t), "r", GithubEnv(), {}), clock, FAST)  # type: ignore[arg-type]
    assert caught.value.exit_code == ExitCode.INFRA
    assert len(fake.run_calls) == 1 and clock.sleeps == []
    assert "capacity" not in str(caught.value)


def test_run_task_without_credentials_fails_at_once(tmp_path: Path) -> None:
    # botocore gives up before sending anything: no task can have started, and no wait brings credentials.
    clock = FakeClock()
    fake = FakeEcs([None], runs=[NoCredentialsError()] * 10)
    t = target(tmp_path)
    assert t.ecs is not None
    with pytest.raises(InfraError) as caught:
        ecs.start(fake, t.ecs, remote.task_request(backup_job(t), "r", GithubEnv(), {}), clock, FAST)  # type: ignore[arg-type]
    assert caught.value.exit_code == ExitCode.INFRA
    assert "no AWS credentials" in str(caught.value) and "cluster db-backup" in str(caught.value)
    assert "capacity" not in str(caught.value) and "attempts" not in str(caught.value)
    assert len(fake.run_calls) == 1 and clock.sleeps == [] and clock.t == 0


@pytest.mark.parametrize("error", [
    PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
    CredentialRetrievalError(provider="assume-role-with-web-identity", error_msg="token expired"),
    UnauthorizedSSOTokenError(),
], ids=lambda e: type(e).__name__)
def test_run_task_with_unusable_credentials_fails_at_once_with_botocores_reason(tmp_path: Path, error: Exception) -> None:
    clock = FakeClock()
    fake = FakeEcs([None], runs=[error] * 10)
    t = target(tmp_path)
    assert t.ecs is not None
    with pytest.raises(InfraError) as caught:
        ecs.start(fake, t.ecs, remote.task_request(backup_job(t), "r", GithubEnv(), {}), clock, FAST)  # type: ignore[arg-type]
    assert caught.value.exit_code == ExitCode.INFRA
    assert str(error) in str(caught.value) and "capacity" not in str(caught.value)
    assert len(fake.run_calls) == 1 and clock.sleeps == []


def test_remote_run_without_credentials_reports_the_failure_and_stops_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([None], runs=[NoCredentialsError()] * 10)
    output = tmp_path / "output"
    with pytest.raises(InfraError, match="no AWS credentials") as caught:
        remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake)), GithubEnv(output=output),
                   timeout_s=3600, policy=FAST, out=io.StringIO())
    assert caught.value.exit_code == ExitCode.INFRA
    assert len(fake.run_calls) == 1 and clock.t == 0 and fake.stops == [] and fake.describe_calls == 0
    assert "result=failure\n" in output.read_text()


# --- judging ------------------------------------------------------------------------------------


def verdict(t: dict[str, Any]) -> None:
    ecs.judge(ecs.outcome(t, "db-backup"), "db-backup")  # type: ignore[arg-type]


def test_exit_code_is_read_from_the_named_container_not_the_first() -> None:
    verdict(task("STOPPED", container("log-router", 1), container("db-backup", 0)))
    with pytest.raises(JobFailed, match="exited with code 1 \\(the job failed\\)") as caught:
        verdict(task("STOPPED", container("log-router", 0), container("db-backup", 1),
                     stop_code="EssentialContainerExited", reason="Essential container in task exited"))
    assert caught.value.exit_code == ExitCode.FAILED


def test_task_failed_to_start_is_an_infrastructure_error() -> None:
    with pytest.raises(InfraError, match="failed to start: CannotPullContainerError: pull access denied") as caught:
        verdict(task("STOPPED", container("db-backup", None), stop_code="TaskFailedToStart",
                     reason="CannotPullContainerError: pull access denied"))
    assert caught.value.exit_code == ExitCode.INFRA


def test_missing_exit_code_is_a_failure() -> None:
    with pytest.raises(JobFailed, match=r"without an exit code \(Host EC2 .* terminated"):
        verdict(task("STOPPED", container("db-backup", None), stop_code="SpotInterruption", reason="Host EC2 (instance i-1) terminated."))


def test_out_of_memory_is_a_failure_even_with_exit_code_zero() -> None:
    with pytest.raises(JobFailed, match="ran out of memory"):
        verdict(task("STOPPED", container("db-backup", 0, reason="OutOfMemoryError: Container killed due to memory usage")))


def test_a_missing_container_name_is_reported() -> None:
    with pytest.raises(JobFailed, match="no container named 'db-backup'"):
        verdict(task("STOPPED", container("app", 0)))


# --- following (remote.run with fakes) ----------------------------------------------------------


def test_full_lifecycle_tails_logs_and_reports_the_manifest_the_task_wrote(tmp_path: Path) -> None:
    clock = FakeClock()
    t = target(tmp_path)
    store = LocalStore(tmp_path / "store")
    write_manifest(store, "curation", "production", datetime(2024, 5, 1, 1, 0, tzinfo=UTC), request_id="someone-else")

    def task_writes_manifest(kwargs: dict[str, Any]) -> None:
        command = kwargs["overrides"]["containerOverrides"][0]["command"]
        write_manifest(store, "curation", "production", datetime(2024, 5, 1, 2, 0, tzinfo=UTC), option(command, "--request-id"), size=4242)

    fake = FakeEcs([task("PROVISIONING"), task("PENDING"), task("RUNNING", container("db-backup", status="RUNNING")),
                    task("RUNNING"), task("RUNNING"), task("RUNNING"),
                    task("STOPPED", container("db-backup", 0), stop_code="EssentialContainerExited")], on_run=task_writes_manifest)
    logs = FakeLogs(clock, [(5, "starting"), (6, "pg_dump 17.2"), (7, "a"), (15, "backup done"), (22, "late line")], appears_at=4)
    out = io.StringIO()
    report = remote.run(backup_job(t), services(clock, FakeAws(fake, logs)), GithubEnv(), timeout_s=6 * 3600, policy=FAST, out=out)
    assert report.result == "success" and report.task_arn == ARN
    assert report.backup_id == "2024-05-01_02-00-00" and report.size_bytes == 4242
    assert report.backup_uri == str(tmp_path / "store" / "curation/production/2024-05-01_02-00-00.dump")
    text = out.getvalue()
    for line in ("starting", "pg_dump 17.2", "a", "backup done", "late line"):
        assert f"[task] {line}\n" in text
    assert text.index("[task] starting") < text.index("[task] backup done")
    assert fake.stops == []
    # Backoff, not a tight loop: each sleep is at most the log interval and time only moved by sleeping.
    assert max(clock.sleeps) <= FAST.log_interval and fake.describe_calls == 7


def test_drain_reads_lines_that_arrive_after_stopped(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("db-backup", 1))])
    logs = FakeLogs(clock, [(0, "one"), (3, "two"), (4.5, "three: error")])
    out = io.StringIO()
    with pytest.raises(JobFailed):
        remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, logs)), GithubEnv(), timeout_s=3600, policy=FAST, out=out)
    assert "[task] three: error" in out.getvalue()


def test_non_zero_exit_fails_with_summary_and_last_lines(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("sidecar", 0), container("db-backup", 1), stop_code="EssentialContainerExited")])
    logs = FakeLogs(clock, [(0, f"line {i}") for i in range(80)] + [(1, "pg_dump: error: connection failed")])
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    gh = GithubEnv(actions=True, step_summary=summary, output=output)
    out = io.StringIO()
    with pytest.raises(JobFailed, match="exited with code 1") as caught:
        remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, logs)), gh, timeout_s=3600, policy=FAST, out=out)
    assert caught.value.exit_code == ExitCode.FAILED
    text = summary.read_text()
    assert "failure" in text and "<details><summary>Last 50 log lines</summary>" in text
    assert "pg_dump: error: connection failed" in text and "line 30\n" not in text and "line 31\n" in text
    assert "result=failure\n" in output.read_text() and f"task-arn={ARN}\n" in output.read_text()
    assert "::error title=db-backup backup curation/production::container db-backup" in out.getvalue()


def test_exit_zero_without_the_manifest_is_not_success(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([task("STOPPED", container("db-backup", 0))])
    logs = FakeLogs(clock, [])
    with pytest.raises(JobFailed, match="carries its request id"):
        remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, logs)), GithubEnv(), timeout_s=3600, policy=FAST, out=io.StringIO())


def test_task_failed_to_start_exits_3_with_reason(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([task("PROVISIONING"), task("STOPPED", container("db-backup"), stop_code="TaskFailedToStart",
                                                  reason="ResourceInitializationError: unable to pull secrets")])
    with pytest.raises(InfraError, match="ResourceInitializationError") as caught:
        remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, FakeLogs(clock, [], appears_at=1e9))),
                   GithubEnv(), timeout_s=3600, policy=FAST, out=io.StringIO())
    assert caught.value.exit_code == ExitCode.INFRA


def test_timeout_stops_the_task_and_exits_4(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([task("RUNNING")])
    logs = FakeLogs(clock, [(0, "still dumping")])
    out = io.StringIO()
    with pytest.raises(TimedOut, match=r"did not finish within 2h 00m 00s; ECS task .* was stopped") as caught:
        remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, logs)), GithubEnv(), timeout_s=7200, policy=FAST, out=out)
    assert caught.value.exit_code == ExitCode.TIMEOUT
    assert len(fake.stops) == 1 and "timed out" in fake.stops[0]
    assert 7200 <= clock.t <= 7200 + FAST.stop_wait_s + 5
    # Polls back off to the 30 s ceiling: about 2 h / 30 s describe calls, not thousands.
    assert fake.describe_calls < 260


def test_six_hour_default_is_bounded_by_the_clock_not_by_a_count(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([task("RUNNING")])
    with pytest.raises(TimedOut):
        remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, FakeLogs(clock, [])), ), GithubEnv(),
                   timeout_s=6 * 3600, policy=FAST, out=io.StringIO())
    assert clock.t >= 6 * 3600  # no give-up after ten minutes


def test_throttled_describe_and_logs_slow_down_but_never_fail(tmp_path: Path) -> None:
    clock = FakeClock()
    throttled = client_error("ThrottlingException", "Rate exceeded")
    states = [task("RUNNING")] + [throttled] * 12 + [task("RUNNING"), task("STOPPED", container("db-backup", 1))]
    fake = FakeEcs(states)
    logs = FakeLogs(clock, [(0, "a"), (1, "b")], throttle_calls=frozenset(range(1, 6)))
    out = io.StringIO()
    with pytest.raises(JobFailed, match="exited with code 1"):  # the verdict, not a throttling error
        remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, logs)), GithubEnv(), timeout_s=3600, policy=FAST, out=out)
    assert "[task] a" in out.getvalue() and "[task] b" in out.getvalue()
    gaps = [b - a for a, b in zip(logs.call_times, logs.call_times[1:], strict=False)][:5]
    assert gaps[1] > gaps[0] and gaps[2] > gaps[1]  # each throttle doubles the wait


def test_describe_errors_give_up_after_a_bound_and_stop_the_task(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([task("RUNNING")] + [client_error("InternalError", "boom")] * 50)
    with pytest.raises(InfraError, match="failed 5 times in a row") as caught:
        remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, FakeLogs(clock, []))), GithubEnv(),
                   timeout_s=3600, policy=FAST, out=io.StringIO())
    assert len(fake.stops) == 1 and "was stopped" in str(caught.value)


@pytest.mark.parametrize("error", [
    NoCredentialsError(),
    client_error("InvalidClientTokenId", "The security token included in the request is invalid."),
    client_error("ExpiredToken", "The security token included in the request is expired"),
], ids=lambda e: type(e).__name__ if not isinstance(e, ClientError) else e.response["Error"]["Code"])
def test_credentials_lost_while_following_fail_at_once(tmp_path: Path, error: Exception) -> None:
    # Without credentials the stop request fails too: the task is left to the user, and the error says so.
    clock = FakeClock()
    fake = FakeEcs([task("RUNNING"), error])
    stop_calls: list[dict[str, str]] = []

    def stop_task(**kwargs: str) -> dict[str, Any]:
        stop_calls.append(kwargs)
        raise error

    fake.stop_task = stop_task  # type: ignore[method-assign]
    with pytest.raises(InfraError, match=f"watching ECS task {TASK_ID} failed") as caught:
        remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, FakeLogs(clock, []))), GithubEnv(),
                   timeout_s=3600, policy=FAST, out=io.StringIO())
    assert caught.value.exit_code == ExitCode.INFRA
    assert fake.describe_calls == 2 and len(stop_calls) == 1
    assert str(caught.value).endswith(f"stopping ECS task {TASK_ID} failed, stop it in the console")
    if isinstance(error, NoCredentialsError):
        assert "no AWS credentials" in str(caught.value)
    assert clock.t < 10  # one poll interval, not the describe_errors backoff


def test_cancel_stops_the_task_reports_and_exits_130(tmp_path: Path) -> None:
    clock = FakeClock(cancel_at=50)
    fake = FakeEcs([task("PENDING"), task("RUNNING")])
    logs = FakeLogs(clock, [(10, "dumping")])
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    gh = GithubEnv(actions=True, step_summary=summary, output=output, run_id="77")
    with pytest.raises(Cancelled, match=r"cancelled by SIGTERM; ECS task .* was stopped") as caught:
        remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, logs)), gh, timeout_s=3600, policy=FAST, out=io.StringIO())
    assert caught.value.exit_code == ExitCode.CANCELLED
    assert fake.stops == ["db-backup runner: cancelled by SIGTERM (GitHub run 77)"]
    assert "result=cancelled\n" in output.read_text() and "cancelled" in summary.read_text()
    assert clock.t <= 50 + FAST.stop_wait_s + 5


def test_a_second_signal_while_stopping_still_reports_the_cancel(tmp_path: Path) -> None:
    # GitHub sends SIGTERM 7.5 s after SIGINT: it may land while the stop request is held.
    clock = FakeClock(cancel_at=50)
    fake = FakeEcs([task("RUNNING")])
    send_stop = fake.stop_task

    def stop_task(**kwargs: str) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGTERM)  # held until the stop request is out
        return send_stop(**kwargs)

    fake.stop_task = stop_task  # type: ignore[method-assign]
    output = tmp_path / "output"
    previous = signal.signal(signal.SIGTERM, cli._on_signal)
    try:
        with pytest.raises(Cancelled, match=r"cancelled by SIGTERM; ECS task \S+ is stopping$"):
            remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, FakeLogs(clock, []))),
                       GithubEnv(output=output), timeout_s=3600, policy=FAST, out=io.StringIO())
    except KeyboardInterrupt as exc:  # as such it would end the whole test session
        pytest.fail(f"the second signal escaped the runner: {exc!r}")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(fake.stops) == 1
    assert "result=cancelled\n" in output.read_text()


def test_keyboard_interrupt_is_a_cancel_too(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([task("RUNNING")])

    class Interrupting(FakeLogs):
        def get_log_events(self, **kwargs: Any) -> dict[str, Any]:
            if self.clock.t > 20:
                raise KeyboardInterrupt
            return super().get_log_events(**kwargs)

    with pytest.raises(Cancelled, match="cancelled by SIGINT"):
        remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, Interrupting(clock, []))), GithubEnv(),
                   timeout_s=3600, policy=FAST, out=io.StringIO())
    assert len(fake.stops) == 1


def test_detach_returns_at_once_with_the_arn(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([task("RUNNING")])
    output = tmp_path / "output"
    out = io.StringIO()
    report = remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, FakeLogs(clock, []))),
                        GithubEnv(output=output), timeout_s=3600, detach=True, policy=FAST, out=out)
    assert report.result == "started" and report.task_arn == ARN
    assert fake.describe_calls == 0 and clock.t == 0
    assert f"started ECS task {ARN}" in out.getvalue() and "result=started\n" in output.read_text()


def test_restore_resolves_latest_before_starting_and_passes_the_id(tmp_path: Path) -> None:
    clock = FakeClock()
    store = LocalStore(tmp_path / "store")
    write_manifest(store, "curation", "production", datetime(2024, 4, 30, 1, 0, tzinfo=UTC), None)
    newest = write_manifest(store, "curation", "production", datetime(2024, 5, 1, 1, 0, tzinfo=UTC), None, size=999)
    registry = parse_registry(TARGETS.format(storage=tmp_path / "store"))
    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("db-backup", 0))])
    job = remote.RemoteJob(action="restore", target=registry.get("curation", "beta"),
                           argv=("restore", "curation", "--from", "production", "--to", "beta", "--backup", "latest"),
                           source=registry.get("curation", "production"), backup="latest")
    report = remote.run(job, services(clock, FakeAws(fake, FakeLogs(clock, []))), GithubEnv(), timeout_s=3600, policy=FAST, out=io.StringIO())
    command = fake.run_calls[0]["overrides"]["containerOverrides"][0]["command"]
    assert command == ["restore", "curation", "--from", "production", "--to", "beta", "--backup", newest.id, "--executor", "local"]
    assert report.result == "success" and report.source == f"curation/production {newest.id}" and report.size_bytes == 999


def test_log_tail_disables_itself_on_access_denied(tmp_path: Path) -> None:
    clock = FakeClock()

    class Denied:
        def get_log_events(self, **kwargs: Any) -> dict[str, Any]:
            raise client_error("AccessDeniedException", "no logs:GetLogEvents", "GetLogEvents")

    lines: list[str] = []
    tail = LogTail(lambda: Denied(), "/g", "s", clock, lines.append)  # type: ignore[arg-type,return-value]
    assert tail.poll() == 0 and tail.disabled and "AccessDeniedException" in tail.disabled
    tail.drain(4, 30)
    assert clock.t == 0  # a broken tail does not hold the job up


def test_log_tail_disables_itself_without_credentials() -> None:
    clock = FakeClock()
    calls: list[dict[str, Any]] = []

    class NoCredentials:
        def get_log_events(self, **kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            raise NoCredentialsError()

    tail = LogTail(lambda: NoCredentials(), "/g", "s", clock, [].append)  # type: ignore[arg-type,return-value]
    assert tail.poll() == 0 and tail.disabled and "no AWS credentials" in tail.disabled
    assert tail.poll() == 0
    tail.drain(4, 30)
    assert len(calls) == 1 and clock.t == 0
