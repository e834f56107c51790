"""One Markdown table of a scheduled run's per-target results (`db-backup report RESULTS_DIR`).

Each matrix job of scheduled-backups.yml writes one JSON file (the db-backup action's
`result-file`, see actions/db-backup/result.py) and uploads it as an artifact; the report job
downloads them all into one folder. A scheduled target without a result file counts as failed:
its job never reported (it was cancelled, timed out, or never started). Above the table: the run's
date and totals; per target also the new backup's dump (original size, ratio, rate, the dump's own
duration, from its manifest), its size against its trend and the last drill, read
from the store (runner/report_facts.py), "unknown" where the store cannot be read. Beside the
Markdown, an Outcome: which targets failed and why, in plain words, for the alerts (runner/alerts.py).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DbBackupError
from .github import task_url
from .output import human_duration, human_size
from .report_facts import UNKNOWN, TargetFacts, target_facts
from .targets import Registry, Target
from .words import plural

if TYPE_CHECKING:
    from .stores import BackupStore

OpenStore = Callable[[Target], "BackupStore"]

log = logging.getLogger(__name__)

SCHEDULE = "nightly"
NO_RESULT = "no result: the job did not report (cancelled, timed out or never started)"


@dataclass(frozen=True)
class Row:
    identifier: str
    env: str
    result: str
    backup_id: str | None = None
    size_bytes: int | None = None
    duration_s: float | None = None
    logs_url: str | None = None
    task_url: str | None = None
    run_url: str | None = None
    error: str | None = None
    finished_at: float | None = None  # epoch seconds

    @property
    def ok(self) -> bool:
        return self.result == "success"

    @property
    def name(self) -> str:
        return f"{self.identifier}/{self.env}"


@dataclass(frozen=True)
class Failing:
    """One target that needs a person, in plain words (no Markdown): what an alert says about it."""

    target: str  # IDENT/ENV
    result: str  # failure, missing, cancelled, timed-out, ... or stale
    reason: str  # the sanitised error line the report shows


@dataclass(frozen=True)
class Outcome:
    """What a report found, for the alerts: how many targets, which failed and why."""

    report: str  # "nightly" or "drill"
    targets: int
    failing: tuple[Failing, ...] = ()
    problems: tuple[str, ...] = ()  # result files that could not be read

    @property
    def ok(self) -> bool:
        return not self.failing and not self.problems


@dataclass(frozen=True)
class Rendered:
    markdown: str
    outcome: Outcome


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _number(value: Any) -> float | None:
    """A finite, non-negative number from a result file; anything else is unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def task_console_url(task_arn: str) -> str | None:
    """The ECS console page of a task, from arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID."""
    parts = task_arn.split(":", 5)
    if len(parts) != 6 or parts[2] != "ecs":
        return None
    region, resource = parts[3], parts[5]
    pieces = resource.split("/")
    if len(pieces) != 3 or pieces[0] != "task":
        return None
    _, cluster, task_id = pieces
    return task_url(region, cluster, task_id)


def _row(data: dict[str, Any], where: Path) -> Row | None:
    identifier, env = _text(data.get("identifier")), _text(data.get("env"))
    if identifier is None or env is None:
        log.warning("%s has no identifier/env; ignored", where)
        return None
    task_arn = _text(data.get("task_arn"))
    size = _number(data.get("size_bytes"))
    return Row(
        identifier=identifier,
        env=env,
        result=_text(data.get("result")) or "failure",
        backup_id=_text(data.get("backup_id")),
        size_bytes=int(size) if size is not None else None,
        duration_s=_number(data.get("duration_s")),
        logs_url=_text(data.get("logs_url")),
        task_url=task_console_url(task_arn) if task_arn else None,
        run_url=_text(data.get("run_url")),
        error=_text(data.get("error")),
        finished_at=_number(data.get("finished_at")),
    )


def read_results(results_dir: Path) -> tuple[dict[tuple[str, str], Row], list[str]]:
    """Every result file under the folder (any depth), keyed by (identifier, env); and problems."""
    rows: dict[tuple[str, str], Row] = {}
    problems: list[str] = []
    if not results_dir.is_dir():
        return rows, [f"no results folder {results_dir}"]
    for path in sorted(results_dir.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.append(f"{path.name} is not readable JSON ({exc})")
            continue
        if not isinstance(data, dict):
            problems.append(f"{path.name} is not a JSON object")
            continue
        row = _row(data, path)
        if row is None:
            problems.append(f"{path.name} names no target")
            continue
        rows[(row.identifier, row.env)] = row
    return rows, problems


def _size(size: int | None) -> str:
    return "-" if size is None else human_size(size)


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else human_duration(seconds)


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def links_cell(row: Row) -> str:
    links = [f"[{label}]({url})" for label, url in
             (("logs", row.logs_url), ("task", row.task_url), ("job", row.run_url)) if url]
    return " · ".join(links) or "-"


def _facts(registry: Registry, stores: OpenStore, row: Row, now: datetime) -> TargetFacts:
    try:
        target = registry.get(row.identifier, row.env)
    except DbBackupError:  # a result for a target no longer in targets.yaml
        return TargetFacts(UNKNOWN, UNKNOWN, dump=UNKNOWN)
    return target_facts(lambda: stores(target), target, row.backup_id if row.ok else None, now)


def _started(rows: list[Row], now: datetime) -> datetime:
    """When the run began: the earliest job start its results tell, else now."""
    starts = [r.finished_at - (r.duration_s or 0) for r in rows if r.finished_at is not None]
    return datetime.fromtimestamp(min(starts), UTC) if starts else now


def _totals(rows: list[Row], now: datetime) -> str:
    size = sum(r.size_bytes or 0 for r in rows if r.ok)
    duration = sum(r.duration_s or 0 for r in rows)
    return (f"Run of {_started(rows, now):%Y-%m-%d %H:%M} UTC · {plural(len(rows), 'target')} · "
            f"{human_size(size)} written · {human_duration(duration)} of backup time")


def render(registry: Registry, results_dir: Path, stores: OpenStore, now: datetime) -> tuple[str, bool]:
    """The Markdown summary of one scheduled run and whether every scheduled target succeeded."""
    done = build(registry, results_dir, stores, now)
    return done.markdown, done.outcome.ok


def build(registry: Registry, results_dir: Path, stores: OpenStore, now: datetime) -> Rendered:
    """The Markdown summary of one scheduled run and its outcome."""
    found, problems = read_results(results_dir)
    expected = [(t.identifier, t.env) for t in registry.scheduled(SCHEDULE)]
    rows: list[Row] = []
    for key in expected:
        rows.append(found.pop(key) if key in found else Row(
            identifier=key[0], env=key[1], result="missing", error=NO_RESULT,
        ))
    # Results for targets no longer scheduled still show up (and count), at the end.
    rows.extend(found[key] for key in sorted(found))
    failed = [r for r in rows if not r.ok]
    lines = [
        f"## Nightly backups: {len(rows) - len(failed)} of {len(rows)} succeeded",
        "",
        _totals(rows, now),
        "",
        "| Target | Result | Backup | Size | Dump | Trend | Duration | Last drill | Links |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = "✅ success" if r.ok else f"❌ {r.result}"
        facts = _facts(registry, stores, r, now)
        lines.append(
            f"| {md_cell(f'{r.identifier}/{r.env}')} | {md_cell(mark)} | {md_cell(r.backup_id or '-')} | "
            f"{_size(r.size_bytes)} | {md_cell(facts.dump)} | {md_cell(facts.trend)} | {_duration(r.duration_s)} | "
            f"{md_cell(facts.last_drill)} | "
            f"{links_cell(r)} |"
        )
    failing = [Failing(r.name, r.result, r.error or "failed; see the job log") for r in failed]
    if failing:
        lines += ["", "### Failures", ""]
        lines += [f"- **{f.target}**: {md_cell(f.reason)}" for f in failing]
    if problems:
        lines += ["", "### Unreadable results", ""]
        lines += [f"- {md_cell(p)}" for p in problems]
    if not rows:
        lines += ["", f"No target in {registry.path} has schedule: {SCHEDULE}."]
    outcome = Outcome("nightly", len(rows), tuple(failing), tuple(problems))
    return Rendered("\n".join(lines) + "\n", outcome)
