"""The ECS executor against a fake ECS client and a fake clock: every path moto cannot produce."""

from __future__ import annotations

import io
import os
import signal
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import (
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    UnauthorizedSSOTokenError,
)

from runner.ecs import remote
from runner.ecs.logs import LogTail
from runner.ecs.request import RemoteJob, task_request
from runner.ecs.task import judge, outcome, start
from runner.ecs.taskdef import TaskDefinition
from runner.ecs.taskdef import read as read_task_definition
from runner.errors import BadInput, Cancelled, ExitCode, InfraError, JobFailed, TargetsInvalid, TimedOut
from runner.settings import GithubEnv
from runner.signals import on_signal
from runner.stores.local import LocalStore
from runner.targets import Target, parse_registry
from tests.helpers.backups import write_manifest
from tests.helpers.clock import FakeClock
from tests.helpers.ecs import (
    ARN,
    FAST,
    TASK_ID,
    TASKDEF,
    UNIT_REGION,
    FakeAws,
    FakeEcs,
    FakeLogs,
    client_error,
    command_of,
    container,
    container_definition,
    run_task_for,
    services,
    task,
    task_definition,
)

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient

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

def target(tmp_path: Path, env: str = "production") -> Target:
    return parse_registry(TARGETS.format(storage=tmp_path / "store")).get("curation", env)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def backup_job(t: Target) -> RemoteJob:
    return RemoteJob(action="backup", target=t)


def start_client(fake: FakeEcs) -> ECSClient:
    """The client run_task goes through (signals held), answered by `fake`."""
    return FakeAws(fake).ecs_held(UNIT_REGION)


# --- starting -----------------------------------------------------------------------------------


def test_run_task_request_is_fargate_awsvpc_with_the_same_cli_and_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATION_PASSWORD", "hunter2-secret")
    t = target(tmp_path)
    gh = GithubEnv(actions=True, repository="org/db-backup", run_id="991", run_attempt="2", actor="alice", server_url="https://github.com")
    environ = {"DB_BACKUP_PART_SIZE_MB": "64", "CURATION_PASSWORD": "hunter2-secret"}
    params = run_task_for(backup_job(t), environ, gh, request_id="req123")
    assert params["cluster"] == "db-backup" and params["taskDefinition"] == "db-backup:7"
    assert params["launchType"] == "FARGATE" and params["count"] == 1
    assert params["networkConfiguration"] == {"awsvpcConfiguration": {
        "subnets": ["subnet-a", "subnet-b"], "securityGroups": ["sg-1"], "assignPublicIp": "ENABLED"}}
    override = params["overrides"]["containerOverrides"][0]
    assert override["name"] == "db-backup"
    assert command_of(params) == ["backup", "curation", "production", "--executor", "local", "--request-id", "req123"]
    assert override["environment"] == [{"name": "DB_BACKUP_PART_SIZE_MB", "value": "64"}]
    assert params["startedBy"] == "db-backup/gh-991-2"
    tags = {tag["key"]: tag["value"] for tag in params["tags"]}
    assert tags["db-backup:target"] == "curation/production" and tags["github:run-id"] == "991"
    assert tags["github:run-url"] == "https://github.com/org/db-backup/actions/runs/991"
    assert tags["db-backup:request-id"] == "req123"
    assert "hunter2-secret" not in repr(params)
    assert run_task_for(backup_job(t), environ, gh, request_id="req123", token=2)["clientToken"] != params["clientToken"]


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
    arn = start(start_client(fake), t.ecs, task_request(backup_job(t), TASKDEF, "r", GithubEnv(), {}), clock, FAST,
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
    arn = start(start_client(fake), t.ecs, task_request(backup_job(t), TASKDEF, "r", GithubEnv(), {}), FakeClock(), policy)
    assert arn == ARN
    assert [call["clientToken"] for call in fake.run_calls] == ["r-1", "r-1", "r-1", "r-2", "r-2"]


def test_run_task_gives_up_after_bounded_attempts_with_the_reason(tmp_path: Path) -> None:
    clock = FakeClock()
    failure = {"tasks": [], "failures": [{"arn": "x", "reason": "RESOURCE:FARGATE", "detail": "no capacity in eu-west-1a"}]}
    fake = FakeEcs([None], runs=[failure] * 10)
    t = target(tmp_path)
    assert t.ecs is not None
    with pytest.raises(InfraError) as caught:
        start(start_client(fake), t.ecs, task_request(backup_job(t), TASKDEF, "r", GithubEnv(), {}), clock, FAST)
    assert caught.value.exit_code == ExitCode.INFRA
    assert "after 4 attempts" in str(caught.value) and "RESOURCE:FARGATE (no capacity in eu-west-1a)" in str(caught.value)
    assert len(fake.run_calls) == 4 and sum(clock.sleeps) == 5 + 10 + 20


def test_run_task_access_denied_is_not_retried(tmp_path: Path) -> None:
    clock = FakeClock()
    fake = FakeEcs([None], runs=[client_error("AccessDeniedException", "not authorized to perform ecs:RunTask", "RunTask")])
    t = target(tmp_path)
    assert t.ecs is not None
    with pytest.raises(InfraError, match="AccessDeniedException: not authorized") as caught:
        start(start_client(fake), t.ecs, task_request(backup_job(t), TASKDEF, "r", GithubEnv(), {}), clock, FAST)
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
        start(start_client(fake), t.ecs, task_request(backup_job(t), TASKDEF, "r", GithubEnv(), {}), clock, FAST)
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
        start(start_client(fake), t.ecs, task_request(backup_job(t), TASKDEF, "r", GithubEnv(), {}), clock, FAST)
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
    judge(outcome(t, "db-backup"), "db-backup")  # type: ignore[arg-type]


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


def test_a_shrunk_backup_written_by_the_task_is_a_warning_on_github_too(tmp_path: Path) -> None:
    # The task's own log has the alarm, but nobody reads it: the run on GitHub must raise it as well.
    clock = FakeClock()
    store = LocalStore(tmp_path / "store")
    for day in (27, 28, 29, 30):
        write_manifest(store, "curation", "production", datetime(2024, 4, day, 2, 0, tzinfo=UTC), None, size=100_000)

    def task_writes_manifest(kwargs: dict[str, Any]) -> None:
        command = kwargs["overrides"]["containerOverrides"][0]["command"]
        write_manifest(store, "curation", "production", datetime(2024, 5, 1, 2, 0, tzinfo=UTC), option(command, "--request-id"), size=900)

    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("db-backup", 0))], on_run=task_writes_manifest)
    summary, out = tmp_path / "summary.md", io.StringIO()
    report = remote.run(backup_job(target(tmp_path)), services(clock, FakeAws(fake, FakeLogs(clock, []))),
                        GithubEnv(actions=True, step_summary=summary), timeout_s=3600, policy=FAST, out=out)
    assert report.result == "success"  # a shrunk backup is still a good backup
    warnings = [line for line in out.getvalue().splitlines() if line.startswith("::warning")]
    assert len(warnings) == 1 and "title=db-backup shrink alarm curation/production" in warnings[0], out.getvalue()
    assert "db-backup ack curation production 2024-05-01_02-00-00" in warnings[0]
    assert "Shrink alarm" in summary.read_text()


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
    previous = signal.signal(signal.SIGTERM, on_signal)
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
    job = RemoteJob(action="restore", target=registry.get("curation", "beta"), source=registry.get("curation", "production"),
                    backup="latest")
    report = remote.run(job, services(clock, FakeAws(fake, FakeLogs(clock, []))), GithubEnv(), timeout_s=3600, policy=FAST, out=io.StringIO())
    command = fake.run_calls[0]["overrides"]["containerOverrides"][0]["command"]
    assert command == ["restore", "curation", "--from", "production", "--to", "beta", "--backup", newest.id, "--executor", "local"]
    assert report.result == "success" and report.source == f"curation/production {newest.id}" and report.size_bytes == 999


def test_log_tail_disables_itself_on_access_denied(tmp_path: Path) -> None:
    clock = FakeClock()

    class Denied(FakeLogs):
        def get_log_events(self, **kwargs: Any) -> dict[str, Any]:
            raise client_error("AccessDeniedException", "no logs:GetLogEvents", "GetLogEvents")

    lines: list[str] = []
    aws = FakeAws(FakeEcs([None]), Denied(clock, []))
    tail = LogTail(lambda: aws.logs(UNIT_REGION), "/g", "s", clock, lines.append)
    assert tail.poll() == 0 and tail.disabled and "AccessDeniedException" in tail.disabled
    tail.drain(4, 30)
    assert clock.t == 0  # a broken tail does not hold the job up


def test_log_tail_disables_itself_without_credentials() -> None:
    clock = FakeClock()
    calls: list[dict[str, Any]] = []

    class NoCredentials(FakeLogs):
        def get_log_events(self, **kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            raise NoCredentialsError()

    aws = FakeAws(FakeEcs([None]), NoCredentials(clock, []))
    tail = LogTail(lambda: aws.logs(UNIT_REGION), "/g", "s", clock, lambda _line: None)
    assert tail.poll() == 0 and tail.disabled and "no AWS credentials" in tail.disabled
    assert tail.poll() == 0
    tail.drain(4, 30)
    assert len(calls) == 1 and clock.t == 0


# --- the task definition ------------------------------------------------------------------------


def unnamed_target(tmp_path: Path) -> Target:
    """The target with targets.yaml naming no container: it comes from the task definition."""
    text = TARGETS.replace("    container: db-backup\n", "")
    return parse_registry(text.format(storage=tmp_path / "store")).get("curation", "production")


def test_the_container_and_its_log_stream_come_from_the_task_definition(tmp_path: Path) -> None:
    clock = FakeClock()
    elsewhere = {"logDriver": "awslogs", "options": {
        "awslogs-group": "/acme/jobs", "awslogs-region": "us-west-2", "awslogs-stream-prefix": "run"}}
    taskdef = task_definition(container_definition("sidecar", essential=False, logs=None),
                              container_definition("app", essential=None, logs=elsewhere), family="jobs", revision=12)
    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("sidecar", 0), container("app", 3))], taskdef=taskdef)
    logs = FakeLogs(clock, [(0, "dumping"), (1, "error: no such database")], group="/acme/jobs", stream=f"run/app/{TASK_ID}")
    summary, out = tmp_path / "summary.md", io.StringIO()
    with pytest.raises(JobFailed, match=rf"^container app of ECS task {TASK_ID} exited with code 3") as caught:
        remote.run(backup_job(unnamed_target(tmp_path)), services(clock, FakeAws(fake, logs, logs_region="us-west-2")),
                   GithubEnv(step_summary=summary), timeout_s=3600, policy=FAST, out=out)
    assert fake.taskdef_calls == ["db-backup:7"]  # once per run
    [call] = fake.run_calls
    assert call["taskDefinition"] == "jobs:12"  # the revision that was read, not whatever is newest later
    assert call["overrides"]["containerOverrides"][0]["name"] == "app"
    assert "[task] dumping\n" in out.getvalue() and str(caught.value).endswith("the task said: no such database")
    url = ("https://us-west-2.console.aws.amazon.com/cloudwatch/home?region=us-west-2#logsV2:log-groups/log-group/"
           f"$252Facme$252Fjobs/log-events/run$252Fapp$252F{TASK_ID}")
    assert f"[CloudWatch log stream]({url})" in summary.read_text()


def test_a_task_definition_logging_elsewhere_runs_without_tailing(tmp_path: Path) -> None:
    clock = FakeClock()
    splunk = {"logDriver": "splunk", "options": {"splunk-url": "https://splunk.example.com"}}
    fake = FakeEcs([task("RUNNING"), task("STOPPED", container("db-backup", 1))],
                   taskdef=task_definition(container_definition("db-backup", logs=splunk)))
    summary, output, out = tmp_path / "summary.md", tmp_path / "output", io.StringIO()
    with pytest.raises(JobFailed, match="exited with code 1"):
        # No FakeLogs: a CloudWatch Logs client would fail the test.
        remote.run(backup_job(unnamed_target(tmp_path)), services(clock, FakeAws(fake)),
                   GithubEnv(step_summary=summary, output=output), timeout_s=3600, policy=FAST, out=out)
    note = "not in CloudWatch Logs: container 'db-backup' of task definition db-backup:7 logs with the splunk driver"
    assert f"  logs: {note}\n" in out.getvalue()
    assert f"| Logs | {note} |" in summary.read_text() and "CloudWatch log stream" not in summary.read_text()
    assert "logs-url=\n" in output.read_text()


@pytest.mark.parametrize(("yaml_line", "definitions", "expected"), [
    ("    container: app\n", [container_definition("db-backup")],
     "ecs.container 'app' in targets.yaml is not the task definition's essential container 'db-backup' (db-backup:7); "
     "remove ecs.container or set it to 'db-backup'"),
    ("    container: app\n", [container_definition("db-backup"), container_definition("proxy")],
     "ecs.container 'app' in targets.yaml is not one of the task definition's essential containers 'db-backup', 'proxy' "
     "(db-backup:7); set it to the one that runs db-backup"),
    ("", [container_definition("db-backup"), container_definition("proxy", essential=None)],
     "task definition db-backup:7 has 2 essential containers ('db-backup', 'proxy'); set ecs.container in targets.yaml "
     "to the one that runs db-backup"),
    ("", [container_definition("db-backup", essential=False)],
     "task definition db-backup:7 has no essential container; mark the container that runs db-backup essential"),
    ("    log_group: /ecs/other\n", [container_definition("db-backup")],
     "ecs.log_group '/ecs/other' in targets.yaml is not the task definition's awslogs-group '/ecs/db-backup' "
     "(db-backup:7, container 'db-backup'); remove ecs.log_group or set it to '/ecs/db-backup'"),
    ("    log_stream_prefix: jobs\n", [container_definition("db-backup", logs=None)],
     "ecs.log_stream_prefix 'jobs' is set in targets.yaml, but container 'db-backup' of task definition db-backup:7 "
     "has no log configuration; remove ecs.log_stream_prefix"),
], ids=["other-container", "not-among-several", "several", "none", "log-group", "prefix-without-awslogs"])
def test_targets_yaml_against_the_task_definition_is_bad_input_before_any_task(
    tmp_path: Path, yaml_line: str, definitions: list[dict[str, Any]], expected: str,
) -> None:
    text = TARGETS.replace("    container: db-backup\n", yaml_line)
    t = parse_registry(text.format(storage=tmp_path / "store")).get("curation", "production")
    fake = FakeEcs([task("RUNNING")], taskdef=task_definition(*definitions))
    output = tmp_path / "output"
    with pytest.raises(BadInput) as caught:
        remote.run(backup_job(t), services(FakeClock(), FakeAws(fake)), GithubEnv(output=output), timeout_s=3600,
                   policy=FAST, out=io.StringIO())
    assert str(caught.value) == expected and caught.value.exit_code == ExitCode.BAD_INPUT
    assert fake.run_calls == [] and fake.describe_calls == 0
    assert "result=failure\n" in output.read_text()


def test_of_several_essential_containers_ecs_container_picks_one(tmp_path: Path) -> None:
    t = target(tmp_path)  # names container db-backup
    fake = FakeEcs([None], taskdef=task_definition(container_definition("proxy"), container_definition("db-backup", logs=None)))
    assert t.ecs is not None
    facts = read_task_definition(FakeAws(fake).ecs(UNIT_REGION), t.ecs, UNIT_REGION)
    assert facts == TaskDefinition(name="db-backup:7", container="db-backup", logs=None,
                                   logs_missing="container 'db-backup' of task definition db-backup:7 has no log configuration")


def test_reading_the_task_definition_denied_is_an_infrastructure_error(tmp_path: Path) -> None:
    fake = FakeEcs([None])

    def describe_task_definition(taskDefinition: str, **_kwargs: Any) -> dict[str, Any]:
        raise client_error("AccessDeniedException", "not authorized to perform ecs:DescribeTaskDefinition", "DescribeTaskDefinition")

    fake.describe_task_definition = describe_task_definition  # type: ignore[method-assign]
    with pytest.raises(InfraError, match="reading task definition db-backup:7 failed: AccessDeniedException") as caught:
        remote.run(backup_job(target(tmp_path)), services(FakeClock(), FakeAws(fake)), GithubEnv(), timeout_s=3600,
                   policy=FAST, out=io.StringIO())
    assert caught.value.exit_code == ExitCode.INFRA and fake.run_calls == []


def test_targets_yaml_may_leave_the_task_definitions_settings_out_but_not_empty(tmp_path: Path) -> None:
    config = unnamed_target(tmp_path).ecs
    assert config is not None and (config.container, config.log_group, config.log_stream_prefix) == (None, None, None)
    text = TARGETS.replace("    container: db-backup\n", '    container: ""\n    log_stream_prefix: ""\n')
    with pytest.raises(TargetsInvalid) as caught:
        parse_registry(text.format(storage=tmp_path / "store"))
    assert [p.split(":")[0] for p in caught.value.problems] == ["defaults.ecs.container", "defaults.ecs.log_stream_prefix"]
