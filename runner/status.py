"""Whether each scheduled target has a fresh, good backup."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from .catalog import BackupEntry, newest_good
from .services import Services
from .targets import Registry, Target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetStatus:
    target: Target
    newest: BackupEntry | None  # the newest good backup: what `restore --backup latest` would take
    age: timedelta | None
    stale: bool
    damaged: tuple[BackupEntry, ...] = ()  # damaged backups newer than `newest`, passed over


def target_statuses(registry: Registry, services: Services, max_age: timedelta, schedule: str = "nightly") -> list[TargetStatus]:
    """Each scheduled target's newest good backup and its age; damaged backups never count as fresh."""
    result = []
    now = services.clock.now()
    for target in registry.scheduled(schedule):
        found = newest_good(services.store(target), target.identifier, target.env)
        age = now - found.entry.created_at if found.entry else None
        result.append(TargetStatus(target, found.entry, age, age is None or age > max_age, found.damaged))
    return result
