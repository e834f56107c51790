"""The ECS executor: start a Fargate task running the same CLI locally, follow it live, report it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TextIO

from . import ecs, github
from .errors import BadInput, Cancelled, DbBackupError, JobFailed, TimedOut, cancel_reason
from .github import CANCELLED, FAILURE, STARTED, SUCCESS, TIMED_OUT, Report
from .humanize import human_duration
from .jobs import BackupResult, RestoreResult, Services, new_request_id
from .logs import DEFAULT_LOG_GROUP, LogTail, stream_name
from .settings import GithubEnv
from .storage import BackupEntry, list_backups, resolve_backup
from .targets import EcsConfig, Target

if TYPE_CHECKING:
    from mypy_boto3_ecs.type_defs import TaskTypeDef

log = logging.getLogger(__name__)

# Tuning settings the task may inherit from the runner; none of them is a secret.
FORWARDED_SETTINGS = (
    "DB_BACKUP_PART_SIZE_MB", "DB_BACKUP_PARALLEL_UPLOADS", "DB_BACKUP_RESTORE_MODE",
    "DB_BACKUP_RESTORE_JOBS", "DB_BACKUP_PARALLEL_THRESHOLD_MB", "DB_BACKUP_SWAP_WAIT_S", "DB_BACKUP_ADMIN_TIMEOUT_S",
)
MANIFEST_SEARCH = 20  # newest backups searched for the task's request id
# ECS allows 8192 characters of overrides in all; the command and settings need the rest.
MAX_TARGETS_JSON = 6000


@dataclass(frozen=True)
class RemoteJob:
    """One backup or restore to run in a Fargate task."""

    action: str
    target: Target  # where the task runs: the backup's target or the restore's destination
    argv: tuple[str, ...]  # the CLI command, without --executor
    source: Target | None = None  # restore: the target whose backup is restored
    backup: str | None = None  # restore: `latest` or a backup id
    verbose: bool = False
    targets_json: str = ""  # Registry.excerpt of the targets involved, for the task


# GitHub cancels with SIGINT then SIGTERM (some runners SIGHUP), ECS stops a task with SIGTERM.
CANCEL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold the cancel signals during a step that must not be torn in half; they arrive right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(CANCEL_SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _set_option(argv: tuple[str, ...], option: str, value: str) -> tuple[str, ...]:
    items = list(argv)
    if option in items:
        items[items.index(option) + 1] = value
    else:
        items += [option, value]
    return tuple(items)


def task_request(job: RemoteJob, request_id: str, gh: GithubEnv, environ: Mapping[str, str]) -> ecs.TaskRequest:
    """The container command (same CLI, --executor local), plain environment, startedBy and tags."""
    command = [*(["--verbose"] if job.verbose else []), *job.argv, "--executor", "local"]
    if job.action == "backup":
        command += ["--request-id", request_id]
    tags = [("db-backup:target", job.target.name), ("db-backup:action", job.action), ("db-backup:request-id", request_id)]
    if gh.run_id:
        tags.append(("github:run-id", gh.run_id))
        tags.append(("github:run-attempt", gh.run_attempt or "1"))
        if gh.repository:
            tags.append(("github:repository", gh.repository))
            tags.append(("github:run-url", f"{gh.server_url}/{gh.repository}/actions/runs/{gh.run_id}"))
        if gh.triggering_actor or gh.actor:
            tags.append(("github:actor", str(gh.triggering_actor or gh.actor)))
    started_by = f"db-backup/gh-{gh.run_id}-{gh.run_attempt or '1'}" if gh.run_id else "db-backup/cli"
    environment = [(name, environ[name]) for name in FORWARDED_SETTINGS if name in environ]
    if job.targets_json:
        if len(job.targets_json) > MAX_TARGETS_JSON:
            raise BadInput(f"the targets.yaml entries for {job.target.name} take {len(job.targets_json)} characters, "
                           f"more than the {MAX_TARGETS_JSON} an ECS task's overrides leave room for; shorten them")
        environment.append(("DB_BACKUP_TARGETS_JSON", job.targets_json))
    return ecs.TaskRequest(
        command=tuple(command),
        environment=tuple(environment),
        started_by=ecs.started_by(started_by),
        tags=tuple((key, ecs.tag_value(value)) for key, value in tags),
        client_token=request_id,
        task_role_arn=ecs.task_role_for(job.target.ecs, job.action, job.target.protected) if job.target.ecs else None,
    )


class _Run:
    """One remote run; whatever happens, the task is not left running and a report is written."""

    def __init__(self, job: RemoteJob, services: Services, gh: GithubEnv, timeout_s: float,
                 policy: ecs.Policy, environ: Mapping[str, str], out: TextIO) -> None:
        if job.target.ecs is None:
            raise BadInput(f"--executor ecs needs defaults.ecs in targets.yaml for {job.target.name}")
        self.job = job
        self.config: EcsConfig = job.target.ecs
        self.services = services
        self.clock = services.clock
        self.gh = gh
        self.timeout_s = timeout_s
        self.policy = policy
        self.environ = environ
        self.out = out
        self.region = job.target.region
        self.client = services.aws.ecs(self.region)
        self.held_client = services.aws.ecs_held(self.region)  # run_task and stop_task run with signals held
        self.request_id = new_request_id()
        self.started = self.clock.monotonic()
        self.arn: str | None = None
        self.stopped = False
        self.tail: LogTail | None = None
        self.report = Report(target=job.target.name, action=job.action, result=STARTED, executor="ecs")

    # --- the happy path ---

    def execute(self, detach: bool) -> Report:
        argv = self.job.argv
        if self.job.action == "restore":
            entry = self._resolve_source()
            if entry is not None:
                # The task restores exactly the backup the report names, even if a newer one lands.
                argv = _set_option(argv, "--backup", entry.id)
        request = task_request(replace(self.job, argv=argv), self.request_id, self.gh, self.environ)
        ecs.start(self.held_client, self.config, request, self.clock, self.policy, shield=deferred_signals,
                  on_started=self._started)
        if detach:
            self._publish(self.report)
            return self.report
        deadline = self.started + self.timeout_s
        assert self.arn is not None and self.tail is not None
        task = ecs.follow(self.client, self.config.cluster, self.arn, self.clock, self.policy, deadline, tick=self.tail.poll)
        self.stopped = True
        self.tail.drain(self.policy.drain_quiet_s, self.policy.drain_limit_s)
        return self._judge(task)

    def _resolve_source(self) -> BackupEntry | None:
        source = self.job.source or self.job.target
        store = self.services.store(source)
        try:
            entry = resolve_backup(store, source.identifier, source.env, self.job.backup or "latest")
        except DbBackupError as exc:
            if exc.exit_code in (BadInput.exit_code, JobFailed.exit_code):
                raise  # no such backup, or a damaged one: refuse before starting anything
            log.warning("could not resolve backup %s of %s here (%s); the task resolves it", self.job.backup, source.name, exc)
            self.report = replace(self.report, source=f"{source.name} {self.job.backup or 'latest'}")
            return None
        self.report = replace(
            self.report, source=f"{source.name} {entry.id}", backup_id=entry.id, backup_uri=store.uri(entry.key),
            size_bytes=entry.size_bytes, sha256=entry.sha256,
        )
        return entry

    def _started(self, arn: str) -> None:
        # Runs with signals held: from here on a cancel always knows which task to stop.
        self.arn = arn
        tid = ecs.task_id(arn)
        group = self.config.log_group or DEFAULT_LOG_GROUP
        stream = stream_name(self.config.log_stream_prefix, self.config.container, tid)
        self.tail = LogTail(lambda: self.services.aws.logs(self.region), group, stream, self.clock, self._line)
        self.report = replace(
            self.report, task_arn=arn, task_url=github.task_url(self.region, self.config.cluster, tid),
            logs_url=github.logs_url(self.region, group, stream),
        )
        self._write(f"started ECS task {arn}\n  logs: {self.report.logs_url}\n  task: {self.report.task_url}\n")

    def _line(self, line: str) -> None:
        # The prefix keeps task output from ever being read as a GitHub workflow command.
        self._write(f"[task] {line}\n")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _judge(self, task: TaskTypeDef) -> Report:
        try:
            ecs.judge(ecs.outcome(task, self.config.container), self.config.container)
        except JobFailed as exc:
            said = next((line for line in reversed(self._last_lines()) if line.startswith("error: ")), None)
            if said:
                # The CLI in the task ends a failure with one `error: ...` line: the actual reason.
                exc.args = (f"{exc}; the task said: {said.removeprefix('error: ')}",)
            raise
        report = replace(self.report, result=SUCCESS, duration_s=self._elapsed())
        if self.job.action == "backup":
            report = self._with_manifest(report)
        self._publish(report)
        return report

    def _with_manifest(self, report: Report) -> Report:
        target = self.job.target
        store = self.services.store(target)
        for entry in list_backups(store, target.identifier, target.env, limit=MANIFEST_SEARCH):
            if entry.manifest is not None and entry.manifest.request_id == self.request_id:
                if entry.problem is not None:
                    raise JobFailed(f"ECS task {ecs.task_id(self.arn or '')} wrote backup {entry.id} of {target.name}, "
                                    f"but it is damaged ({entry.problem}); see the task's log")
                m = entry.manifest
                return replace(report, backup_id=m.id, backup_uri=store.uri(entry.key), size_bytes=m.size_bytes, sha256=m.sha256)
        raise JobFailed(
            f"ECS task {ecs.task_id(self.arn or '')} exited 0 but no backup of {target.name} in {store.url} "
            f"carries its request id {self.request_id}; the backup cannot be confirmed, see the task's log"
        )

    # --- everything else ---

    def _elapsed(self) -> float:
        return round(self.clock.monotonic() - self.started, 3)

    def _last_lines(self) -> tuple[str, ...]:
        return tuple(self.tail.last_lines) if self.tail else ()

    def _publish(self, report: Report) -> None:
        self.report = report
        with deferred_signals():
            github.publish(report, self.gh, self.out)

    def _stop_and_wait(self, reason: str) -> str:
        """Stop the task (if it may still run), wait a bounded time for STOPPED; a note for the report."""
        if self.arn is None or self.stopped:
            return ""
        try:
            # A signal held during the stop arrives as the block ends: still inside this try.
            with deferred_signals():
                asked = ecs.stop(self.held_client, self.config.cluster, self.arn, reason)
            if not asked:
                return f"; stopping ECS task {ecs.task_id(self.arn)} failed, stop it in the console"
            ecs.follow(self.client, self.config.cluster, self.arn, self.clock, self.policy,
                       self.clock.monotonic() + self.policy.stop_wait_s, tick=self.tail.poll if self.tail else lambda: None)
        except KeyboardInterrupt:
            return f"; ECS task {ecs.task_id(self.arn)} is stopping"
        except DbBackupError:
            return f"; ECS task {ecs.task_id(self.arn)} is stopping (not yet STOPPED after {self.policy.stop_wait_s:.0f}s)"
        self.stopped = True
        return f"; ECS task {ecs.task_id(self.arn)} was stopped"

    def fail(self, exc: BaseException) -> DbBackupError:
        """Stop what still runs, publish the outcome, and return the error the CLI exits with."""
        if isinstance(exc, KeyboardInterrupt):
            reason = cancel_reason(exc)
            note = self._stop_and_wait(f"db-backup runner: {reason}{self._run_note()}")
            error: DbBackupError = Cancelled(f"{reason}{note}")
            result = CANCELLED
        elif isinstance(exc, TimedOut):
            limit = human_duration(self.timeout_s)
            note = self._stop_and_wait(f"db-backup runner: timed out after {limit}{self._run_note()}")
            error = TimedOut(f"{self.job.action} of {self.job.target.name} did not finish within {limit}{note}")
            result = TIMED_OUT
        else:
            note = self._stop_and_wait(f"db-backup runner failed: {exc}"[:200])
            if isinstance(exc, DbBackupError):
                error = exc
                if note:
                    error.args = (f"{exc}{note}",)
            else:
                error = JobFailed(f"unexpected {type(exc).__name__}: {exc}{note}")
            result = FAILURE
        self._publish(replace(self.report, result=result, message=str(error), duration_s=self._elapsed(),
                              last_lines=self._last_lines()))
        return error

    def _run_note(self) -> str:
        return f" (GitHub run {self.gh.run_id})" if self.gh.run_id else ""


def run(
    job: RemoteJob, services: Services, gh: GithubEnv, *, timeout_s: float, detach: bool = False,
    policy: ecs.Policy | None = None, environ: Mapping[str, str] | None = None, out: TextIO | None = None,
) -> Report:
    """Run `job` in a Fargate task and report it; raises the error whose exit code the CLI uses."""
    state = _Run(job, services, gh, timeout_s, policy or ecs.Policy(), os.environ if environ is None else environ,
                 out or sys.stdout)
    try:
        return state.execute(detach)
    except (Exception, KeyboardInterrupt) as exc:
        if state.report.result not in (STARTED,):
            raise  # already reported (a failed verdict publishes before raising)
        raise state.fail(exc) from exc


def publish_local_backup(target: Target, result: BackupResult, gh: GithubEnv) -> None:
    """Outputs and summary of a backup that ran here (the CLI already printed its line)."""
    m = result.manifest
    github.publish(Report(
        target=target.name, action="backup", result=SUCCESS, executor="local", duration_s=m.duration_s,
        backup_id=m.id, backup_uri=result.uri, size_bytes=m.size_bytes, sha256=m.sha256,
    ), gh, text=False)


def publish_local_restore(result: RestoreResult, gh: GithubEnv) -> None:
    github.publish(Report(
        target=result.dest, action="restore", result=SUCCESS, executor="local", duration_s=result.duration_s,
        source=f"{result.source} {result.backup_id}", backup_id=result.backup_id, size_bytes=result.size_bytes,
        sha256=result.sha256,
    ), gh, text=False)
