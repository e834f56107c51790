"""Whether each scheduled target has a fresh, good backup of the usual size, verified and drilled."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from .catalog import BackupEntry, list_backups, newest_good
from .errors import JobFailed, StaleBackups
from .history import RecordIndex
from .output import human_age
from .records import AckRecord, DrillRecord, VerifyRecord
from .services import Services
from .shrink import ShrinkVerdict, describe, good, judge
from .targets import Registry, Target
from .words import plural

log = logging.getLogger(__name__)

# How many of the newest backups have their verify and drill records read: a weekly drill of
# nightly backups is among the newest 8, and each record is one small read.
RECORD_SCAN = 10


@dataclass(frozen=True)
class Proof:
    """The newest verify or drill found among the newest backups."""

    backup_id: str
    at: datetime
    ok: bool
    problem: str | None
    age: timedelta


@dataclass(frozen=True)
class TargetStatus:
    target: Target
    newest: BackupEntry | None  # the newest good backup: what `restore --backup latest` would take
    age: timedelta | None
    stale: bool
    damaged: tuple[BackupEntry, ...] = ()  # damaged backups newer than `newest`, passed over
    shrink: ShrinkVerdict | None = None  # `newest` against the good backups before it
    ack: AckRecord | None = None  # someone said the shrink of `newest` is right
    last_verify: Proof | None = None
    last_drill: Proof | None = None
    problems: tuple[str, ...] = ()  # each reason this target turns `status` red, in words

    @property
    def shrink_alarm(self) -> bool:
        return self.shrink is not None and self.shrink.shrunk and self.ack is None


def _latest(records: list[VerifyRecord | None] | list[DrillRecord | None], now: datetime) -> Proof | None:
    found = [r for r in records if r is not None]
    if not found:
        return None
    newest = max(found, key=lambda r: r.checked_at)
    return Proof(newest.backup_id, newest.checked_at, newest.ok, newest.problem, now - newest.checked_at)


def _problems(status: TargetStatus, max_age: timedelta, max_drill_age: timedelta | None) -> tuple[str, ...]:
    name = status.target.name
    problems = []
    if status.stale:
        problems.append(f"{name}: no good backup newer than {human_age(max_age)}"
                        + (f" (the newest is {human_age(status.age)} old)" if status.age is not None else ""))
    if status.shrink_alarm and status.shrink is not None:
        problems.append(describe(status.shrink, name))
    verify = status.last_verify
    if verify is not None and not verify.ok:
        problems.append(f"{name}: the last verify (backup {verify.backup_id}, {human_age(verify.age)} ago) found it bad: "
                        f"{verify.problem}")
    drill = status.last_drill
    if drill is not None and not drill.ok:
        problems.append(f"{name}: the last drill (backup {drill.backup_id}, {human_age(drill.age)} ago) failed: {drill.problem}")
    if max_drill_age is not None:
        if drill is None:
            problems.append(f"{name}: no drill found among the newest {RECORD_SCAN} backups; run `db-backup drill "
                            f"{status.target.identifier} {status.target.env}`")
        elif drill.age > max_drill_age:
            problems.append(f"{name}: the last drill is {human_age(drill.age)} old (limit {human_age(max_drill_age)})")
    return tuple(problems)


def _target_status(target: Target, services: Services, now: datetime, max_age: timedelta) -> TargetStatus:
    store = services.store(target)
    found = newest_good(store, target.identifier, target.env)
    newest = found.entry
    age = now - newest.created_at if newest else None
    plain = TargetStatus(target, newest, age, age is None or age > max_age, found.damaged)
    if newest is None:
        return plain
    policy = target.shrink_alarm
    entries = list_backups(store, target.identifier, target.env, limit=max(policy.scan, RECORD_SCAN) + len(found.damaged))
    position = next((i for i, e in enumerate(entries) if e.id == newest.id), None)
    if position is None:
        return plain
    index = RecordIndex.of(store, target.identifier, target.env)
    verdict = judge(newest, entries[position + 1:], policy, index.acknowledged) if good(newest) else None
    ack = index.read(newest, AckRecord) if verdict is not None and verdict.shrunk else None
    return TargetStatus(target, newest, age, plain.stale, found.damaged, verdict, ack,
                        _latest([index.read(e, VerifyRecord) for e in entries[:RECORD_SCAN]], now),
                        _latest([index.read(e, DrillRecord) for e in entries[:RECORD_SCAN]], now))


def target_statuses(registry: Registry, services: Services, max_age: timedelta, schedule: str = "nightly",
                    max_drill_age: timedelta | None = None) -> list[TargetStatus]:
    """Each scheduled target's newest good backup, its age, size trend and proofs; damaged backups never count as fresh."""
    result = []
    now = services.clock.now()
    for target in registry.scheduled(schedule):
        status = _target_status(target, services, now, max_age)
        result.append(replace(status, problems=_problems(status, max_age, max_drill_age)))
    return result


def failure(statuses: list[TargetStatus], max_age: str) -> JobFailed | None:
    """The error `status` exits with: stale targets first (as it always said), then every other problem."""
    stale = [s.target.name for s in statuses if s.stale]
    others = [p for s in statuses for p in s.problems if not (s.stale and p == s.problems[0])]
    verb = "has" if len(stale) == 1 else "have"
    parts = [f"{plural(len(stale), 'target')} {verb} no backup newer than {max_age}: {', '.join(stale)}"] if stale else []
    parts += others
    if not parts:
        return None
    return (StaleBackups if stale else JobFailed)("; ".join(parts))
