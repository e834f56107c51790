"""A target's backups over time: sizes, rates, verify and drill results, shrink verdicts, and the sparkline of sizes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .catalog import BackupEntry, list_backups
from .records import AckRecord, DrillRecord, Kind, PinRecord, R, VerifyRecord, read_record, record_key
from .shrink import Measure, ShrinkPolicy, ShrinkVerdict, good, judge, measure_of, measured_size

if TYPE_CHECKING:
    from .stores import BackupStore

BARS = "▁▂▃▄▅▆▇█"
GAP = "·"  # a damaged backup: no size worth drawing
_KINDS: dict[type, Kind] = {VerifyRecord: "verify", DrillRecord: "drill", AckRecord: "ack", PinRecord: "pin"}


@dataclass(frozen=True)
class RecordIndex:
    """Which records exist beside a target's backups, from one listing, so only existing ones are read."""

    store: BackupStore
    keys: frozenset[str]

    @staticmethod
    def of(store: BackupStore, identifier: str, env: str) -> RecordIndex:
        folder = store.key(identifier, env, "x").rsplit("/", 1)[0] + "/"
        return RecordIndex(store, frozenset(key for key, _size in store.list_keys(folder) if key.endswith(".json")))

    def has(self, entry: BackupEntry, kind: Kind) -> bool:
        return record_key(entry.key, kind) in self.keys

    def read(self, entry: BackupEntry, cls: type[R]) -> R | None:
        return read_record(self.store, entry.key, cls) if self.has(entry, _KINDS[cls]) else None

    def pin(self, entry: BackupEntry) -> PinRecord | None:
        """The backup's pin when it is pinned now; None otherwise."""
        pin = self.read(entry, PinRecord)
        return pin if pin is not None and pin.pinned and pin.backup_id == entry.id else None

    def acknowledged(self, entry: BackupEntry) -> bool:
        """A readable acknowledgement of this very backup: what silences its alarm and starts a new baseline."""
        ack = self.read(entry, AckRecord)
        return ack is not None and ack.backup_id == entry.id


def sparkline(values: Sequence[int | None]) -> str:
    """One bar per value, scaled from 0 to the largest, so an emptied database reads as a drop to ▁."""
    top = max((v for v in values if v is not None), default=0)
    bars = []
    for value in values:
        if value is None:
            bars.append(GAP)
        elif top <= 0:
            bars.append(BARS[0])
        else:
            bars.append(BARS[min(len(BARS) - 1, round(value / top * (len(BARS) - 1)))])
    return "".join(bars)


@dataclass(frozen=True)
class HistoryRow:
    entry: BackupEntry
    verify: VerifyRecord | None
    drill: DrillRecord | None
    ack: AckRecord | None
    shrink: ShrinkVerdict | None  # None for damaged and legacy backups: they are not judged
    pin: PinRecord | None = None  # set while the backup is pinned

    @property
    def uncompressed_bytes(self) -> int | None:
        return self.entry.manifest.uncompressed_bytes if self.entry.manifest else None

    @property
    def duration_s(self) -> float | None:
        return self.entry.manifest.duration_s if self.entry.manifest else None

    @property
    def rate(self) -> float | None:
        """Bytes per second of pg_dump's output (the stored bytes when that is unknown)."""
        if not self.duration_s:
            return None
        return (self.uncompressed_bytes or self.entry.size_bytes) / self.duration_s


@dataclass(frozen=True)
class History:
    rows: tuple[HistoryRow, ...]  # newest first
    measure: Measure
    sizes: tuple[int | None, ...]  # oldest to newest, None for a damaged backup

    @property
    def sparkline(self) -> str:
        return sparkline(self.sizes)


def load_history(store: BackupStore, identifier: str, env: str, policy: ShrinkPolicy, limit: int) -> History:
    """The newest `limit` backups with their records; enough older ones are listed to judge each one's size."""
    entries = list_backups(store, identifier, env, limit=limit + policy.scan)
    index = RecordIndex.of(store, identifier, env)
    rows = []
    for position, entry in enumerate(entries[:limit]):
        verdict = judge(entry, entries[position + 1:], policy, index.acknowledged) if good(entry) else None
        rows.append(HistoryRow(entry, index.read(entry, VerifyRecord), index.read(entry, DrillRecord),
                               index.read(entry, AckRecord), verdict, index.pin(entry)))
    shown = [row.entry for row in rows]
    measure = measure_of([e for e in shown if good(e)])
    sizes = tuple(measured_size(e, measure) if e.problem is None else None for e in reversed(shown))
    return History(tuple(rows), measure, sizes)
