"""Calendar retention on a folder store: 400 days of nightly backups keep exactly the GFS set, and prune deletes the rest."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runner.catalog import list_backups, make_id
from runner.keeping import plan_retention, prune
from runner.records import DrillRecord, PinRecord, put_record
from runner.retention import RetentionPolicy, Tier, decide_tier, expires_after
from runner.stores.local import LocalStore
from runner.targets import parse_registry
from tests.helpers.backups import write_manifest
from tests.helpers.cli import run_main
from tests.helpers.targets import write_targets_file

NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)  # a Monday, an hour after its nightly backup
FIRST = NOW.replace(hour=2) - timedelta(days=399)


def _registry(store: Path, retention: str = "") -> object:
    extra = f", retention: {retention}" if retention else ""
    return parse_registry(
        f'version: 1\ndefaults: {{storage: "file://{store}"{extra}}}\nenvironments: {{production: {{protected: true}}}}\n'
        "targets:\n  - {identifier: app, env: production, schedule: nightly}\n"
    )


def _nightly(store: LocalStore, days: int = 400, start: datetime = FIRST) -> list[str]:
    ids = []
    for day in range(days):
        when = start + timedelta(days=day)
        write_manifest(store, "app", "production", when, None)
        ids.append(make_id(when))
    return ids


def _kept(plan: object, tier: Tier) -> list[str]:
    return sorted(k.entry.id for k in plan.rows if k.tier is tier and not k.expired)  # type: ignore[attr-defined]


def _day(text: str) -> str:
    return make_id(datetime.fromisoformat(text).replace(hour=2, tzinfo=UTC))


def test_400_nightly_backups_keep_exactly_the_gfs_set(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    _nightly(store)
    target = _registry(tmp_path).targets[0]  # type: ignore[attr-defined]
    assert target.retention == RetentionPolicy(daily=7, weekly=5, monthly=12, yearly=0)
    plan = plan_retention(store, target, NOW)

    # daily 7: a backup expires at the midnight after created + 7 days, so 23 Nov's lasts until 1 Dec.
    assert _kept(plan, Tier.DAILY) == [_day(f"2026-11-{d:02d}") for d in (24, 25, 26, 27, 28, 29)]
    # weekly 5 (35 days): the first backup of each ISO week, 26 Oct's week onwards (1 Nov is that week's monthly).
    assert _kept(plan, Tier.WEEKLY) == [_day(d) for d in ("2026-10-26", "2026-11-02", "2026-11-09", "2026-11-16",
                                                          "2026-11-23", "2026-11-30")]
    # monthly 12 (372 days): the first of each month from December 2025; 1 January is monthly (yearly: 0).
    assert _kept(plan, Tier.MONTHLY) == [_day("2025-12-01")] + [_day(f"2026-{m:02d}-01") for m in range(1, 12)]
    assert _kept(plan, Tier.YEARLY) == []
    kept = {k.entry.id for k in plan.rows if not k.expired}
    assert len(kept) == 6 + 6 + 12
    assert len(plan.rows) == 400

    doomed = prune(store, plan, dry_run=False)
    assert len(doomed) == 400 - len(kept)
    assert {e.id for e in list_backups(store, "app", "production")} == kept
    assert not any(p.name.startswith(doomed[0].entry.id) for p in (tmp_path / "app" / "production").iterdir())


def test_yearly_tier_and_a_tier_turned_off(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    _nightly(store)
    target = _registry(tmp_path, "{yearly: 2, weekly: 0}").targets[0]  # type: ignore[attr-defined]
    plan = plan_retention(store, target, NOW)
    # The first backup stored (27 Oct 2025) is the first of 2025 here; 1 Jan 2026 the first of 2026.
    assert _kept(plan, Tier.YEARLY) == [_day("2025-10-27"), _day("2026-01-01")]
    assert _kept(plan, Tier.WEEKLY) == []
    assert _day("2026-11-23") in _kept(plan, Tier.DAILY)  # a Monday: daily when weekly is off


def test_a_failed_drill_gives_the_month_to_the_next_good_backup(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    _nightly(store, days=10, start=datetime(2026, 11, 1, 2, 0, tzinfo=UTC))
    first = store.key("app", "production", _day("2026-11-01"))
    put_record(store, first, DrillRecord(backup_id=_day("2026-11-01"), checked_at=NOW, ok=False, problem="x",
                                         restore_duration_s=1.0, server="throwaway"))
    target = _registry(tmp_path).targets[0]  # type: ignore[attr-defined]
    tiers = {k.entry.id: k.tier for k in plan_retention(store, target, NOW).rows}
    assert tiers[_day("2026-11-01")] is Tier.MONTHLY  # keeps its tier: it may still hold most of the data
    assert tiers[_day("2026-11-02")] is Tier.MONTHLY  # and the next good one holds the month too
    assert tiers[_day("2026-11-03")] is Tier.DAILY


def test_decide_tier_asks_only_about_its_own_periods() -> None:
    asked: list[str] = []
    created = datetime(2026, 11, 18, 2, 0, tzinfo=UTC)
    earlier = [(created - timedelta(days=d), f"b{d}") for d in range(1, 300)]

    def good(backup_id: str, tier: Tier) -> bool:
        asked.append(backup_id)
        return True

    assert decide_tier(created, earlier, good, RetentionPolicy()) is Tier.DAILY
    assert set(asked) <= {"b17", "b2"}  # the month's first (1 Nov) and the ISO week's first (Mon 16 Nov)
    assert expires_after(created, 7) == datetime(2026, 11, 26, tzinfo=UTC)


def test_prune_never_deletes_pinned_legacy_or_newest_good(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    old = datetime(2026, 1, 10, 2, 0, tzinfo=UTC)
    ids = _nightly(store, days=3, start=old)  # 10, 11, 12 January: all long expired dailies but the 10th (weekly? no: Sat)
    pinned_key = store.key("app", "production", ids[1])
    put_record(store, pinned_key, PinRecord(backup_id=ids[1], pinned=True, changed_at=NOW, by="ops", reason="before v2"))
    legacy = tmp_path / "app" / "production" / "2025-06-01_02-00-00.dump"
    legacy.write_bytes(b"old system")
    target = _registry(tmp_path, "{weekly: 0, monthly: 0}").targets[0]  # type: ignore[attr-defined]
    plan = plan_retention(store, target, NOW)
    why = {k.entry.id: k.why for k in plan.rows}
    assert why[ids[1]] == "pinned by ops: before v2"
    assert why[ids[2]] == "newest good backup: prune keeps it"
    assert why["2025-06-01_02-00-00"].startswith("legacy dump")
    assert [k.entry.id for k in prune(store, plan, dry_run=False)] == [ids[0]]
    assert {e.id for e in list_backups(store, "app", "production")} == {ids[1], ids[2], "2025-06-01_02-00-00"}


def test_prune_command_dry_run_then_delete(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_dir = tmp_path / "store"
    store = LocalStore(store_dir)
    now = datetime.now(UTC)
    for days_ago in (40, 20, 1):
        write_manifest(store, "app", "production", now - timedelta(days=days_ago), None)
    targets = write_targets_file(tmp_path / "targets.yaml", [f'storage: "file://{store_dir}"', "retention: {daily: 7, weekly: 0, monthly: 0}"],
                                 ["- {identifier: app, env: production}"])
    before = sorted(p.name for p in (store_dir / "app" / "production").iterdir())
    dry = run_main(["--targets", str(targets), "prune", "app", "production", "--dry-run"], capsys)
    assert dry.code == 0, dry.err
    assert "would delete 2 of 3 backups; 1 kept" in dry.out
    assert sorted(p.name for p in (store_dir / "app" / "production").iterdir()) == before

    done = run_main(["--targets", str(targets), "prune", "app", "production"], capsys)
    assert done.code == 0, done.err
    assert "deleted 2 of 3 backups; 1 kept" in done.out
    assert [e.id for e in list_backups(store, "app", "production")] == [make_id(now - timedelta(days=1))]

    shown = run_main(["--targets", str(targets), "retention", "app", "production", "--json"], capsys)
    assert shown.code == 0, shown.err
    backups = json.loads(shown.out)["backups"]
    assert [(b["tier"], b["expired"]) for b in backups] == [("daily", False)]


def test_pin_and_unpin_in_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_dir = tmp_path / "store"
    store = LocalStore(store_dir)
    now = datetime.now(UTC)
    for days_ago in (30, 1):
        write_manifest(store, "app", "production", now - timedelta(days=days_ago), None)
    old = make_id(now - timedelta(days=30))
    targets = write_targets_file(tmp_path / "targets.yaml", [f'storage: "file://{store_dir}"', "retention: {weekly: 0, monthly: 0}"],
                                 ["- {identifier: app, env: production}"])
    pinned = run_main(["--targets", str(targets), "pin", "app", "production", old, "--reason", "before the v2 migration"], capsys)
    assert pinned.code == 0, pinned.err
    assert f"pinned backup {old} of app/production" in pinned.out
    shown = run_main(["--targets", str(targets), "retention", "app", "production"], capsys)
    assert "before the v2 migration" in shown.out
    listed = run_main(["--targets", str(targets), "list", "app", "production"], capsys)
    assert "complete, pinned: before the v2 migration" in listed.out
    listed_json = json.loads(run_main(["--targets", str(targets), "list", "app", "production", "--json"], capsys).out)
    assert [b["pinned"]["reason"] if b["pinned"] else None for b in listed_json] == [None, "before the v2 migration"]
    history = run_main(["--targets", str(targets), "history", "app", "production"], capsys)
    assert "pinned: before the v2 migration" in history.out
    assert run_main(["--targets", str(targets), "prune", "app", "production"], capsys).out.endswith("deleted 0 of 2 backups; 2 kept\n")

    released = run_main(["--targets", str(targets), "unpin", "app", "production", old], capsys)
    assert released.code == 0, released.err
    assert "prune keeps it as long as its tier does" in released.out
    again = run_main(["--targets", str(targets), "unpin", "app", "production", old], capsys)
    assert again.code == 2 and "is not pinned" in again.err
    assert "deleted 1 of 2 backups" in run_main(["--targets", str(targets), "prune", "app", "production"], capsys).out


def test_prune_refuses_an_s3_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    targets = write_targets_file(tmp_path / "targets.yaml", ['storage: "s3://bucket/prefix"'], ["- {identifier: app, env: production}"])
    refused = run_main(["--targets", str(targets), "prune", "app", "production"], capsys)
    assert refused.code == 2
    assert "prune is for file:// stores" in refused.err


class _UnlistableStore(LocalStore):
    """A stub store whose listing fails, as a stalled or refused S3 listing would."""

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        from runner.errors import InfraError

        raise InfraError("listing failed: SlowDown")


def test_an_unreadable_store_keeps_the_new_backup_longest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from runner.tiering import tier_for_new

    store = _UnlistableStore(tmp_path)
    assert tier_for_new(store, "app", "production", NOW, RetentionPolicy()) is Tier.MONTHLY
    assert tier_for_new(store, "app", "production", NOW, RetentionPolicy(yearly=3)) is Tier.YEARLY
    assert "could not decide the retention tier" in caplog.text and "SlowDown" in caplog.text


def test_prune_leaves_a_dump_whose_manifest_disagrees_but_removes_an_orphan_manifest(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    ids = _nightly(store, days=4, start=datetime(2026, 1, 6, 2, 0, tzinfo=UTC))  # Tuesday to Friday: one week
    folder = tmp_path / "app" / "production"
    (folder / f"{ids[1]}.dump").write_bytes(b"y" * 99)  # its manifest says 1234 bytes: damaged, data maybe intact
    (folder / f"{ids[2]}.dump").unlink()  # a manifest whose dump is gone
    target = _registry(tmp_path, "{monthly: 0}").targets[0]  # type: ignore[attr-defined]
    plan = plan_retention(store, target, NOW)
    assert {k.entry.id for k in prune(store, plan, dry_run=False)} == {ids[0], ids[2]}  # ids[3] is the newest good
    why = {k.entry.id: k.why for k in plan_retention(store, target, NOW).rows}
    assert why[ids[1]].startswith("damaged (dump is 99 bytes but its manifest says 1234): prune leaves it")
    assert ids[2] not in why
