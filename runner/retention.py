"""Calendar retention (daily, weekly, monthly, yearly): which tier a backup belongs to and when it expires.

A backup's tier is decided once, when it is written, from what is already stored: the first good
backup of its year is yearly, of its month monthly, of its ISO week weekly, any other daily (a tier
kept 0 times is skipped). Each tier is kept for its count times its period, so at least that many
backups of the tier exist at any time. S3 enforces it with one lifecycle rule per tier on the
backup's tag; folder stores with `db-backup prune`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum


class Tier(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    YEARLY = "yearly"
    PINNED = "pinned"  # never expires, whatever its age


TIER_VALUES = frozenset(t.value for t in Tier)
# The S3 object tag every object of a backup carries; its value is a Tier.
TIER_TAG = "db-backup-tier"
# On a pinned backup: the tier it had, so unpinning gives it back.
PINNED_FROM_TAG = "db-backup-pinned-from"

# Days per period: the longest month and year, so `monthly: 12` keeps at least 12 monthly backups.
PERIOD_DAYS = {Tier.DAILY: 1, Tier.WEEKLY: 7, Tier.MONTHLY: 31, Tier.YEARLY: 366}
# From the longest-lived tier down: a backup gets the first whose period has no good backup yet.
CALENDAR_TIERS = (Tier.YEARLY, Tier.MONTHLY, Tier.WEEKLY)


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backups of each tier to keep; 0 turns a tier off (daily must keep at least 1)."""

    daily: int = 7
    weekly: int = 5
    monthly: int = 12
    yearly: int = 0

    def count(self, tier: Tier) -> int:
        return {Tier.DAILY: self.daily, Tier.WEEKLY: self.weekly, Tier.MONTHLY: self.monthly, Tier.YEARLY: self.yearly}.get(tier, 0)

    def keep_days(self, tier: Tier) -> int | None:
        """How many days a backup of the tier is kept; None for pinned (forever) or a tier turned off."""
        if tier is Tier.PINNED or self.count(tier) == 0:
            return None
        return self.count(tier) * PERIOD_DAYS[tier]

    def describe(self) -> str:
        return f"daily {self.daily}, weekly {self.weekly}, monthly {self.monthly}, yearly {self.yearly}"


DEFAULT_RETENTION = RetentionPolicy()


def period(tier: Tier, when: datetime) -> tuple[int, ...]:
    """The calendar period (UTC) of a tier that `when` falls in."""
    day = when.astimezone(UTC)
    if tier is Tier.YEARLY:
        return (day.year,)
    if tier is Tier.MONTHLY:
        return (day.year, day.month)
    if tier is Tier.WEEKLY:
        iso = day.isocalendar()
        return (iso.year, iso.week)
    return (day.year, day.month, day.day)


# From the shortest-lived up; pinned outlives every tier.
RANK = {Tier.DAILY: 0, Tier.WEEKLY: 1, Tier.MONTHLY: 2, Tier.YEARLY: 3, Tier.PINNED: 4}


def decide_tier(
    created_at: datetime, earlier: Iterable[tuple[datetime, str]], holds: Callable[[str, Tier], bool], policy: RetentionPolicy,
) -> Tier:
    """The tier of a backup created at `created_at`, given the backups before it (time, id; any order).

    `holds(id, tier)`: that earlier backup is good and kept at least as long as the tier. It is asked
    only about backups in the new one's own periods, oldest first, until one holds, so a long
    history costs a few reads.
    """
    ordered = sorted((when, backup_id) for when, backup_id in earlier if when < created_at)
    checked: dict[tuple[str, Tier], bool] = {}

    def held(backup_id: str, tier: Tier) -> bool:
        if (backup_id, tier) not in checked:
            checked[backup_id, tier] = holds(backup_id, tier)
        return checked[backup_id, tier]

    for tier in CALENDAR_TIERS:
        if policy.count(tier) == 0:
            continue
        mine = period(tier, created_at)
        if not any(held(backup_id, tier) for when, backup_id in ordered if period(tier, when) == mine):
            return tier
    return Tier.DAILY


def expires_at(created_at: datetime, tier: Tier, policy: RetentionPolicy) -> datetime | None:
    """When a backup of that tier expires under the policy; None when it never does."""
    days = policy.keep_days(tier)
    return None if days is None else expires_after(created_at, days)


def expires_after(created_at: datetime, days: int) -> datetime:
    """As S3 lifecycle counts it: created + days, rounded up to the next midnight UTC."""
    due = created_at.astimezone(UTC) + timedelta(days=days)
    midnight = due.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight if midnight == due else midnight + timedelta(days=1)
