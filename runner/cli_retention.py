"""Commands that keep the right backups: pin, unpin, retention (what is kept and until when) and prune (folders)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated

import typer

from . import output
from .cli_app import app, stored, who
from .errors import BadInput, DbBackupError
from .words import plural

if TYPE_CHECKING:
    from .keeping import Kept, RetentionPlan

log = logging.getLogger(__name__)

BACKUP_ID = typer.Argument(metavar="ID", help="The backup id (see `db-backup list`), or latest.")


@app.command()
def pin(
    ctx: typer.Context, identifier: str, env: str, backup_id: Annotated[str, BACKUP_ID],
    reason: Annotated[str, typer.Option(help="Why it must be kept, shown by list, history and retention.")] = "",
) -> None:
    """Keep a backup until it is unpinned: no retention rule or prune removes it (e.g. before a risky migration)."""
    from .catalog import resolve_backup
    from .pins import pin as pin_backup

    target, services, store = stored(ctx, identifier, env)
    entry = resolve_backup(store, identifier, env, backup_id)
    change = pin_backup(store, entry, who(), reason, services.clock.now(), target.retention)
    again = " (it was already pinned; reason updated)" if change.was_pinned else ""
    typer.echo(f"pinned backup {entry.id} of {target.name}{again}; `db-backup unpin {identifier} {env} {entry.id}` releases it")


@app.command()
def unpin(ctx: typer.Context, identifier: str, env: str, backup_id: Annotated[str, BACKUP_ID]) -> None:
    """Release a pinned backup: it gets back its tier and expires with it (at once, if it is older than the tier keeps)."""
    from .catalog import resolve_backup
    from .pins import unpin as unpin_backup
    from .retention import Tier, expires_after

    target, services, store = stored(ctx, identifier, env)
    entry = resolve_backup(store, identifier, env, backup_id)
    change = unpin_backup(store, entry, who(), services.clock.now(), target.retention)
    if not store.expires_itself:
        typer.echo(f"unpinned backup {entry.id} of {target.name}; prune keeps it as long as its tier does "
                   f"(`db-backup retention {identifier} {env}` shows until when)")
        return
    tier = Tier(change.record.tier_before or Tier.DAILY)
    try:
        lifecycle = store.lifecycle(identifier, env)
    except DbBackupError as exc:  # the unpin is done; only the forecast is missing
        log.warning("could not read the bucket's lifecycle rules (%s)", exc)
        lifecycle = None
    days = lifecycle.days.get(tier) if lifecycle is not None else None
    when = "" if days is None else f"; it expires {expires_after(entry.created_at, days):%Y-%m-%d}"
    if days is not None and expires_after(entry.created_at, days) <= services.clock.now():
        when = "; it is older than its tier keeps, so S3 removes it at its next lifecycle run"
    typer.echo(f"unpinned backup {entry.id} of {target.name}: {tier} again{when}")


def _row(kept: Kept) -> list[str]:
    return [kept.entry.id, kept.entry.status, str(kept.tier or "-"),
            f"{kept.expires:%Y-%m-%d}" if kept.expires else "never", kept.why]


def _plan_json(plan: RetentionPlan) -> dict[str, object]:
    return {
        "target": plan.target.name,
        "days": {str(t): d for t, d in plan.days.items()},
        "warnings": list(plan.warnings),
        "backups": [
            {"id": k.entry.id, "status": k.entry.status, "tier": k.tier, "expires": k.expires, "why": k.why,
             "pinned": k.pin is not None or k.tier == "pinned", "expired": k.expired}
            for k in plan.rows
        ],
    }


@app.command()
def retention(
    ctx: typer.Context, identifier: str, env: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    retag: Annotated[bool, typer.Option("--retag", help="Tag backups written before tiers existed (S3), then show.")] = False,
) -> None:
    """Which backups are kept in which tier and when each expires, from the tags and the bucket's rules."""
    from .keeping import plan_retention, retag_untagged

    target, services, store = stored(ctx, identifier, env)
    if retag:
        if not store.expires_itself:
            raise BadInput(f"{store.url} is a folder: it keeps no tags (prune applies the policy); drop --retag")
        for backup_id, tier in retag_untagged(store, target):
            typer.echo(f"tagged backup {backup_id} as {tier}", err=as_json)
    plan = plan_retention(store, target, services.clock.now())
    if as_json:
        output.echo_json(_plan_json(plan))
        return
    days = ", ".join(f"{t} {plural(d, 'day')}" for t, d in plan.days.items()) or "nothing expires"
    source = "bucket lifecycle rules" if store.expires_itself else "targets.yaml (applied by prune)"
    typer.echo(f"{target.name}: policy {target.retention.describe()}; kept per {source}: {days}")
    for warning in plan.warnings:
        typer.echo(f"warning: {warning}")
    if not plan.rows:
        typer.echo(f"no backups for {target.name} in {store.url}")
        return
    output.table([_row(k) for k in plan.rows], ["ID", "STATUS", "TIER", "EXPIRES", "WHY"])


@app.command()
def prune(
    ctx: typer.Context, identifier: str, env: str,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be deleted; delete nothing.")] = False,
) -> None:
    """Delete a folder store's expired backups by the retention policy; never a pinned, legacy or the newest good one."""
    from .keeping import plan_retention
    from .keeping import prune as prune_backups
    from .stores.local import LocalStore

    target, services, store = stored(ctx, identifier, env)
    if not isinstance(store, LocalStore):
        raise BadInput(f"{store.url} expires backups itself by their tags; `db-backup retention {identifier} {env}` "
                       "shows what it keeps (prune is for file:// stores)")
    plan = plan_retention(store, target, services.clock.now())
    doomed = prune_backups(store, plan, dry_run)
    verb = "would delete" if dry_run else "deleted"
    for row in doomed:
        typer.echo(f"{verb} {row.entry.id} ({row.tier}, expired {row.expires:%Y-%m-%d})" if row.expires else f"{verb} {row.entry.id}")
    typer.echo(f"{target.name}: {verb} {len(doomed)} of {plural(len(plan.rows), 'backup')}; {len(plan.rows) - len(doomed)} kept")
