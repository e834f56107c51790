"""Commands that check backups and report on them: verify, status, history, ack, and the workflows' reports."""

from __future__ import annotations

import difflib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import output
from .cli_app import app, state_of, stored, who
from .durations import parse_duration
from .errors import JobFailed
from .notify import Notify
from .words import plural

if TYPE_CHECKING:
    from .targets import Registry

log = logging.getLogger(__name__)


@app.command()
def verify(
    ctx: typer.Context, identifier: str, env: str,
    backup_id: Annotated[str, typer.Option("--backup", help="latest, a backup id, or all.")] = "latest",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Read stored backups through to their end and check their sha256; exit 1 if any is bad. Needs no database."""
    from .verify import verify_backups

    state = state_of(ctx)
    target = state.registry().get(identifier, env)
    results = verify_backups(target, state.services(), backup_id)
    if as_json:
        output.echo_json([r.to_json() for r in results])
    else:
        for result in results:
            typer.echo(result.line())
    bad = [r.record.backup_id for r in results if not r.record.ok]
    if bad:
        raise JobFailed(f"{len(bad)} of {plural(len(results), 'backup')} of {target.name} failed verification: {', '.join(bad)}")


# --- workflow commands ------------------------------------------------------------------------


def _differences(registry: Registry, directory: Path, names: list[str]) -> str:
    """A unified diff per workflow file: as it is, and as `db-backup workflows` would write it."""
    from .workflow_options import desired_options, rewrite

    wanted = desired_options(registry)
    out: list[str] = []
    for name in names:
        path = directory / name
        text = path.read_text(encoding="utf-8")
        new = rewrite(text, wanted, str(path))
        out += difflib.unified_diff(text.splitlines(keepends=True), new.splitlines(keepends=True),
                                    fromfile=f"{path} (now)", tofile=f"{path} (from targets.yaml)")
    # A file without a final newline would otherwise run into the next line of the diff.
    return "".join(line if line.endswith("\n") else line + "\n" for line in out)


@app.command()
def workflows(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="Folder of the workflow files.")] = Path(".github/workflows"),
    check: Annotated[bool, typer.Option("--check", help="Only report differences; exit 1 if any.")] = False,
) -> None:
    """Rewrite the dispatch workflows' dropdown options from targets.yaml (or --check them)."""
    from .workflow_options import sync

    registry = state_of(ctx).registry()
    changed = sync(registry, directory, check=check)
    if check and changed:
        typer.echo(_differences(registry, directory, changed), nl=False)
        raise JobFailed(f"dropdown options differ from targets.yaml in {', '.join(changed)}; run `db-backup workflows`")
    typer.echo("\n".join(f"updated {name}" for name in changed) if changed else "workflow options match targets.yaml")


@app.command()
def report(
    ctx: typer.Context,
    results: Annotated[Path, typer.Argument(help="Folder of per-target result files.")],
    drills: Annotated[bool, typer.Option("--drills", help="The results are restore drills (drill.yml), not backups.")] = False,
    target: Annotated[list[str] | None, typer.Option("--target", help="IDENT/ENV expected (repeatable); default: nightly targets.")] = None,
    notify: Annotated[Notify | None, typer.Option(
        "--notify", help="When the alerts webhook gets a message: failures or always; default: alerts.notify in targets.yaml.")] = None,
    max_age: Annotated[str, typer.Option(
        "--max-age", help="Alerts call a nightly target stale without a good backup newer than this, as `status` does.")] = "26h",
) -> None:
    """One summary table of a scheduled run's per-target results; exit 1 if any target failed. Then the alerts."""
    from .alerts import deliver, stale_targets
    from .drill_report import build_drills, expected_targets
    from .report import SCHEDULE, build
    from .settings import GithubEnv

    state = state_of(ctx)
    limit = parse_duration(max_age)
    services = state.services()
    registry = state.registry()
    if drills:
        done = build_drills(registry, results, services.store, expected_targets(registry, target or [], SCHEDULE))
    else:
        done = build(registry, results, services.store, services.clock.now())
    gh = GithubEnv()
    if gh.step_summary:
        with gh.step_summary.open("a", encoding="utf-8") as handle:
            handle.write(done.markdown)
    typer.echo(done.markdown)
    deliver(done.outcome, registry.alerts, gh, notify,
            stale=None if drills else (lambda: stale_targets(registry, services, limit)))
    if not done.outcome.ok:
        raise JobFailed(f"at least one {'drill' if drills else 'scheduled backup'} failed; see the table above")


@app.command()
def status(
    ctx: typer.Context,
    max_age: Annotated[str, typer.Option("--max-age", help="Oldest acceptable newest backup, e.g. 26h.")] = "26h",
    as_json: Annotated[bool, typer.Option("--json")] = False,
    schedule: Annotated[str, typer.Option(help="Which schedule's targets to check.")] = "nightly",
    max_drill_age: Annotated[str | None, typer.Option("--max-drill-age", help="Fail when the last drill is older, e.g. 8d.")] = None,
) -> None:
    """Each scheduled target's newest good backup: age, size against its trend, last verify and drill; exit 1 on any problem."""
    from . import github
    from .settings import GithubEnv
    from .status import failure as status_failure
    from .status import target_statuses

    state = state_of(ctx)
    limit = parse_duration(max_age)
    drill_limit = parse_duration(max_drill_age) if max_drill_age else None
    results = target_statuses(state.registry(), state.services(), limit, schedule, drill_limit)
    rows = [output.status_to_json(r) for r in results]
    for r in results:
        for d in r.damaged:
            judged = f"judged by {r.newest.id}" if r.newest else "no good backup"
            log.warning("%s: backup %s is damaged (%s); %s", r.target.name, d.id, d.problem, judged)
    if as_json:
        output.echo_json(rows)
    else:
        output.table([output.status_row(r) for r in rows], output.STATUS_HEADER)
    # With --json, stdout is the JSON a script reads: the annotations go to stderr, which GitHub reads too.
    github.publish_status(output.status_markdown(rows), [p for r in results for p in r.problems], GithubEnv(),
                          out=sys.stderr if as_json else None)
    failed = status_failure(results, max_age)
    if failed is not None:
        raise failed


@app.command()
def history(
    ctx: typer.Context, identifier: str, env: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Show at most N backups.")] = 20,
) -> None:
    """Backups of one target, newest first: sizes, rates, verify and drill results, and the trend of sizes."""
    from .history import load_history

    state = state_of(ctx)
    target = state.registry().get(identifier, env)
    store = state.services().store(target)
    found = load_history(store, identifier, env, target.shrink_alarm, limit)
    if as_json:
        output.echo_json(output.history_to_json(target, found))
        return
    if not found.rows:
        typer.echo(f"no backups for {target.name} in {store.url}")
        return
    output.table([output.history_row(r) for r in found.rows], output.HISTORY_HEADER)
    typer.echo(output.trend_line(found))


@app.command()
def ack(
    ctx: typer.Context, identifier: str, env: str,
    backup_id: Annotated[str, typer.Argument(metavar="ID", help="The backup the shrink alarm named (or latest).")],
    reason: Annotated[str, typer.Option(help="Why its size is right, kept with the acknowledgement.")] = "",
) -> None:
    """Acknowledge a backup the shrink alarm flagged: `status` stops failing on it, and it starts a new baseline."""
    from .catalog import resolve_backup
    from .shrink import acknowledge

    target, services, store = stored(ctx, identifier, env)
    entry = resolve_backup(store, identifier, env, backup_id)
    record = acknowledge(store, entry, who(), reason, services.clock.now())
    typer.echo(f"acknowledged backup {record.backup_id} of {target.name} as {record.by}")


