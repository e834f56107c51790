"""Pinning a backup so that no retention rule or prune removes it, and giving it back its tier."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from .errors import BadInput
from .keeping import decided_tier
from .records import PinRecord, put_record, read_record
from .retention import PINNED_FROM_TAG, TIER_TAG, TIER_VALUES, RetentionPolicy, Tier
from .tiering import retag, tag_key, tag_tier

if TYPE_CHECKING:
    from .catalog import BackupEntry
    from .stores import BackupStore

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class PinChange:
    record: PinRecord
    objects: int  # how many objects were retagged (0 in a folder: prune reads the record)
    was_pinned: bool


def pin(store: BackupStore, entry: BackupEntry, by: str, reason: str, now: datetime, policy: RetentionPolicy) -> PinChange:
    """Tag every object of the backup `pinned` (keeping its tier for unpin), then record who and why.

    A backup written before tiers existed has none to keep: it gets the one `retention --retag`
    would give it, so unpinning never guesses.
    """
    if entry.manifest is None or entry.problem is not None:
        raise BadInput(f"backup {entry.id} is {entry.status}; only a complete backup can be pinned")
    if len(reason) > MAX_REASON_CHARS:
        raise BadInput(f"--reason is {len(reason)} characters; keep it under {MAX_REASON_CHARS}")
    tags = store.get_tags(tag_key(entry))
    current = tag_tier(tags)
    previous = _pinned_record(store, entry)
    was_pinned = current is Tier.PINNED or previous is not None
    if current is Tier.PINNED:
        before = tags.get(PINNED_FROM_TAG) or (previous.tier_before if previous else None)
    else:
        before = current.value if current else None
    if before not in TIER_VALUES - {Tier.PINNED.value}:
        before = decided_tier(store, entry.manifest.identifier, entry.manifest.env, entry.id, policy).value
    new_tags = {TIER_TAG: Tier.PINNED.value, PINNED_FROM_TAG: before}
    # Tags first: a pin that is recorded but not enforced would be a lie; the reverse only hides the reason.
    objects = retag(store, entry.key, new_tags, longer=True) if store.expires_itself else []
    record = PinRecord(backup_id=entry.id, pinned=True, changed_at=now, by=by, reason=reason,
                       tier_before=before if store.expires_itself else None)
    put_record(store, entry.key, record, new_tags if store.expires_itself else {})
    log.info("pinned backup %s as %s", entry.id, by)
    return PinChange(record, len(objects), was_pinned)


def unpin(store: BackupStore, entry: BackupEntry, by: str, now: datetime, policy: RetentionPolicy) -> PinChange:
    """Record the unpin, then give every object back the tier it had before the pin."""
    tags = store.get_tags(tag_key(entry))
    previous = _pinned_record(store, entry)
    if tag_tier(tags) is not Tier.PINNED and previous is None:
        raise BadInput(f"backup {entry.id} is not pinned; nothing to do")
    before = tags.get(PINNED_FROM_TAG) or (previous.tier_before if previous else None)
    if before not in TIER_VALUES - {Tier.PINNED.value} and entry.manifest is not None:
        # As backup time would have decided, never a default.
        before = decided_tier(store, entry.manifest.identifier, entry.manifest.env, entry.id, policy).value
    new_tags = {TIER_TAG: before or Tier.DAILY.value}
    enforced = store.expires_itself
    # Record first: a backup shown unpinned but still kept is harmless; shown pinned but expiring is not.
    record = PinRecord(backup_id=entry.id, pinned=False, changed_at=now, by=by, reason="",
                       tier_before=before if enforced else None)
    put_record(store, entry.key, record, new_tags if enforced else {})
    objects = retag(store, entry.key, new_tags, longer=False) if enforced else []
    log.info("unpinned backup %s as %s; its tier is %s again", entry.id, by, before)
    return PinChange(record, len(objects), True)


def _pinned_record(store: BackupStore, entry: BackupEntry) -> PinRecord | None:
    record = read_record(store, entry.key, PinRecord)
    return record if record is not None and record.pinned and record.backup_id == entry.id else None
