"""Running a job as an ECS task: the same CLI, run there, followed from here."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Literal

import typer

from .cli_app import state_of
from .errors import InfraError, RestoreRefused

if TYPE_CHECKING:  # the rest is imported when a job runs: the CLI starts without it
    from .restore import RestorePlan
    from .targets import Target


def run_remote(
    ctx: typer.Context, target: Target, *, timeout: timedelta, detach: bool,
    plan: RestorePlan | None = None, confirm: str | None = None, drill_backup: str | None = None, rollback: bool = False,
    preview: bool = False,
) -> None:
    """Run the backup of `target`, the restore `plan` into it (or, with `preview`, its dry run), a drill of its
    backup `drill_backup`, or its rollback, as an ECS task (the same CLI, run locally there)."""
    from .ecs import remote
    from .ecs.request import RemoteJob
    from .settings import GithubEnv

    state = state_of(ctx)
    involved = (target, plan.source) if plan else (target,)
    action: Literal["backup", "restore", "preview", "rollback", "drill"] = (
        ("preview" if preview else "restore") if plan else "drill" if drill_backup else "rollback" if rollback else "backup"
    )
    job = RemoteJob(
        action=action, target=target, source=plan.source if plan else None,
        backup=plan.backup if plan else drill_backup or "latest", confirm=confirm, verbose=state.verbose,
        with_roles=plan.with_roles if plan else False,
        targets_json=state.registry().excerpt(*involved),
    )
    remote.run(job, state.services(), GithubEnv(), timeout_s=timeout.total_seconds(), detach=detach)


def restore_dry_run(ctx: typer.Context, plan: RestorePlan, runs_on: str, *, confirm: str | None, timeout: timedelta, detach: bool) -> None:
    """restore --dry-run: what is known here, then (executor ecs) the server's part read by an ECS task."""
    from .restore_preview import local_command, preview_restore, preview_text

    state = state_of(ctx)
    preview = preview_restore(plan, state.services(), runs_on)
    typer.echo(preview_text(preview))
    if refusal := preview.refusal:
        raise RestoreRefused(refusal)
    if plan.dest is None or runs_on != "ecs":
        return
    # Read-only, so a preview needs nothing confirmed beyond what the restore's refusals asked for.
    try:
        run_remote(ctx, plan.dest, timeout=timeout, detach=detach, plan=plan, confirm=confirm, preview=True)
    except InfraError as exc:
        raise InfraError(f"the server was not read: {exc}; from a machine that reaches the database, run "
                         f"{local_command(plan, preview.backup_id, confirm)}") from exc
