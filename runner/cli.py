"""The db-backup command line: parse, call, and turn errors into exit codes in one place."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from . import github, output, signals
from .aws import AwsClients
from .backup import run_backup
from .catalog import list_backups
from .clock import SystemClock
from .credentials import parse_url
from .durations import parse_duration
from .ecs import remote
from .ecs.request import RemoteJob
from .errors import BadInput, Cancelled, DbBackupError, ExitCode, JobFailed, StaleBackups, TargetsInvalid, cancel_reason
from .restore import RestorePlan, plan_restore, run_restore
from .services import Services
from .settings import GithubEnv, Settings, load_settings
from .status import target_statuses
from .targets import Registry, Target, load_registry, parse_registry

log = logging.getLogger(__name__)


class _Commands(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            # Left alone, typer turns it into a bare exit code 130, which main() would read as success.
            raise Cancelled(cancel_reason(exc)) from exc


app = typer.Typer(
    cls=_Commands, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Backups of PostgreSQL databases to S3 or a folder, and safe restores.",
)


class Executor(StrEnum):
    local = "local"
    ecs = "ecs"


@dataclass
class State:
    targets: Path
    verbose: bool
    settings: Settings

    _registry: Registry | None = field(default=None, repr=False)

    def registry(self) -> Registry:
        """targets.yaml, read and validated once per command (an ECS run needs it twice)."""
        if self._registry is None:
            if self.settings.targets_json:
                self._registry = parse_registry(self.settings.targets_json, "the targets sent by the runner (DB_BACKUP_TARGETS_JSON)")
            else:
                self._registry = load_registry(self.targets)
        return self._registry

    def services(self) -> Services:
        gh = GithubEnv()
        return Services(
            settings=self.settings, clock=SystemClock(), aws=AwsClients(),
            on_secret=github.add_mask if gh.actions else (lambda _secret: None),
        )


def _state(ctx: typer.Context) -> State:
    state: State = ctx.obj
    return state


@app.callback()
def main_callback(
    ctx: typer.Context,
    targets: Annotated[Path | None, typer.Option("--targets", envvar="DB_BACKUP_TARGETS", help="Path of targets.yaml.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging and tracebacks.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr, force=True,
        format="%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%SZ",
    )
    logging.Formatter.converter = time.gmtime
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = load_settings()
    ctx.obj = State(targets=targets or settings.targets, verbose=verbose, settings=settings)


@app.command("targets")
def targets_cmd(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Table of targets: identifier, env, schedule, protected."""
    registry = _state(ctx).registry()
    if as_json:
        output.echo_json([output.target_to_json(t) for t in registry.targets])
        return
    output.table([output.target_row(t) for t in registry.targets], output.TARGET_HEADER)


@app.command()
def validate(ctx: typer.Context) -> None:
    """Check targets.yaml and print every problem with its place."""
    registry = _state(ctx).registry()
    typer.echo(f"{registry.path}: {len(registry.targets)} targets in {len(registry.environments)} environments, valid")


@app.command()
def matrix(ctx: typer.Context, schedule: Annotated[str | None, typer.Option(help="Only targets with this schedule.")] = None) -> None:
    """A GitHub Actions job matrix: {"include": [{"identifier": .., "env": ..}, ..]}."""
    registry = _state(ctx).registry()
    chosen = registry.scheduled(schedule) if schedule else registry.targets
    typer.echo(json.dumps({"include": [{"identifier": t.identifier, "env": t.env} for t in chosen]}, separators=(",", ":")))


@app.command("list")
def list_cmd(
    ctx: typer.Context, identifier: str, env: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Show at most N backups.")] = 20,
) -> None:
    """Backups of one target, newest first: complete, legacy (no manifest) or damaged (and why)."""
    state = _state(ctx)
    target = state.registry().get(identifier, env)
    store = state.services().store(target)
    entries = list_backups(store, identifier, env, limit=limit)
    if as_json:
        output.echo_json([output.entry_to_json(e) for e in entries])
        return
    if not entries:
        typer.echo(f"no backups for {target.name} in {store.url}")
        return
    output.table([output.entry_row(e) for e in entries], output.ENTRY_HEADER)


def _executor(target: Target, chosen: Executor | None) -> str:
    executor = chosen.value if chosen else target.executor
    if executor == "ecs" and target.ecs is None:
        raise BadInput(f"--executor ecs needs defaults.ecs in targets.yaml for {target.name}")
    return executor


@app.command()
def backup(
    ctx: typer.Context, identifier: str, env: str,
    executor: Annotated[Executor | None, typer.Option(help="Where pg_dump runs (default: the target's setting).")] = None,
    request_id: Annotated[str | None, typer.Option(hidden=True, help="Recorded in the manifest.")] = None,
    timeout: Annotated[str, typer.Option(help="ecs: give up (and stop the task) after this long, e.g. 90m.")] = "6h",
    detach: Annotated[bool, typer.Option(help="ecs: start the task, print its ARN and return.")] = False,
) -> None:
    """Back up one target's database."""
    state = _state(ctx)
    limit = parse_duration(timeout)
    target = state.registry().get(identifier, env)
    if _executor(target, executor) == "ecs":
        _run_remote(ctx, target, timeout=limit, detach=detach)
        return
    result = run_backup(target, state.services(), request_id=request_id)
    typer.echo(output.backup_line(target, result))
    github.publish_local_backup(target, result, GithubEnv())


@app.command()
def restore(
    ctx: typer.Context, identifier: str,
    from_env: Annotated[str, typer.Option("--from", help="Environment whose backup is restored.")],
    to: Annotated[str | None, typer.Option("--to", help="Environment to restore into.")] = None,
    to_url: Annotated[str | None, typer.Option("--to-url", help="postgresql:// URL of a database outside targets.yaml.")] = None,
    backup_id: Annotated[str, typer.Option("--backup", help="latest or a backup id.")] = "latest",
    executor: Annotated[Executor | None, typer.Option(help="Where pg_restore runs.")] = None,
    confirm: Annotated[str | None, typer.Option(help="Name the protected environment to allow restoring into it.")] = None,
    timeout: Annotated[str, typer.Option(help="ecs: give up (and stop the task) after this long, e.g. 90m.")] = "6h",
    detach: Annotated[bool, typer.Option(help="ecs: start the task, print its ARN and return.")] = False,
) -> None:
    """Restore a backup into an environment (or a URL) through a fresh database and a safe swap."""
    state = _state(ctx)
    limit = parse_duration(timeout)
    registry = state.registry()
    url = parse_url(to_url) if to_url else None
    plan = plan_restore(registry, identifier, from_env, to, url, backup_id, confirm)
    if plan.dest is not None and _executor(plan.dest, executor) == "ecs":
        _run_remote(ctx, plan.dest, timeout=limit, detach=detach, plan=plan, confirm=confirm)
        return
    if url is not None and executor == Executor.ecs:
        raise BadInput("--to-url restores run locally; drop --executor ecs")
    result = run_restore(plan, state.services())
    typer.echo(output.restore_line(result))
    github.publish_local_restore(result, GithubEnv())


def _run_remote(
    ctx: typer.Context, target: Target, *, timeout: timedelta, detach: bool,
    plan: RestorePlan | None = None, confirm: str | None = None,
) -> None:
    """Run the backup of `target`, or the restore `plan` into it, as an ECS task (the same CLI, run locally there)."""
    state = _state(ctx)
    involved = (target, plan.source) if plan else (target,)
    job = RemoteJob(
        action="restore" if plan else "backup", target=target, source=plan.source if plan else None,
        backup=plan.backup if plan else "latest", confirm=confirm, verbose=state.verbose,
        targets_json=state.registry().excerpt(*involved),
    )
    remote.run(job, state.services(), GithubEnv(), timeout_s=timeout.total_seconds(), detach=detach)


# --- workflow commands ------------------------------------------------------------------------


@app.command()
def workflows(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="Folder of the workflow files.")] = Path(".github/workflows"),
    check: Annotated[bool, typer.Option("--check", help="Only report differences; exit 1 if any.")] = False,
) -> None:
    """Rewrite the dispatch workflows' dropdown options from targets.yaml (or --check them)."""
    from .workflow_options import sync

    changed = sync(_state(ctx).registry(), directory, check=check)
    if check and changed:
        raise JobFailed(f"dropdown options differ from targets.yaml in {', '.join(changed)}; run `db-backup workflows`")
    typer.echo("\n".join(f"updated {name}" for name in changed) if changed else "workflow options match targets.yaml")


@app.command()
def report(
    ctx: typer.Context,
    results: Annotated[Path, typer.Argument(help="Folder of per-target result files.")],
) -> None:
    """One summary table of a scheduled run's per-target results; exit 1 if any target failed."""
    from .report import render

    markdown, all_ok = render(_state(ctx).registry(), results)
    gh = GithubEnv()
    if gh.step_summary:
        with gh.step_summary.open("a", encoding="utf-8") as handle:
            handle.write(markdown)
    typer.echo(markdown)
    if not all_ok:
        raise JobFailed("at least one scheduled backup failed; see the table above")


@app.command()
def status(
    ctx: typer.Context,
    max_age: Annotated[str, typer.Option("--max-age", help="Oldest acceptable newest backup, e.g. 26h.")] = "26h",
    as_json: Annotated[bool, typer.Option("--json")] = False,
    schedule: Annotated[str, typer.Option(help="Which schedule's targets to check.")] = "nightly",
) -> None:
    """Age of each scheduled target's newest good backup, naming damaged newer ones; exit 1 if any is stale."""
    state = _state(ctx)
    limit = parse_duration(max_age)
    results = target_statuses(state.registry(), state.services(), limit, schedule)
    rows = [output.status_to_json(r) for r in results]
    for r in results:
        for d in r.damaged:
            judged = f"judged by {r.newest.id}" if r.newest else "no good backup"
            log.warning("%s: backup %s is damaged (%s); %s", r.target.name, d.id, d.problem, judged)
    if as_json:
        output.echo_json(rows)
    else:
        output.table([output.status_row(r) for r in rows], output.STATUS_HEADER)
    stale = [f"{r['identifier']}/{r['env']}" for r in rows if r["stale"]]
    if stale:
        raise StaleBackups(f"{len(stale)} target(s) have no backup newer than {max_age}: {', '.join(stale)}")


def _cancel_reason(exc: BaseException) -> str:
    # typer turns an EOF at a prompt into Abort, keeping it as the cause.
    cause = exc.__cause__ if isinstance(exc, typer.Abort) else exc
    return cancel_reason(cause) if isinstance(cause, KeyboardInterrupt) else "cancelled"


def main(argv: list[str] | None = None) -> NoReturn:
    """Console entry point: every error becomes one line on stderr and its exit code."""
    signals.install()
    verbose = "--verbose" in (argv or sys.argv) or "-v" in (argv or sys.argv)
    try:
        returned = app(args=argv, standalone_mode=False)
        # Outside standalone mode, click and typer hand back an exit code instead of exiting.
        code = returned if isinstance(returned, int) and returned else ExitCode.OK
    except TargetsInvalid as exc:
        typer.echo(f"error: {exc.path} is not valid ({len(exc.problems)} problems); fix each place below:", err=True)
        for problem in exc.problems:
            typer.echo(f"  {exc.path}: {problem}", err=True)
        code = exc.exit_code
    except DbBackupError as exc:
        if verbose:
            log.exception("traceback")
        typer.echo(f"error: {exc}", err=True)
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort) as exc:
        typer.echo(f"error: {_cancel_reason(exc)}", err=True)
        code = ExitCode.CANCELLED
    except typer.TyperException as exc:  # a usage error: unknown option, missing argument, bad choice
        where = getattr(getattr(exc, "ctx", None), "command_path", "db-backup")
        if message := exc.format_message().rstrip("."):  # empty when typer has just shown the help instead
            typer.echo(f"error: {message}; see `{where} --help`", err=True)
        code = ExitCode.BAD_INPUT
    except Exception as exc:
        if verbose:
            log.exception("traceback")
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (run with --verbose for the traceback)", err=True)
        code = ExitCode.FAILED
    sys.exit(int(code))


if __name__ == "__main__":
    main()
