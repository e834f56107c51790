"""The restore command: a checked plan, then the restore here or as an ECS task."""

from __future__ import annotations

from typing import Annotated

import typer

from . import github, output
from .cli_app import Executor, app, executor_for, state_of
from .cli_remote import run_remote
from .credentials import parse_url
from .durations import parse_duration
from .errors import BadInput
from .restore import plan_restore, run_restore
from .settings import GithubEnv


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
    timeout: Annotated[str, typer.Option(help="ecs: give up (and stop the task) after this long, e.g. 90m.")] = "6h",
    detach: Annotated[bool, typer.Option(help="ecs: start the task, print its ARN and return.")] = False,
) -> None:
    """Restore a backup into an environment (or a URL) through a fresh database and a safe swap."""
    state = state_of(ctx)
    limit = parse_duration(timeout)
    registry = state.registry()
    url = parse_url(to_url) if to_url else None
    plan = plan_restore(registry, identifier, from_env, to, url, backup_id, confirm, with_roles)
    if plan.dest is not None and executor_for(plan.dest, executor) == "ecs":
        run_remote(ctx, plan.dest, timeout=limit, detach=detach, plan=plan, confirm=confirm)
        return
    if url is not None and executor == Executor.ecs:
        raise BadInput("--to-url restores run locally; drop --executor ecs")
    result = run_restore(plan, state.services())
    typer.echo(output.restore_line(result))
    github.publish_local_restore(result, GithubEnv())
