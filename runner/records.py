"""Records kept beside a backup after it was written: verifications, restore drills, acknowledgements.

Each is its own object (`{id}.dump.verify.json`, `.drill.json`, `.ack.json`), so the manifest, the
backup's promise, is never rewritten; a newer record of the same kind replaces the older one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

from pydantic import AwareDatetime, ConfigDict, Field, TypeAdapter, ValidationError, with_config

from .errors import TaggingDenied
from .retention import PINNED_FROM_TAG, TIER_TAG

if TYPE_CHECKING:
    from .stores import BackupStore

log = logging.getLogger(__name__)

Kind = Literal["verify", "drill", "ack", "pin"]
# Records are advice read back from storage: an odd one (no time zone, NaN) counts as no record.
_CONFIG = ConfigDict(extra="ignore", allow_inf_nan=False)
Seconds = Annotated[float, Field(ge=0)]


@with_config(_CONFIG)
@dataclass(frozen=True)
class VerifyRecord:
    """What `db-backup verify` found when it read the stored backup through."""

    backup_id: str
    checked_at: AwareDatetime
    ok: bool
    problem: str | None  # the first thing wrong, in words; None when ok
    checks: tuple[str, ...]  # what was checked, in order, e.g. "sha256", "archive read to its end"
    duration_s: Seconds
    tool_version: str = ""
    sha256: str | None = None  # of the stored bytes as read; None when they were not read
    size_bytes: int | None = None
    toc_entries: int | None = None  # what pg_restore -l listed
    tables_with_data: int | None = None
    pg_restore_version: str = ""


@with_config(_CONFIG)
@dataclass(frozen=True)
class DrillRecord:
    """What a restore drill into a throwaway server (or --to-url) found."""

    backup_id: str
    checked_at: AwareDatetime
    ok: bool
    problem: str | None
    restore_duration_s: Seconds  # the recovery time an operator can plan with
    server: str  # "throwaway cluster (PostgreSQL 17.2)" or the described --to-url
    tables: dict[str, int] = field(default_factory=dict)  # rows per table, as the archive held them
    restored_tables: dict[str, int] = field(default_factory=dict)  # rows per table after the restore
    missing_extensions: tuple[str, ...] = ()
    database_bytes: int | None = None  # pg_database_size of the restored database
    tool_version: str = ""


@with_config(_CONFIG)
@dataclass(frozen=True)
class AckRecord:
    """Someone looked at a backup the shrink alarm flagged and said it is right."""

    backup_id: str
    acknowledged_at: AwareDatetime
    by: str
    reason: str = ""


@with_config(_CONFIG)
@dataclass(frozen=True)
class PinRecord:
    """Someone pinned (or unpinned) a backup: while pinned, no retention rule or prune removes it."""

    backup_id: str
    pinned: bool
    changed_at: AwareDatetime
    by: str
    reason: str = ""
    tier_before: str | None = None  # the tier it had before the pin, given back by unpin


Record = VerifyRecord | DrillRecord | AckRecord | PinRecord
R = TypeVar("R", VerifyRecord, DrillRecord, AckRecord, PinRecord)

_TYPES: dict[Kind, type[Record]] = {"verify": VerifyRecord, "drill": DrillRecord, "ack": AckRecord, "pin": PinRecord}


def check_failed(verify: VerifyRecord | None, drill: DrillRecord | None) -> bool:
    """A verify or drill record says the backup failed its check."""
    return (verify is not None and not verify.ok) or (drill is not None and not drill.ok)


def record_key(dump_key: str, kind: Kind) -> str:
    return f"{dump_key}.{kind}.json"


def to_json(record: Record) -> str:
    def stamp(value: object) -> object:
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value

    return json.dumps({k: stamp(v) for k, v in asdict(record).items()}, indent=2, sort_keys=True) + "\n"


def record_tags(store: BackupStore, dump_key: str) -> dict[str, str]:
    """The retention tags a new record must carry: its dump's, so the two expire together."""
    try:
        tags = store.get_tags(dump_key)
    except Exception as exc:  # a record is advice: written untagged (kept longer) rather than not at all
        log.warning("could not read the retention tags of %s (%s); the record is written untagged", store.uri(dump_key), exc)
        return {}
    return {k: v for k, v in tags.items() if k in (TIER_TAG, PINNED_FROM_TAG)}


def put_record(store: BackupStore, dump_key: str, record: Record, tags: dict[str, str] | None = None) -> str:
    """Write (or replace) the record beside the dump, with the dump's retention tags unless given; its key."""
    kind = next(k for k, t in _TYPES.items() if isinstance(record, t))
    key = record_key(dump_key, kind)
    chosen = record_tags(store, dump_key) if tags is None else tags
    try:
        store.put_text(key, to_json(record), chosen)
    except TaggingDenied as exc:
        if tags is not None:
            raise  # the tags are the point of this write (a pin)
        # Untagged, the record outlives its backup; better than no record at all.
        log.warning("%s; writing the record without its retention tags", exc)
        store.put_text(key, to_json(record), {})
    return key


def read_record(store: BackupStore, dump_key: str, cls: type[R]) -> R | None:
    """The record of that kind, or None when there is none or it cannot be read (never fatal: it is advice)."""
    kind = next(k for k, t in _TYPES.items() if t is cls)
    try:
        text = store.read_text(record_key(dump_key, kind))
    except UnicodeDecodeError:
        return None
    if text is None:
        return None
    try:
        return TypeAdapter(cls).validate_json(text)
    except (ValidationError, ValueError):
        return None
