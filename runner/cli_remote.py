"""Running a job as an ECS task: the same CLI, run there, followed from here."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import typer

from .cli_app import state_of
from .ecs import remote
from .ecs.request import RemoteJob
from .restore import RestorePlan
from .settings import GithubEnv
from .targets import Target


def run_remote(
    ctx: typer.Context, target: Target, *, timeout: timedelta, detach: bool,
    plan: RestorePlan | None = None, confirm: str | None = None, drill_backup: str | None = None, rollback: bool = False,
) -> None:
    """Run the backup of `target`, the restore `plan` into it, a drill of its backup `drill_backup`, or
    its rollback, as an ECS task (the same CLI, run locally there)."""
    state = state_of(ctx)
    involved = (target, plan.source) if plan else (target,)
    action: Literal["backup", "restore", "rollback", "drill"] = (
        "restore" if plan else "drill" if drill_backup else "rollback" if rollback else "backup"
    )
    job = RemoteJob(
        action=action, target=target, source=plan.source if plan else None,
        backup=plan.backup if plan else drill_backup or "latest", confirm=confirm, verbose=state.verbose,
        with_roles=plan.with_roles if plan else False,
        targets_json=state.registry().excerpt(*involved),
    )
    remote.run(job, state.services(), GithubEnv(), timeout_s=timeout.total_seconds(), detach=detach)


