"""The restore and rollback commands: a checked plan, then the job here or as an ECS task."""

from __future__ import annotations

from typing import Annotated

import typer

from . import output
from .cli_app import Executor, app, executor_for, state_of
from .cli_remote import restore_dry_run, run_remote
from .durations import parse_duration
from .errors import BadInput


@app.command()
def restore(
    ctx: typer.Context, identifier: str,
    from_env: Annotated[str, typer.Option("--from", help="Environment whose backup is restored.")],
    to: Annotated[str | None, typer.Option("--to", help="Environment to restore into.")] = None,
    to_url: Annotated[str | None, typer.Option("--to-url", help="postgresql:// URL of a database outside targets.yaml.")] = None,
    backup_id: Annotated[str, typer.Option("--backup", help="latest or a backup id.")] = "latest",
    executor: Annotated[Executor | None, typer.Option(help="Where pg_restore runs.")] = None,
    confirm: Annotated[str | None, typer.Option(help="Name the protected environment to allow restoring into it.")] = None,
    with_roles: Annotated[bool, typer.Option(
        "--with-roles", help="First create the roles the backup's objects need that the server lacks (never superuser).",
    )] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print what the restore would do (backup, target, sessions ended, what is kept) and change nothing; "
        "with --executor ecs the server is read by an ECS task.",
    )] = False,
    timeout: Annotated[str, typer.Option(help="ecs: give up (and stop the task) after this long, e.g. 90m.")] = "6h",
    detach: Annotated[bool, typer.Option(help="ecs: start the task, print its ARN and return.")] = False,
) -> None:
    """Restore a backup into an environment (or a URL) through a fresh database and a safe swap."""
    from . import github
    from .credentials import parse_url
    from .restore import plan_restore, run_restore
    from .settings import GithubEnv

    state = state_of(ctx)
    limit = parse_duration(timeout)
    registry = state.registry()
    url = parse_url(to_url) if to_url else None
    plan = plan_restore(registry, identifier, from_env, to, url, backup_id, confirm, with_roles)
    if url is not None and executor == Executor.ecs:
        raise BadInput("--to-url restores run locally; drop --executor ecs")
    runs_on = executor_for(plan.dest, executor) if plan.dest is not None else "local"
    if dry_run:
        restore_dry_run(ctx, plan, runs_on, confirm=confirm, timeout=limit, detach=detach)
        return
    if plan.dest is not None and runs_on == "ecs":
        run_remote(ctx, plan.dest, timeout=limit, detach=detach, plan=plan, confirm=confirm)
        return
    result = run_restore(plan, state.services())
    typer.echo(output.restore_line(result))
    github.publish_local_restore(result, GithubEnv())


@app.command()
def rollback(
    ctx: typer.Context, identifier: str, env: str,
    confirm: Annotated[str | None, typer.Option(help="Name the protected environment to allow the rollback in it.")] = None,
    executor: Annotated[Executor | None, typer.Option(help="Where the swap runs.")] = None,
    timeout: Annotated[str, typer.Option(help="ecs: give up (and stop the task) after this long, e.g. 30m.")] = "6h",
    detach: Annotated[bool, typer.Option(help="ecs: start the task, print its ARN and return.")] = False,
) -> None:
    """Swap the database the last restore replaced (NAME__previous) back in; run again to undo."""
    from .rollback import plan_rollback, rollback_line, run_rollback

    state = state_of(ctx)
    limit = parse_duration(timeout)
    plan = plan_rollback(state.registry(), identifier, env, confirm)
    if executor_for(plan.target, executor) == "ecs":
        run_remote(ctx, plan.target, timeout=limit, detach=detach, confirm=confirm, rollback=True)
        return
    typer.echo(rollback_line(run_rollback(plan, state.services())))
