"""Start, follow and stop one Fargate task; judge it by its essential container's exit code."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
)

from ..aws import CREDENTIAL_ERRORS, error_code, infra_error
from ..clock import Clock
from ..errors import DbBackupError, InfraError, JobFailed, TimedOut
from ..targets import EcsConfig
from ..words import plural
from .request import TaskRequest, run_task_params

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_ecs.type_defs import RunTaskResponseTypeDef, TaskTypeDef

log = logging.getLogger(__name__)

# Worth another try: the request may succeed a little later (AWS's own words for these).
RETRYABLE_CODES = frozenset({
    "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
    "ServerException", "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure",
})
# Fatal at once: waiting does not change permissions, credentials or configuration.
FATAL_CODES = frozenset({
    "AccessDeniedException", "AccessDenied", "UnauthorizedOperation", "ClusterNotFoundException",
    "InvalidParameterException", "UnrecognizedClientException", "ExpiredTokenException", "ExpiredToken",
    "InvalidClientTokenId", "InvalidSignatureException", "SignatureDoesNotMatch", "IncompleteSignature",
    "MissingAuthenticationToken", "MissingAuthenticationTokenException",
})
# What ECS says when there is no room for the task right now.
_CAPACITY = re.compile(r"capacity|RESOURCE:|insufficient|not enough", re.IGNORECASE)
# What ECS says when the kernel killed a container for its memory limit.
_OOM = re.compile(r"OutOfMemory|out of memory|OOM", re.IGNORECASE)

EXIT_MEANINGS = {1: "the job failed", 2: "bad input", 3: "infrastructure error", 4: "timed out",
                 130: "cancelled", 137: "killed (SIGKILL)", 143: "terminated (SIGTERM)"}


@dataclass(frozen=True)
class Backoff:
    """Delays that grow by `factor` from `initial` up to `maximum`."""

    initial: float
    factor: float
    maximum: float

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay
            delay = min(delay * self.factor, self.maximum)


@dataclass(frozen=True)
class Policy:
    """How patiently the runner starts and watches a task; tests pass faster ones."""

    start_attempts: int = 6
    start_backoff: Backoff = field(default_factory=lambda: Backoff(5.0, 2.0, 60.0))
    poll_backoff: Backoff = field(default_factory=lambda: Backoff(2.0, 1.5, 30.0))
    log_interval: float = 3.0
    describe_errors: int = 8
    stop_wait_s: float = 30.0
    drain_quiet_s: float = 6.0
    drain_limit_s: float = 30.0


@dataclass(frozen=True)
class Outcome:
    """How a stopped task ended, reduced to what the verdict needs."""

    arn: str
    stop_code: str
    stopped_reason: str
    container_found: bool
    exit_code: int | None
    container_reason: str


def task_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def start(
    client: ECSClient, config: EcsConfig, request: TaskRequest, clock: Clock, policy: Policy,
    shield: Callable[[], AbstractContextManager[None]] = nullcontext,
    on_started: Callable[[str], None] = lambda _arn: None,
) -> str:
    """run_task, retrying capacity failures and throttling a bounded number of times; the task ARN.

    Each attempt runs inside `shield()` and calls `on_started` there, so a signal cannot lose the ARN.
    """
    delays = policy.start_backoff.delays()
    reason = "no attempt made"
    token = 1
    for attempt in range(1, policy.start_attempts + 1):
        try:
            with shield():
                response = client.run_task(**run_task_params(config, request, token))
                arn = _started_arn(response)
                if arn:
                    on_started(arn)
        except ClientError as exc:
            code = error_code(exc)
            message = str(exc.response.get("Error", {}).get("Message", ""))
            if code in FATAL_CODES or not (code in RETRYABLE_CODES or _CAPACITY.search(message)):
                raise infra_error(f"starting the ECS task in cluster {config.cluster}", exc) from exc
            reason = f"{code}: {message}".rstrip(": ")
            if _CAPACITY.search(message):
                token += 1  # refused outright; a server error may have started it, so its token stays
        except CREDENTIAL_ERRORS as exc:
            raise infra_error(f"starting the ECS task in cluster {config.cluster}", exc) from exc
        except BotoCoreError as exc:
            reason = str(exc)  # unknown whether the task started: the same token finds out
        else:
            if arn:
                return arn
            token += 1  # ECS answered with failures: nothing started, and the old token would repeat them
            failures = response.get("failures", [])
            reason = "; ".join(
                f"{f.get('reason', 'unknown')}" + (f" ({f['detail']})" if f.get("detail") else "") for f in failures
            ) or "run_task returned no task and no failure"
        if attempt < policy.start_attempts:
            delay = next(delays)
            log.warning("could not start the task (attempt %d of %d): %s; retrying in %.0fs",
                        attempt, policy.start_attempts, reason, delay)
            clock.sleep(delay)
    raise InfraError(
        f"the ECS task could not start in cluster {config.cluster} after {plural(policy.start_attempts, 'attempt')}: "
        f"{reason}; check Fargate capacity, the subnets and the task definition {request.task_definition}"
    )


def _started_arn(response: RunTaskResponseTypeDef) -> str | None:
    tasks = response.get("tasks", [])
    return tasks[0].get("taskArn") if tasks else None


def describe(client: ECSClient, cluster: str, arn: str) -> TaskTypeDef | None:
    """The task's description, or None when ECS says it is missing."""
    response = client.describe_tasks(cluster=cluster, tasks=[arn])
    for task in response.get("tasks", []):
        if task.get("taskArn") == arn or task_id(task.get("taskArn", "")) == task_id(arn):
            return task
    return None


def _poll(client: ECSClient, cluster: str, arn: str) -> tuple[TaskTypeDef | None, str, int]:
    """(task, problem, how much the problem counts towards giving up); throttling counts 0."""
    try:
        task = describe(client, cluster, arn)
    except ClientError as exc:
        code = error_code(exc)
        if code in FATAL_CODES:
            raise infra_error(f"watching ECS task {task_id(arn)}", exc) from exc
        message = str(exc.response.get("Error", {}).get("Message", ""))
        return None, f"{code}: {message}".rstrip(": "), 0 if code in RETRYABLE_CODES else 1
    except CREDENTIAL_ERRORS as exc:
        raise infra_error(f"watching ECS task {task_id(arn)}", exc) from exc
    except BotoCoreError as exc:
        return None, str(exc), 1
    if task is None:
        # Just after run_task, describe_tasks may not see the task yet; later it means gone.
        return None, "describe_tasks reports it MISSING", 1
    return task, "", 0


def follow(
    client: ECSClient, cluster: str, arn: str, clock: Clock, policy: Policy, deadline: float,
    tick: Callable[[], object] = lambda: None,
) -> TaskTypeDef:
    """Poll with backoff until STOPPED, calling `tick` (the log tail) in between; TimedOut at deadline."""
    delays = policy.poll_backoff.delays()
    next_poll = clock.monotonic()
    last_status = ""
    errors = 0
    while True:
        if clock.monotonic() >= next_poll:
            task, problem, weight = _poll(client, cluster, arn)
            if task is None:
                errors += weight
                if errors >= policy.describe_errors:
                    raise InfraError(f"watching ECS task {arn} failed {plural(errors, 'time')} in a row: {problem}; "
                                     "check the runner's ecs:DescribeTasks permission")
                log.warning("could not read the state of task %s (%s); looking again later", task_id(arn), problem)
            else:
                errors = 0
                status = task.get("lastStatus", "")
                if status != last_status:
                    log.info("task %s: %s", task_id(arn), status or "(no status)")
                    last_status = status
                    delays = policy.poll_backoff.delays()  # something moved: look again soon
                if status == "STOPPED":
                    return task
            next_poll = clock.monotonic() + next(delays)
        tick()
        now = clock.monotonic()
        if now >= deadline:
            raise TimedOut(f"ECS task {task_id(arn)} did not finish within the timeout")
        clock.sleep(max(0.0, min(policy.log_interval, next_poll - now, deadline - now)))


def outcome(task: TaskTypeDef, container: str) -> Outcome:
    found = next((c for c in task.get("containers", []) if c.get("name") == container), None)
    return Outcome(
        arn=task.get("taskArn", ""),
        stop_code=str(task.get("stopCode", "")),
        stopped_reason=task.get("stoppedReason", ""),
        container_found=found is not None,
        exit_code=found.get("exitCode") if found is not None else None,
        container_reason=(found.get("reason", "") if found is not None else ""),
    )


def judge(result: Outcome, container: str) -> None:
    """Raise unless the container named `container` (never 'the first one') exited 0."""
    tid = task_id(result.arn)
    why = "; ".join(r for r in (result.container_reason, result.stopped_reason) if r)
    if result.stop_code == "TaskFailedToStart":
        raise InfraError(f"ECS task {tid} failed to start: {why or 'no reason given'}; check the image, "
                         "the subnets' route to ECR and the task definition")
    if not result.container_found:
        # The task runs the revision the container was read from, so this is ECS leaving it out.
        raise JobFailed(f"ECS task {tid} has no container named {container!r}, the task definition's essential "
                        "container; see the task in the ECS console")
    if _OOM.search(why):
        raise JobFailed(f"container {container} of ECS task {tid} ran out of memory ({why}); "
                        "give the task definition more memory")
    if result.exit_code is None:
        raise JobFailed(f"container {container} of ECS task {tid} stopped without an exit code"
                        f" ({why or result.stop_code or 'no reason given'}); see its log")
    if result.exit_code != 0:
        meaning = EXIT_MEANINGS.get(result.exit_code)
        raise JobFailed(f"container {container} of ECS task {tid} exited with code {result.exit_code}"
                        f"{f' ({meaning})' if meaning else ''}{f': {why}' if why else ''}; see its log")


def stop(client: ECSClient, cluster: str, arn: str, reason: str) -> bool:
    """Ask ECS to stop the task; False (and a warning) when that failed."""
    try:
        client.stop_task(cluster=cluster, task=arn, reason=reason[:255])
    except CREDENTIAL_ERRORS as exc:
        log.warning("%s; stop it in the console", infra_error(f"stopping ECS task {arn}", exc))
        return False
    except (ClientError, BotoCoreError) as exc:
        log.warning("could not stop ECS task %s: %s; stop it in the console", arn, exc)
        return False
    log.warning("stopping ECS task %s: %s", task_id(arn), reason)
    return True


def wait_stopped(
    client: ECSClient, cluster: str, arn: str, clock: Clock, policy: Policy, tick: Callable[[], object] = lambda: None,
) -> TaskTypeDef | None:
    """After stop(): follow the task for at most policy.stop_wait_s; None if it is not STOPPED by then."""
    try:
        return follow(client, cluster, arn, clock, policy, clock.monotonic() + policy.stop_wait_s, tick)
    except DbBackupError:  # the wait ran out, or ECS could not be asked (follow has said why)
        return None
