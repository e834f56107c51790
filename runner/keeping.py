"""What retention keeps and removes on one target: each backup's tier, why it is kept, and when it expires."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from .catalog import BackupEntry, list_backups
from .history import RecordIndex
from .records import DrillRecord, PinRecord, VerifyRecord, check_failed
from .retention import CALENDAR_TIERS, TIER_TAG, RetentionPolicy, Tier, decide_tier, expires_after
from .tiering import object_keys, retag, tag_key, tag_tier, tier_tags
from .words import plural

if TYPE_CHECKING:
    from .stores import BackupStore
    from .stores.local import LocalStore
    from .targets import Target

log = logging.getLogger(__name__)

ALL_TIERS = (Tier.DAILY, *reversed(CALENDAR_TIERS))


@dataclass(frozen=True)
class Kept:
    """One backup under the policy."""

    entry: BackupEntry
    tier: Tier | None  # None: a legacy dump, or an S3 object without a tier tag
    expires: datetime | None  # None: nothing expires it
    why: str  # in words: "weekly until 2026-12-08", "pinned: before the migration", "newest good backup"
    pin: PinRecord | None = None
    expired: bool = False  # due now: S3 removes it at its next lifecycle run, prune deletes it


@dataclass(frozen=True)
class RetentionPlan:
    target: Target
    rows: tuple[Kept, ...]  # newest first
    days: dict[Tier, int]  # how long each tier is kept: the bucket's rules, or the policy for a folder
    warnings: tuple[str, ...]


def _good(entry: BackupEntry, failed: set[str]) -> bool:
    return entry.complete and entry.id not in failed


def failed_ids(records: RecordIndex, entries: list[BackupEntry]) -> set[str]:
    """Backups whose verify or drill record says they failed: they do not hold a tier's place."""
    return {e.id for e in entries if check_failed(records.read(e, VerifyRecord), records.read(e, DrillRecord))}


def computed_tiers(entries: list[BackupEntry], failed: set[str], policy: RetentionPolicy) -> dict[str, Tier]:
    """Every db-backup backup's tier as backup time would have decided it (a folder keeps no tags)."""
    oldest_first = sorted((e for e in entries if e.manifest is not None or e.problem is not None), key=lambda e: e.created_at)
    by_id = {e.id: e for e in oldest_first}
    history = [(e.created_at, e.id) for e in oldest_first]
    return {
        # A damaged backup holds no tier's place; it is kept as long as any daily one.
        e.id: decide_tier(e.created_at, history, lambda i, _tier: _good(by_id[i], failed), policy) if e.problem is None else Tier.DAILY
        for e in oldest_first
    }


def decided_tier(store: BackupStore, identifier: str, env: str, backup_id: str, policy: RetentionPolicy) -> Tier:
    """The tier backup time would have given that backup, from the target's stored backups."""
    entries = list_backups(store, identifier, env)
    return computed_tiers(entries, failed_ids(RecordIndex.of(store, identifier, env), entries), policy).get(backup_id, Tier.DAILY)


def policy_days(policy: RetentionPolicy) -> dict[Tier, int]:
    return {tier: days for tier in ALL_TIERS if (days := policy.keep_days(tier)) is not None}


def rule_warnings(rules: dict[Tier, int], policy: RetentionPolicy, where: str) -> list[str]:
    """Where the bucket's rules do not keep what targets.yaml asks for."""
    found = []
    for tier in ALL_TIERS:
        want, have = policy.keep_days(tier), rules.get(tier)
        if want == have or (want is None and have is not None):
            continue  # a rule for a tier the policy never gives out expires nothing
        if have is None:
            found.append(f"{where} has no lifecycle rule for {tier} backups, so they never expire; "
                         "deploy infra/db-backup.yaml's tier rules (docs/setup.md)")
        else:
            found.append(f"{where} expires {tier} backups after {plural(have, 'day')} but targets.yaml's {tier}: "
                         f"{policy.count(tier)} means {want}; change the stack's {tier.title()}RetentionDays or targets.yaml")
    return found


def plan_retention(store: BackupStore, target: Target, now: datetime) -> RetentionPlan:
    """Each backup's tier, expiry and reason, from the tags and the bucket's rules (S3) or the policy (folder)."""
    entries = list_backups(store, target.identifier, target.env)
    records = RecordIndex.of(store, target.identifier, target.env)
    failed = failed_ids(records, entries)
    pins = {e.id: pin for e in entries if (pin := records.pin(e)) is not None}
    warnings: list[str] = []
    lifecycle = store.lifecycle(target.identifier, target.env)
    tiers: dict[str, Tier] = {}
    if lifecycle is None:
        days = policy_days(target.retention)
        tiers = computed_tiers(entries, failed, target.retention)
    else:
        days = lifecycle.days
        warnings += lifecycle.problems
        warnings += rule_warnings(days, target.retention, f"bucket of {store.url}")
        for entry in entries:
            if entry.manifest is None and entry.problem is None:
                continue  # legacy: never tagged, never read for tags
            tier = tag_tier(store.get_tags(tag_key(entry)))
            if tier is not None:
                tiers[entry.id] = tier
            if (tier is Tier.PINNED) != (entry.id in pins):
                # The tag is what S3 obeys; the record only explains it.
                warnings.append(f"backup {entry.id}: its pin record and its tags disagree ({tier or 'untagged'}); "
                                f"run `db-backup pin` or `db-backup unpin` on it again")
                pins.pop(entry.id, None)
    newest_good = next((e.id for e in entries if _good(e, failed)), None)
    rows = [_judge(e, tiers.get(e.id), pins.get(e.id), days, now, e.id == newest_good, lifecycle is not None) for e in entries]
    untagged = [r.entry.id for r in rows if r.tier is None and r.entry.manifest is not None]
    if untagged:
        verb = "has" if len(untagged) == 1 else "have"
        warnings.append(f"{plural(len(untagged), 'backup')} {verb} no tier tag (written before tiers existed) and never expire; "
                        f"run `db-backup retention {target.identifier} {target.env} --retag`")
    return RetentionPlan(target, tuple(rows), days, tuple(warnings))


def _judge(entry: BackupEntry, tier: Tier | None, pin: PinRecord | None, days: dict[Tier, int], now: datetime,
           newest: bool, tagged_store: bool) -> Kept:
    if entry.manifest is None and entry.problem is None:
        return Kept(entry, None, None, "legacy dump: db-backup never removes it")
    if tier is Tier.PINNED or (pin is not None and not tagged_store):
        reason = f"pinned by {pin.by}" + (f": {pin.reason}" if pin and pin.reason else "") if pin else "pinned"
        return Kept(entry, Tier.PINNED, None, reason, pin)
    if tier is None:
        return Kept(entry, None, None, "no tier tag: no rule expires it")
    if tier not in days:
        return Kept(entry, tier, None, f"{tier}: no rule expires this tier")
    expires = expires_after(entry.created_at, days[tier])
    if expires > now:
        return Kept(entry, tier, expires, f"{tier} until {expires:%Y-%m-%d}")
    if newest and not tagged_store:
        return Kept(entry, tier, expires, "newest good backup: prune keeps it")
    if entry.problem is not None and entry.has_dump and not tagged_store:
        # A dump with a manifest that does not match it may still hold the data: a person decides.
        return Kept(entry, tier, expires, f"damaged ({entry.problem}): prune leaves it for you to look at")
    due = "expired: S3 removes it at its next lifecycle run" if tagged_store else "expired: prune deletes it"
    return Kept(entry, tier, expires, due, expired=True)


def prune(store: LocalStore, plan: RetentionPlan, dry_run: bool) -> list[Kept]:
    """Delete the expired backups of a folder store (the dump first, the manifest last); what was (or would be) deleted."""
    doomed = [row for row in plan.rows if row.expired and row.pin is None and row.tier is not Tier.PINNED]
    for row in doomed:
        if dry_run:
            continue
        keys = object_keys(store, row.entry.key)
        manifest = row.entry.key + ".json"
        # Killed midway, what is left is a manifest without its dump: shown damaged, and pruned next time.
        for key in sorted(keys, key=lambda k: (k == manifest, k != row.entry.key)):
            store.delete(key)
        log.info("pruned backup %s of %s (%s)", row.entry.id, plan.target.name, row.why)
    return doomed


def retag_untagged(store: BackupStore, target: Target) -> list[tuple[str, Tier]]:
    """Tag backups written before tiers existed with the tier backup time would have given them."""
    entries = list_backups(store, target.identifier, target.env)
    records = RecordIndex.of(store, target.identifier, target.env)
    tiers = computed_tiers(entries, failed_ids(records, entries), target.retention)
    done = []
    for entry in sorted(entries, key=lambda e: e.created_at):
        if entry.id not in tiers or TIER_TAG in store.get_tags(tag_key(entry)):
            continue
        retag(store, entry.key, tier_tags(tiers[entry.id]), longer=False)
        done.append((entry.id, tiers[entry.id]))
    return done
