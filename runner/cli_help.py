"""Examples at the end of each command's --help: what a new user types first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from typer.main import get_command_name

if TYPE_CHECKING:
    import typer

# Each line is a whole command as typed; short enough for an 80-column terminal, so it never wraps.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "targets": (
        "db-backup targets",
        "db-backup targets --json",
        "db-backup --targets ./targets.yaml targets",
    ),
    "validate": (
        "db-backup validate",
        "db-backup --targets ./targets.example.yaml validate",
    ),
    "matrix": (
        "db-backup matrix",
        "db-backup matrix --schedule nightly",
    ),
    "list": (
        "db-backup list curation production",
        "db-backup list curation production --limit 50",
        "db-backup list curation production --json",
    ),
    "backup": (
        "db-backup backup curation production",
        "db-backup backup curation production --executor ecs",
        "db-backup backup curation beta --executor ecs --detach",
    ),
    "restore": (
        "db-backup restore curation --from production --to beta --dry-run",
        "db-backup restore curation --from production --to beta",
        "db-backup restore curation --from beta --to alpha --backup latest",
        "db-backup restore curation --from beta --to-url postgresql://localhost/copy",
    ),
    "rollback": (
        "db-backup rollback curation beta",
        "db-backup rollback curation production --confirm production",
        "db-backup rollback curation beta --executor ecs",
    ),
    "drill": (
        "db-backup drill curation production",
        "db-backup drill curation production --backup latest --json",
        "db-backup drill curation production --executor ecs",
    ),
    "verify": (
        "db-backup verify curation production",
        "db-backup verify curation production --backup all",
    ),
    "history": (
        "db-backup history curation production",
        "db-backup history curation production --limit 100 --json",
    ),
    "status": (
        "db-backup status",
        "db-backup status --max-age 26h --max-drill-age 8d",
        "db-backup status --json",
    ),
    "ack": (
        "db-backup ack curation production latest",
        "db-backup ack curation production latest --reason 'old rows archived'",
    ),
    "retention": (
        "db-backup retention curation production",
        "db-backup retention curation production --json",
        "db-backup retention curation production --retag",
    ),
    "pin": (
        "db-backup pin curation production latest --reason 'before the migration'",
        "db-backup pin curation production 2026-11-30_02-00-00",
    ),
    "unpin": (
        "db-backup unpin curation production 2026-11-30_02-00-00",
        "db-backup unpin curation production latest",
    ),
    "prune": (
        "db-backup prune curation alpha --dry-run",
        "db-backup prune curation alpha",
    ),
    "report": (
        "db-backup report results/",
        "db-backup report results/ --drills --target curation/production",
    ),
    "workflows": (
        "db-backup workflows",
        "db-backup workflows --check",
        "db-backup workflows --dir .github/workflows --check",
    ),
}


def epilog(name: str) -> str | None:
    """The examples block of one command, as rich markup; None when it has none."""
    lines = EXAMPLES.get(name)
    if not lines:
        return None
    # The leading newline keeps the indent: typer dedents all lines after the first by their common margin.
    return "\nExamples:\n" + "\n".join(f"  {_escaped(line)}" for line in lines)


def _escaped(line: str) -> str:
    """`line` as rich markup; rich is imported only for a line that could read as markup (every command's
    examples are attached at start-up, and rich costs more to import than the rest of --help)."""
    if "[" not in line:
        return line
    from rich.markup import escape

    return escape(line)


def registered_names(app: typer.Typer) -> list[str]:
    """The names of the commands registered on the app, as the command line spells them."""
    return [info.name or get_command_name(info.callback.__name__) for info in app.registered_commands if info.callback]


def attach(app: typer.Typer) -> None:
    """Give each registered command its examples, shown by `db-backup COMMAND --help`."""
    for info in app.registered_commands:
        if info.callback is None:
            continue
        text = epilog(info.name or get_command_name(info.callback.__name__))
        if text is not None and not info.epilog:
            info.epilog = text
