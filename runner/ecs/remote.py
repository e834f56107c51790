"""The ECS executor's recipe: read the task definition, start the task, follow it and its log, judge
it, confirm the backup (or the drill's record), publish the report; whatever fails, no task is left running and a report is written."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TextIO

from .. import github
from ..backup import check_shrink
from ..catalog import BackupEntry, list_backups, resolve_backup
from ..errors import BadInput, Cancelled, DbBackupError, JobFailed, TimedOut, cancel_reason
from ..github import CANCELLED, FAILURE, STARTED, SUCCESS, TIMED_OUT, Report
from ..output import human_duration
from ..records import DrillRecord, read_record
from ..services import Services, new_request_id
from ..settings import GithubEnv
from ..signals import deferred_signals
from ..targets import EcsConfig
from ..words import plural
from . import taskdef
from .logs import LogTail, stream_name
from .request import RemoteJob, task_request
from .task import Policy, follow, judge, outcome, start, stop, task_id, wait_stopped

if TYPE_CHECKING:
    from mypy_boto3_ecs.type_defs import TaskTypeDef

log = logging.getLogger(__name__)

MANIFEST_SEARCH = 20  # newest backups searched for the task's request id


@dataclass(frozen=True)
class _Setup:
    """What one run works with; fixed from start to end."""

    job: RemoteJob
    config: EcsConfig
    services: Services
    gh: GithubEnv
    policy: Policy
    out: TextIO
    timeout_s: float


@dataclass
class _State:
    """What is known so far: the report, and the task to stop if the run ends early."""

    report: Report
    started: float
    arn: str | None = None
    tail: LogTail | None = None
    stopped: bool = False


def run(
    job: RemoteJob, services: Services, gh: GithubEnv, *, timeout_s: float, detach: bool = False,
    policy: Policy | None = None, environ: Mapping[str, str] | None = None, out: TextIO | None = None,
) -> Report:
    """Run `job` in a Fargate task and report it; raises the error whose exit code the CLI uses."""
    if job.target.ecs is None:
        raise BadInput(f"--executor ecs needs defaults.ecs in targets.yaml for {job.target.name}")
    setup = _Setup(job, job.target.ecs, services, gh, policy or Policy(), out or sys.stdout, timeout_s)
    state = _State(Report(target=job.target.name, action=job.action, result=STARTED, executor="ecs"),
                   started=services.clock.monotonic())
    try:
        return _execute(setup, state, detach, os.environ if environ is None else environ)
    except (Exception, KeyboardInterrupt) as exc:
        if state.report.result != STARTED:
            raise  # already reported
        raise _fail(setup, state, exc) from exc


def _execute(setup: _Setup, state: _State, detach: bool, environ: Mapping[str, str]) -> Report:
    job, config, clock, policy = setup.job, setup.config, setup.services.clock, setup.policy
    region = job.target.region
    facts = taskdef.read(setup.services.aws.ecs(region), config, region)
    if job.action in ("restore", "preview", "drill"):
        job = _pin_backup(setup, state)
    request_id = new_request_id()
    start(setup.services.aws.ecs_held(region), config, task_request(job, facts, request_id, setup.gh, environ), clock, policy,
          shield=deferred_signals, on_started=lambda arn: _started(setup, state, facts, arn))
    if detach:
        _publish(setup, state, state.report)
        return state.report
    assert state.arn is not None
    tail = state.tail
    stopped = follow(setup.services.aws.ecs(region), config.cluster, state.arn, clock, policy, state.started + setup.timeout_s,
                     tick=tail.poll if tail else _nothing)
    state.stopped = True
    if tail:
        tail.drain(policy.drain_quiet_s, policy.drain_limit_s)
    _judge(stopped, facts.container, state)
    report = replace(state.report, result=SUCCESS, duration_s=_elapsed(setup, state))
    if job.action == "backup":
        report = _confirm_backup(setup, report, request_id, state.arn)
        if report.backup_id is not None:  # the task logged the alarm; the run on GitHub raises it too
            github.publish_shrink(job.target.name, check_shrink(setup.services.store(job.target), job.target, report.backup_id),
                                  setup.gh, out=setup.out)
    elif job.action == "drill":
        report = _confirm_drill(setup, report, job.backup, state.arn)
    _publish(setup, state, report)
    return report


def _nothing() -> None:
    return None


def _pin_backup(setup: _Setup, state: _State) -> RemoteJob:
    """The restore with `latest` resolved here: the task restores exactly the backup the report names."""
    job = setup.job
    source = job.source or job.target
    store = setup.services.store(source)
    try:
        entry = resolve_backup(store, source.identifier, source.env, job.backup)
    except DbBackupError as exc:
        if exc.exit_code in (BadInput.exit_code, JobFailed.exit_code):
            raise  # no such backup, or a damaged one: refuse before starting anything
        log.warning("could not resolve backup %s of %s here (%s); the task resolves it", job.backup, source.name, exc)
        state.report = replace(state.report, source=f"{source.name} {job.backup}")
        return job
    state.report = replace(
        state.report, source=f"{source.name} {entry.id}", backup_id=entry.id, backup_uri=store.uri(entry.key),
        size_bytes=entry.size_bytes, sha256=entry.sha256,
    )
    return replace(job, backup=entry.id)


def _started(setup: _Setup, state: _State, facts: taskdef.TaskDefinition, arn: str) -> None:
    # Runs with signals held: from here on a cancel always knows which task to stop.
    state.arn = arn
    tid = task_id(arn)
    region = setup.job.target.region
    logs, logs_url, logs_note = facts.logs, None, None
    if logs is not None:
        stream = stream_name(logs.stream_prefix, facts.container, tid)
        state.tail = LogTail(lambda: setup.services.aws.logs(logs.region), logs.group, stream, setup.services.clock,
                             lambda line: _line(setup, line))
        logs_url = github.logs_url(logs.region, logs.group, stream)
    else:
        logs_note = f"not in CloudWatch Logs: {facts.logs_missing}"
    state.report = replace(state.report, task_arn=arn, task_url=github.task_url(region, setup.config.cluster, tid),
                           logs_url=logs_url, logs_note=logs_note)
    _write(setup, f"started ECS task {arn}\n  logs: {logs_url or logs_note}\n  task: {state.report.task_url}\n")


def _line(setup: _Setup, line: str) -> None:
    # The prefix keeps task output from ever being read as a GitHub workflow command.
    _write(setup, f"[task] {line}\n")


def _write(setup: _Setup, text: str) -> None:
    setup.out.write(text)
    setup.out.flush()


def _last_lines(state: _State) -> tuple[str, ...]:
    return tuple(state.tail.last_lines) if state.tail else ()


def _elapsed(setup: _Setup, state: _State) -> float:
    return round(setup.services.clock.monotonic() - state.started, 3)


def _judge(task: TaskTypeDef, container: str, state: _State) -> None:
    try:
        judge(outcome(task, container), container)
    except JobFailed as exc:
        said = next((line for line in reversed(_last_lines(state)) if line.startswith("error: ")), None)
        if said:
            # The CLI in the task ends a failure with one `error: ...` line: the actual reason.
            exc.args = (f"{exc}; the task said: {said.removeprefix('error: ')}",)
        raise


def _confirm_backup(setup: _Setup, report: Report, request_id: str, arn: str) -> Report:
    """The report with the backup the task wrote, found by its request id; JobFailed if there is none."""
    target = setup.job.target
    store = setup.services.store(target)
    for entry in list_backups(store, target.identifier, target.env, limit=MANIFEST_SEARCH):
        if entry.manifest is not None and entry.manifest.request_id == request_id:
            if entry.problem is not None:
                raise JobFailed(f"ECS task {task_id(arn)} wrote backup {entry.id} of {target.name}, "
                                f"but it is damaged ({entry.problem}); see the task's log")
            m = entry.manifest
            return replace(report, backup_id=m.id, backup_uri=store.uri(entry.key), size_bytes=m.size_bytes, sha256=m.sha256,
                           dump=github.DumpFacts.of(m))
    raise JobFailed(
        f"ECS task {task_id(arn)} exited 0 but no backup of {target.name} in {store.url} "
        f"carries its request id {request_id}; the backup cannot be confirmed, see the task's log"
    )


def _confirm_drill(setup: _Setup, report: Report, backup: str, arn: str) -> Report:
    """The report with what the task's drill recorded beside the backup; JobFailed if it recorded nothing."""
    target = setup.job.target
    store = setup.services.store(target)
    if backup == "latest":
        # _pin_backup could not resolve it here, so the task chose; re-resolving now could name a backup
        # that finished since. What counts is a drill record written after this run started.
        since = setup.services.clock.now() - timedelta(seconds=report.duration_s or 0.0)
        found = _drill_since(setup, since)
        if found is None:
            raise JobFailed(f"ECS task {task_id(arn)} exited 0 but left no drill record beside the newest {_RECENT} backups of "
                            f"{target.name} since {since.isoformat(timespec='seconds')}; see the task's log")
        entry, record = found
    else:
        entry = resolve_backup(store, target.identifier, target.env, backup)
        found_record = read_record(store, entry.key, DrillRecord)
        if found_record is None or found_record.backup_id != entry.id:
            raise JobFailed(f"ECS task {task_id(arn)} exited 0 but left no drill record beside {store.uri(entry.key)}; see the task's log")
        record = found_record
    if not record.ok:
        raise JobFailed(f"the drill of {target.name} {entry.id} failed: {record.problem}")
    rows = sum(record.restored_tables.values())
    return replace(report, message=(f"restored in {human_duration(record.restore_duration_s)} into a {record.server}: "
                                    f"{plural(len(record.restored_tables), 'table')}, {plural(rows, 'row')} as dumped"))


_RECENT = 20  # backups `latest` can have meant: the newest good one, past any damaged newer ones


def _drill_since(setup: _Setup, since: datetime) -> tuple[BackupEntry, DrillRecord] | None:
    """The newest drill record checked at or after `since` beside one of the newest backups, with its backup."""
    target = setup.job.target
    store = setup.services.store(target)
    found: list[tuple[BackupEntry, DrillRecord]] = []
    for entry in list_backups(store, target.identifier, target.env, limit=_RECENT):
        record = read_record(store, entry.key, DrillRecord)
        if record is not None and record.backup_id == entry.id and record.checked_at >= since:
            found.append((entry, record))
    return max(found, key=lambda pair: pair[1].checked_at, default=None)


def _publish(setup: _Setup, state: _State, report: Report) -> None:
    state.report = report
    with deferred_signals():
        github.publish(report, setup.gh, setup.out)


def _stop_and_wait(setup: _Setup, state: _State, reason: str) -> str:
    """Stop the task (if it may still run), wait a bounded time for STOPPED; a note for the report."""
    if state.arn is None or state.stopped:
        return ""
    region, cluster, tid = setup.job.target.region, setup.config.cluster, task_id(state.arn)
    try:
        # A signal held during the stop arrives as the block ends: still inside this try.
        with deferred_signals():
            asked = stop(setup.services.aws.ecs_held(region), cluster, state.arn, reason)
        if not asked:
            return f"; stopping ECS task {tid} failed, stop it in the console"
        stopped = wait_stopped(setup.services.aws.ecs(region), cluster, state.arn, setup.services.clock, setup.policy,
                               tick=state.tail.poll if state.tail else _nothing)
    except KeyboardInterrupt:
        return f"; ECS task {tid} is stopping"
    if stopped is None:
        return f"; ECS task {tid} is stopping (not yet STOPPED after {setup.policy.stop_wait_s:.0f}s)"
    state.stopped = True
    return f"; ECS task {tid} was stopped"


def _fail(setup: _Setup, state: _State, exc: BaseException) -> DbBackupError:
    """Stop what still runs, publish the outcome, and return the error the CLI exits with."""
    job = setup.job
    run_note = f" (GitHub run {setup.gh.run_id})" if setup.gh.run_id else ""
    if isinstance(exc, KeyboardInterrupt):
        reason = cancel_reason(exc)
        note = _stop_and_wait(setup, state, f"db-backup runner: {reason}{run_note}")
        error: DbBackupError = Cancelled(f"{reason}{note}")
        result = CANCELLED
    elif isinstance(exc, TimedOut):
        limit = human_duration(setup.timeout_s)
        note = _stop_and_wait(setup, state, f"db-backup runner: timed out after {limit}{run_note}")
        error = TimedOut(f"{job.action} of {job.target.name} did not finish within {limit}{note}")
        result = TIMED_OUT
    else:
        note = _stop_and_wait(setup, state, f"db-backup runner failed: {exc}"[:200])
        if isinstance(exc, DbBackupError):
            error = exc
            if note:
                error.args = (f"{exc}{note}",)
        else:
            error = JobFailed(f"unexpected {type(exc).__name__}: {exc}{note}")
        result = FAILURE
    _publish(setup, state, replace(state.report, result=result, message=str(error), duration_s=_elapsed(setup, state),
                                   last_lines=_last_lines(state)))
    return error
