"""Retention on a store: the tier a new backup gets, the tags on all of a backup's objects, pins and promotions."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from .catalog import cheap_listing, judge, list_backups
from .records import DrillRecord, VerifyRecord, check_failed, read_record
from .retention import CALENDAR_TIERS, RANK, TIER_TAG, TIER_VALUES, RetentionPolicy, Tier, decide_tier, period

if TYPE_CHECKING:
    from .catalog import BackupEntry
    from .stores import BackupStore

log = logging.getLogger(__name__)


def failed_check(store: BackupStore, dump_key: str) -> bool:
    """A readable verify or drill record of this backup says it failed."""
    return check_failed(read_record(store, dump_key, VerifyRecord), read_record(store, dump_key, DrillRecord))


def tier_for_new(store: BackupStore, identifier: str, env: str, created_at: datetime, policy: RetentionPolicy) -> Tier:
    """The tier of a backup about to be written, from the good backups already stored before it.

    When the store cannot say, the longest-kept tier: a backup kept too long costs storage, one kept
    too short could leave its month without a backup.
    """
    try:
        listed = {item.id: item for item in cheap_listing(store, identifier, env)}

        # The same backup is often the first of its day, week, month and year: each is read once.
        @functools.cache
        def good(backup_id: str) -> BackupEntry | None:
            entry = judge(store, identifier, env, listed[backup_id])
            return entry if entry.complete and not failed_check(store, entry.key) else None

        @functools.cache
        def kept_as(key: str) -> Tier:
            return tag_tier(store.get_tags(key)) or Tier.PINNED

        def holds(backup_id: str, tier: Tier) -> bool:
            entry = good(backup_id)
            if entry is None:
                return False
            # A tier turned on mid-period, or a promotion that did not finish, leaves the period's
            # first good backup in a shorter tier: it does not hold this one's place.
            return not store.expires_itself or RANK[kept_as(entry.key)] >= RANK[tier]

        return decide_tier(created_at, ((item.sort_key[0], item.id) for item in listed.values()), holds, policy)
    except Exception as exc:
        fallback = next((t for t in CALENDAR_TIERS if policy.count(t) > 0), Tier.DAILY)
        log.warning("could not decide the retention tier from the stored backups (%s); keeping this one as %s", exc, fallback)
        return fallback


def tier_tags(tier: Tier) -> dict[str, str]:
    return {TIER_TAG: tier.value}


def tag_tier(tags: Mapping[str, str]) -> Tier | None:
    """The tier a tag set names; None when it names none (written before tiers: nothing expires it)."""
    value = tags.get(TIER_TAG)
    return Tier(value) if value is not None and value in TIER_VALUES else None


def tag_key(entry: BackupEntry) -> str:
    """The object whose tags stand for the backup: its dump, or its manifest when the dump is gone."""
    return entry.key if entry.has_dump else entry.key + ".json"


def object_keys(store: BackupStore, dump_key: str) -> list[str]:
    """Every object of one backup: dump, manifest, records, globals (all share `{folder}{id}.`)."""
    stem = dump_key.removesuffix(".dump") + "."
    return sorted(key for key, _size in store.list_keys(stem))


def retag(store: BackupStore, dump_key: str, tags: Mapping[str, str], longer: bool) -> list[str]:
    """Give every object of the backup the same tags.

    Kept `longer` than before: the dump first; shorter: the dump last. Stopped midway, the dump then
    outlives its manifest and records (shown damaged, and fixed by running again), never the reverse.
    """
    keys = object_keys(store, dump_key)
    for key in sorted(keys, key=lambda k: (k == dump_key) != longer):
        store.set_tags(key, tags)
    return keys


def promote_next(store: BackupStore, identifier: str, env: str, failed: BackupEntry) -> list[str]:
    """After `failed` failed its check: the next good backup of each calendar period it stood for gets that tier.

    The failed backup keeps its tier (it may still hold most of the data); promotion only adds.
    Returns what was promoted, in words.
    """
    tier = tag_tier(store.get_tags(failed.key)) if store.expires_itself else None
    if tier is None or tier not in CALENDAR_TIERS:
        return []  # nothing to hand on: a daily, pinned or untagged backup, or a folder (prune decides afresh)
    mine = period(tier, failed.created_at)
    later = sorted(
        (e for e in list_backups(store, identifier, env) if e.created_at > failed.created_at and period(tier, e.created_at) == mine),
        key=lambda e: e.created_at,
    )
    for entry in later:
        if not entry.complete or failed_check(store, entry.key):
            continue
        current = tag_tier(store.get_tags(entry.key)) or Tier.PINNED  # untagged: nothing expires it
        if RANK[current] >= RANK[tier]:
            return []  # the period already has a good backup kept at least as long
        retag(store, entry.key, tier_tags(tier), longer=True)
        return [f"backup {entry.id} promoted from {current} to {tier} in place of {failed.id}"]
    return []



def after_failed_check(store: BackupStore, identifier: str, env: str, failed: BackupEntry) -> list[str]:
    """Promote the next good backup of the failed one's period; a warning, never an error, when that fails."""
    try:
        promoted = promote_next(store, identifier, env, failed)
    except Exception as exc:
        log.warning("could not promote a backup in place of %s, which failed its check (%s); "
                    "the next backup of the period takes its tier", failed.id, exc)
        return []
    for line in promoted:
        log.warning("retention: %s, which failed its check", line)
    return promoted
