"""Commands that list targets and backups, and run backups, restores and drills (here or as ECS tasks)."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from . import output
from .cli_app import Executor, app, executor_for, state_of
from .durations import parse_duration
from .errors import BadInput, JobFailed
from .words import plural

log = logging.getLogger(__name__)


@app.command("targets")
def targets_cmd(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Table of targets: identifier, env, schedule, protected."""
    registry = state_of(ctx).registry()
    if as_json:
        output.echo_json([output.target_to_json(t) for t in registry.targets])
        return
    output.table([output.target_row(t) for t in registry.targets], output.TARGET_HEADER)


@app.command()
def validate(ctx: typer.Context) -> None:
    """Check targets.yaml and print every problem with its place."""
    registry = state_of(ctx).registry()
    typer.echo(f"{registry.path}: {plural(len(registry.targets), 'target')} in "
               f"{plural(len(registry.environments), 'environment')}, valid")


@app.command()
def matrix(ctx: typer.Context, schedule: Annotated[str | None, typer.Option(help="Only targets with this schedule.")] = None) -> None:
    """A GitHub Actions job matrix: {"include": [{"identifier": .., "env": ..}, ..]}."""
    registry = state_of(ctx).registry()
    chosen = registry.scheduled(schedule) if schedule else registry.targets
    typer.echo(json.dumps({"include": [{"identifier": t.identifier, "env": t.env} for t in chosen]}, separators=(",", ":")))


@app.command("list")
def list_cmd(
    ctx: typer.Context, identifier: str, env: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Show at most N backups.")] = 20,
) -> None:
    """Backups of one target, newest first: complete, legacy (no manifest) or damaged (and why)."""
    from .catalog import list_page
    from .history import RecordIndex

    state = state_of(ctx)
    target = state.registry().get(identifier, env)
    store = state.services().store(target)
    page = list_page(store, identifier, env, limit=limit)
    entries = page.entries
    records = RecordIndex.of(store, identifier, env)
    pins = {e.id: records.pin(e) for e in entries}
    cut = output.shown_line(len(entries), page.total)
    if as_json:
        output.echo_json([output.entry_to_json(e, pins[e.id]) for e in entries])
        if cut:  # stdout stays the JSON array scripts read
            typer.echo(cut, err=True)
        return
    if not entries:
        typer.echo(f"no backups for {target.name} in {store.url}")
        return
    output.table([output.entry_row(e, pins[e.id]) for e in entries], output.ENTRY_HEADER)
    if cut:
        typer.echo(cut)


@app.command()
def backup(
    ctx: typer.Context, identifier: str, env: str,
    executor: Annotated[Executor | None, typer.Option(help="Where pg_dump runs (default: the target's setting).")] = None,
    request_id: Annotated[str | None, typer.Option(hidden=True, help="Recorded in the manifest.")] = None,
    timeout: Annotated[str, typer.Option(help="ecs: give up (and stop the task) after this long, e.g. 90m.")] = "6h",
    detach: Annotated[bool, typer.Option(help="ecs: start the task, print its ARN and return.")] = False,
) -> None:
    """Back up one target's database."""
    from . import github
    from .settings import GithubEnv

    state = state_of(ctx)
    limit = parse_duration(timeout)
    target = state.registry().get(identifier, env)
    if executor_for(target, executor) == "ecs":
        from .cli_remote import run_remote

        run_remote(ctx, target, timeout=limit, detach=detach)
        return
    from .backup import run_backup

    result = run_backup(target, state.services(), request_id=request_id)
    typer.echo(output.backup_line(target, result))
    github.publish_local_backup(target, result, GithubEnv())


@app.command()
def drill(
    ctx: typer.Context, identifier: str, env: str,
    backup_id: Annotated[str, typer.Option("--backup", help="latest or a backup id.")] = "latest",
    to_url: Annotated[str | None, typer.Option("--to-url", help="postgresql:// URL of a server to drill on, not a throwaway one.")] = None,
    executor: Annotated[Executor | None, typer.Option(help="Where the drill runs (default: the target's setting).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    timeout: Annotated[str, typer.Option(help="ecs: give up (and stop the task) after this long, e.g. 90m.")] = "6h",
) -> None:
    """Restore a backup into a throwaway PostgreSQL, check tables, rows and extensions, and record it; exit 1 if it failed."""
    from .cli_remote import run_remote
    from .credentials import parse_url
    from .drill import DrillPlan, run_drill, summary_line
    from .records import to_json

    state = state_of(ctx)
    limit = parse_duration(timeout)
    target = state.registry().get(identifier, env)
    url = parse_url(to_url) if to_url else None
    if url is not None and executor == Executor.ecs:
        raise BadInput("--to-url drills run locally; drop --executor ecs")
    if url is None and executor_for(target, executor) == "ecs":
        if as_json:
            raise BadInput("--json prints a local drill's record; an ECS drill reports in its summary, or drop --executor ecs")
        run_remote(ctx, target, timeout=limit, detach=False, drill_backup=backup_id)
        return
    outcome = run_drill(DrillPlan(target, backup_id, url), state.services())
    if as_json:
        output.echo_json({**json.loads(to_json(outcome.record)), "record": outcome.record_uri})
    else:
        typer.echo(summary_line(target, outcome))
    if not outcome.record.ok:
        raise JobFailed(f"the drill of {target.name} {outcome.record.backup_id} failed: {outcome.record.problem}")
