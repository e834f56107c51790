"""One Markdown table of a drill run (`db-backup report RESULTS_DIR --drills`): each target's drill
result with the restore duration and row count its drill record holds.

drill.yml's jobs leave one result file each (the db-backup action's `result-file`); the record
itself is read from the store beside the drilled backup. A target without a result file counts as
failed; a record that cannot be read leaves its cells "unknown" (the job's result still counts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .catalog import list_backups
from .errors import BadInput
from .output import human_duration
from .records import DrillRecord, read_record
from .report import NO_RESULT, Failing, Outcome, Rendered, Row, links_cell, md_cell, read_results
from .report_facts import DRILL_LOOKBACK, UNKNOWN
from .targets import Registry, Target
from .words import plural

if TYPE_CHECKING:
    from .stores import BackupStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Drilled:
    """What the store says about a target's drill: the record, or why it is unknown."""

    record: DrillRecord | None
    note: str = "-"  # shown when there is no record: "-" (none found) or "unknown"


def find_record(store: BackupStore, target: Target, backup_id: str | None) -> DrillRecord | None:
    """The drill record of that backup; without an id, the newest record among the newest backups."""
    if backup_id:
        return read_record(store, store.key(target.identifier, target.env, backup_id), DrillRecord)
    records = [r for e in list_backups(store, target.identifier, target.env, limit=DRILL_LOOKBACK)
               if (r := read_record(store, e.key, DrillRecord)) is not None]
    return max(records, key=lambda r: r.checked_at, default=None)


def _drilled(registry: Registry, stores: Callable[[Target], BackupStore], row: Row) -> Drilled:
    try:
        target = registry.get(row.identifier, row.env)
        return Drilled(find_record(stores(target), target, row.backup_id))
    except Exception as exc:  # advice: an unreadable record must not hide the other targets' results
        log.warning("%s/%s: cannot read the drill record (%s)", row.identifier, row.env, exc)
        return Drilled(None, UNKNOWN)


def _rows_count(record: DrillRecord) -> str:
    counts = record.restored_tables or record.tables
    if not counts:
        return "-"
    return f"{sum(counts.values()):,} in {plural(len(counts), 'table')}"


def expected_targets(registry: Registry, named: Sequence[str], schedule: str) -> list[tuple[str, str]]:
    """IDENT/ENV names given (a dispatched drill), else every target of the schedule."""
    if not named:
        return [(t.identifier, t.env) for t in registry.scheduled(schedule)]
    wanted = []
    for name in named:
        identifier, slash, env = name.partition("/")
        if not slash or not identifier or not env:
            raise BadInput(f"--target {name!r} is not IDENT/ENV")
        wanted.append((identifier, env))
    return wanted


def render_drills(registry: Registry, results_dir: Path, stores: Callable[[Target], BackupStore],
                  expected: list[tuple[str, str]]) -> tuple[str, bool]:
    """The Markdown summary of one drill run and whether every expected drill passed."""
    done = build_drills(registry, results_dir, stores, expected)
    return done.markdown, done.outcome.ok


def build_drills(registry: Registry, results_dir: Path, stores: Callable[[Target], BackupStore],
                 expected: list[tuple[str, str]]) -> Rendered:
    """The Markdown summary of one drill run and its outcome."""
    found, problems = read_results(results_dir)
    rows = [found.pop(key) if key in found else Row(
        identifier=key[0], env=key[1], result="missing", error=NO_RESULT,
    ) for key in expected]
    rows.extend(found[key] for key in sorted(found))
    failed = [r for r in rows if not r.ok]
    lines = [
        f"## Restore drills: {len(rows) - len(failed)} of {len(rows)} passed",
        "",
        "| Target | Backup | Result | Restore duration | Rows | Links |",
        "|---|---|---|---|---|---|",
    ]
    failing: list[Failing] = []
    for r in rows:
        drilled = _drilled(registry, stores, r) if r.result != "missing" else Drilled(None)
        record = drilled.record
        backup = r.backup_id or (record.backup_id if record else "-")
        mark = "✅ passed" if r.ok else f"❌ {'failed' if r.result == 'failure' else r.result}"
        duration = human_duration(record.restore_duration_s) if record else drilled.note
        count = _rows_count(record) if record else drilled.note
        lines.append(f"| {md_cell(f'{r.identifier}/{r.env}')} | {md_cell(backup)} | {mark} | {duration} | {count} | {links_cell(r)} |")
        if not r.ok:
            why = (record.problem if record and not record.ok else None) or r.error or "failed; see the job log"
            failing.append(Failing(r.name, r.result, why))
    if failing:
        lines += ["", "### Failures", "", *[f"- **{f.target}**: {md_cell(f.reason)}" for f in failing]]
    if problems:
        lines += ["", "### Unreadable results", "", *[f"- {md_cell(p)}" for p in problems]]
    if not rows:
        lines += ["", "No target to drill."]
    outcome = Outcome("drill", len(rows), tuple(failing), tuple(problems))
    return Rendered("\n".join(lines) + "\n", outcome)
