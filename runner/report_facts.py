"""What the store tells a run's report about one target: its new backup's size against the trend, its last drill.

Advice only: a store that cannot be read makes the cells "unknown", never a failed report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from .catalog import BackupEntry, list_backups
from .github import DumpFacts
from .output import change_words, human_age
from .records import AckRecord, DrillRecord, read_record
from .shrink import ShrinkPolicy, judge

if TYPE_CHECKING:
    from .stores import BackupStore
    from .targets import Target

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
DRILL_LOOKBACK = 10  # newest backups searched for a drill record (one read each)


@dataclass(frozen=True)
class TargetFacts:
    trend: str  # "+3% vs median of 7" (the target's shrink_alarm window), "first backup", "-" (no new backup), "unknown"
    last_drill: str  # "✅ passed 26h ago (ID)", "❌ failed ... : why", "never", "unknown"
    last_drill_ok: bool | None = None  # None: no drill found (or unknown)
    dump: str = "-"  # the new backup's own figures from its manifest: original size, ratio, rate, the dump's duration


def size_trend(store: BackupStore, entries: list[BackupEntry], backup_id: str | None, policy: ShrinkPolicy) -> str:
    """The new backup's size against the median of the good backups before it, as the shrink alarm sees it."""
    index = next((i for i, e in enumerate(entries) if e.id == backup_id), None) if backup_id else None
    if index is None:
        return "-"
    verdict = judge(entries[index], entries[index + 1:], policy,
                    lambda e: read_record(store, e.key, AckRecord) is not None)
    if verdict.median is None:
        return "first backup"
    if verdict.median <= 0:
        return "-"
    alarm = " ⚠️ shrink alarm" if verdict.shrunk else ""
    return f"{change_words(verdict.change)} of {verdict.previous}{alarm}"


def dump_words(entries: list[BackupEntry], backup_id: str | None) -> str:
    """The new backup's dump in one cell, from its manifest; "-" without one."""
    entry = next((e for e in entries if e.id == backup_id), None) if backup_id else None
    if entry is None or entry.manifest is None:
        return "-"
    return DumpFacts.of(entry.manifest).words()


def last_drill(store: BackupStore, entries: list[BackupEntry], now: datetime) -> tuple[str, bool | None]:
    """The newest drill record among the newest backups, in words, and whether it passed."""
    found: DrillRecord | None = None
    for entry in entries[:DRILL_LOOKBACK]:
        record = read_record(store, entry.key, DrillRecord)
        if record is not None and (found is None or record.checked_at > found.checked_at):
            found = record
    if found is None:
        return "never", None
    when = f"{human_age(now - found.checked_at)} ago ({found.backup_id})"
    if found.ok:
        return f"✅ passed {when}", True
    return f"❌ failed {when}: {found.problem or 'see the drill record'}", False


def target_facts(open_store: Callable[[], BackupStore], target: Target, backup_id: str | None, now: datetime) -> TargetFacts:
    """Trend and last drill of one target; "unknown" for whatever could not be read."""
    identifier, env = target.identifier, target.env
    try:
        store = open_store()
        entries = list_backups(store, identifier, env, limit=max(target.shrink_alarm.scan, DRILL_LOOKBACK))
    except Exception as exc:  # advice must never turn the report into a failure
        log.warning("%s/%s: cannot list backups for the report (%s)", identifier, env, exc)
        return TargetFacts(UNKNOWN, UNKNOWN, dump=UNKNOWN)
    try:
        trend = size_trend(store, entries, backup_id, target.shrink_alarm)
    except Exception as exc:  # same: an acknowledgement that cannot be read leaves the trend unknown
        log.warning("%s/%s: cannot read acknowledgements for the report (%s)", identifier, env, exc)
        trend = UNKNOWN
    try:
        drill, drill_ok = last_drill(store, entries, now)
    except Exception as exc:  # same: a record that cannot be read is unknown, not a failed report
        log.warning("%s/%s: cannot read drill records for the report (%s)", identifier, env, exc)
        drill, drill_ok = UNKNOWN, None
    return TargetFacts(trend, drill, drill_ok, dump_words(entries, backup_id))
