"""The shrink alarm: a backup much smaller than the median of the good backups before it, and its acknowledgement.

A dump of an emptied database is complete and restorable, and still the wrong backup to keep: this
is the check that notices it. It judges only with at least MIN_PREVIOUS earlier good backups, since
the median of one or two nights is noise, and an acknowledged backup starts a new baseline (the
sizes before it no longer count), so a database that was shrunk on purpose does not fire again.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from .output import human_size
from .records import AckRecord, put_record
from .words import plural

if TYPE_CHECKING:
    from .catalog import BackupEntry
    from .stores import BackupStore

log = logging.getLogger(__name__)

MIN_PREVIOUS = 3
DEFAULT_THRESHOLD = 0.5
DEFAULT_WINDOW = 7

Measure = Literal["uncompressed", "stored"]


@dataclass(frozen=True)
class ShrinkPolicy:
    """Alarm when a backup is below `threshold` times the median of the previous `window` good backups; 0 turns it off."""

    threshold: float = DEFAULT_THRESHOLD
    window: int = DEFAULT_WINDOW

    @property
    def enabled(self) -> bool:
        return self.threshold > 0

    @property
    def scan(self) -> int:
        """How many backups to list to find `window` good ones before the newest, damaged ones in between."""
        return 2 * self.window + 1


DEFAULT_SHRINK_POLICY = ShrinkPolicy()


@dataclass(frozen=True)
class ShrinkVerdict:
    """One backup's size against the median of the good backups before it."""

    backup_id: str
    size: int
    measure: Measure  # what was compared: pg_dump's output when every backup knows it, else the stored bytes
    median: float | None  # None: no previous good backup
    previous: int  # how many previous good backups the median is of
    policy: ShrinkPolicy

    @property
    def judged(self) -> bool:
        return self.policy.enabled and self.previous >= MIN_PREVIOUS and self.median is not None

    @property
    def shrunk(self) -> bool:
        return self.judged and self.median is not None and self.size < self.policy.threshold * self.median

    @property
    def change(self) -> float | None:
        """-0.62 for a backup 62% below the median; None without a median."""
        return self.size / self.median - 1 if self.median else None


def good(entry: BackupEntry) -> bool:
    """A backup whose manifest and dump agree: the ones a trend is made of."""
    return entry.complete


def measured_size(entry: BackupEntry, measure: Measure) -> int:
    manifest = entry.manifest
    if measure == "uncompressed" and manifest is not None and manifest.uncompressed_bytes is not None:
        return manifest.uncompressed_bytes
    return entry.size_bytes


def measure_of(entries: Sequence[BackupEntry]) -> Measure:
    """Uncompressed when every one knows it (zstd and none do, gzip not): sizes are compared like with like."""
    known = all(e.manifest is not None and e.manifest.uncompressed_bytes is not None for e in entries)
    return "uncompressed" if known else "stored"


def baseline(older: Sequence[BackupEntry], policy: ShrinkPolicy, acknowledged: Callable[[BackupEntry], bool]) -> list[BackupEntry]:
    """The previous good backups the median is taken of, newest first: at most `window`, none older than an acknowledged one."""
    chosen: list[BackupEntry] = []
    for entry in older:
        if len(chosen) >= policy.window:
            break
        if not good(entry):
            continue
        chosen.append(entry)
        if acknowledged(entry):  # the new normal starts here
            break
    return chosen


def judge(entry: BackupEntry, older: Sequence[BackupEntry], policy: ShrinkPolicy,
          acknowledged: Callable[[BackupEntry], bool] = lambda _e: False) -> ShrinkVerdict:
    """`entry` against the good backups in `older` (the backups before it, newest first)."""
    previous = baseline(older, policy, acknowledged)
    measure = measure_of([entry, *previous])
    sizes = [measured_size(e, measure) for e in previous]
    median = float(statistics.median(sizes)) if sizes else None
    return ShrinkVerdict(entry.id, measured_size(entry, measure), measure, median, len(previous), policy)


def describe(verdict: ShrinkVerdict, target_name: str) -> str:
    """The alarm in words, with the command that silences it."""
    identifier, env = target_name.split("/", 1)
    median = verdict.median or 0.0
    return (f"{target_name}: backup {verdict.backup_id} shrank to {human_size(verdict.size)} ({verdict.measure}), "
            f"{_share(verdict.size, median)} of the median {human_size(round(median))} of the {plural(verdict.previous, 'good backup')} "
            f"before it (alarm below {verdict.policy.threshold:.0%}); if this is expected, run "
            f"`db-backup ack {identifier} {env} {verdict.backup_id}`")


def _share(size: int, median: float) -> str:
    share = size / median if median else 0.0
    return "<1%" if 0 < share < 0.01 else f"{share:.0%}"


def acknowledge(store: BackupStore, entry: BackupEntry, by: str, reason: str, now: datetime) -> AckRecord:
    """Write the acknowledgement beside the backup; `status` stops failing on its shrink."""
    record = AckRecord(backup_id=entry.id, acknowledged_at=now, by=by, reason=reason)
    key = put_record(store, entry.key, record)
    log.info("acknowledged backup %s (%s) as %s", entry.id, store.uri(key), by)
    return record
