"""History, the shrink alarm's arithmetic, the sparkline, and status and ack over made-up stored backups."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runner.aws import AwsClients
from runner.catalog import BackupEntry, make_id
from runner.errors import JobFailed, StaleBackups
from runner.output import change_words, human_age
from runner.records import AckRecord, DrillRecord, VerifyRecord, put_record
from runner.services import Services
from runner.settings import Settings
from runner.shrink import MIN_PREVIOUS, ShrinkPolicy, judge
from runner.status import failure, target_statuses
from runner.stores.local import LocalStore
from runner.targets import load_registry
from tests.helpers.backups import sample_manifest
from tests.helpers.cli import run_main
from tests.helpers.clock import FakeClock
from tests.helpers.targets import write_targets_file

START = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
MiB = 1 << 20


def _entry(day: int, size: int, uncompressed: int | None = None, problem: str | None = None) -> BackupEntry:
    when = START + timedelta(days=day)
    key = f"app/production/{make_id(when)}.dump"
    manifest = replace(sample_manifest(key, identifier="app", created_at=when, size=size), uncompressed_bytes=uncompressed)
    return BackupEntry(make_id(when), key, when, size, manifest, problem)


def _older(*sizes: int) -> list[BackupEntry]:
    """Previous backups, newest first, from sizes given newest first."""
    return [_entry(-1 - i, size) for i, size in enumerate(sizes)]


# --- the arithmetic ---------------------------------------------------------------------------


def test_median_of_the_previous_good_backups_and_the_threshold() -> None:
    policy = ShrinkPolicy(threshold=0.5, window=7)
    verdict = judge(_entry(0, 49), _older(100, 100, 100), policy)
    assert (verdict.median, verdict.previous, verdict.measure) == (100.0, 3, "stored")
    assert verdict.judged and verdict.shrunk and change_words(verdict.change) == "\N{MINUS SIGN}51% vs median"
    # Exactly at the threshold is in range: the alarm fires strictly below it.
    assert not judge(_entry(0, 50), _older(100, 100, 100), policy).shrunk
    # An even count: the mean of the two middle values.
    assert judge(_entry(0, 10), _older(100, 300, 200, 400), policy).median == 250.0
    assert change_words(judge(_entry(0, 150), _older(100, 100, 100), policy).change) == "+50% vs median"


def test_fewer_than_three_previous_backups_are_never_judged() -> None:
    assert MIN_PREVIOUS == 3
    verdict = judge(_entry(0, 1), _older(1000, 1000), ShrinkPolicy())
    assert verdict.median == 1000.0 and verdict.previous == 2
    assert not verdict.judged and not verdict.shrunk


def test_only_the_window_counts_and_damaged_backups_are_skipped() -> None:
    policy = ShrinkPolicy(threshold=0.5, window=3)
    # The three newest good ones are small; the big ones before them fall out of the window.
    older = [_entry(-1, 40), _entry(-2, 0, problem="dump is empty (0 bytes)"), _entry(-3, 40), _entry(-4, 40),
             _entry(-5, 1000), _entry(-6, 1000)]
    verdict = judge(_entry(0, 30), older, policy)
    assert (verdict.median, verdict.previous, verdict.shrunk) == (40.0, 3, False)
    assert judge(_entry(0, 30), older, ShrinkPolicy(threshold=0.5, window=5)).median == 40.0  # 40, 40, 40, 1000, 1000


def test_threshold_zero_turns_the_alarm_off() -> None:
    verdict = judge(_entry(0, 1), _older(1000, 1000, 1000), ShrinkPolicy(threshold=0))
    assert verdict.median == 1000.0 and not verdict.shrunk


def test_uncompressed_sizes_when_every_backup_knows_them_else_stored_sizes() -> None:
    policy = ShrinkPolicy()
    older = [_entry(-1 - i, 100, uncompressed=1000) for i in range(3)]
    # Compressed it is the same size; what pg_dump wrote shrank to a tenth.
    verdict = judge(_entry(0, 100, uncompressed=100), older, policy)
    assert (verdict.measure, verdict.size, verdict.median, verdict.shrunk) == ("uncompressed", 100, 1000.0, True)
    # One backup without it (gzip): compare stored sizes, like with like.
    mixed = judge(_entry(0, 100, uncompressed=None), older, policy)
    assert (mixed.measure, mixed.shrunk) == ("stored", False)


def test_an_acknowledged_backup_starts_a_new_baseline() -> None:
    older = _older(10, 1000, 1000, 1000, 1000)
    acked = older[0].id
    verdict = judge(_entry(0, 10), older, ShrinkPolicy(), lambda e: e.id == acked)
    assert (verdict.previous, verdict.median, verdict.shrunk) == (1, 10.0, False)


# --- the sparkline ----------------------------------------------------------------------------


def test_sparkline_scales_from_zero_to_the_largest() -> None:
    from runner.history import sparkline

    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([100, 100, 3, 100]) == "██▁█"  # an emptied database is a drop anyone sees
    assert sparkline([100, None, 100]) == "█·█"  # a damaged backup has no size to draw
    assert sparkline([]) == "" and sparkline([0, 0]) == "▁▁"


def test_human_age() -> None:
    assert [human_age(timedelta(minutes=m)) for m in (5, 90, 26 * 60, 9 * 24 * 60 + 240)] == ["5m", "1h", "26h", "9d 4h"]


# --- stored backups: history, status, ack -----------------------------------------------------


def _store_backup(store: LocalStore, day: int, size: int, uncompressed: int | None, duration_s: float = 2.0) -> str:
    when = START + timedelta(days=day)
    key = store.key("app", "production", make_id(when))
    (store.root / key).parent.mkdir(parents=True, exist_ok=True)
    (store.root / key).write_bytes(b"x" * size)
    manifest = sample_manifest(key, identifier="app", env="production", created_at=when, size=size, duration_s=duration_s)
    store.put_manifest(replace(manifest, uncompressed_bytes=uncompressed))
    return key


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, LocalStore, list[str]]:
    """Five nights of about 4 MiB of pg_dump output, then an emptied database's 40 KiB."""
    store = LocalStore(tmp_path / "backups")
    keys = [_store_backup(store, day, 1000 + day, 4 * MiB + day * 1000) for day in range(5)]
    keys.append(_store_backup(store, 5, 900, 40 * 1024))
    targets = write_targets_file(tmp_path / "targets.yaml", ["storage: file://./backups"], [
        "- identifier: app", "  env: production", "  schedule: nightly",
    ])
    return targets, store, keys


def _services(day: float) -> Services:
    return Services(settings=Settings(), clock=FakeClock(START + timedelta(days=day)), aws=AwsClients())


def test_history_json_has_the_numbers_and_the_records(world: tuple[Path, LocalStore, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    targets, store, keys = world
    checked = START + timedelta(days=5, hours=1)
    put_record(store, keys[4], VerifyRecord(make_id(START + timedelta(days=4)), checked, True, None, ("sha256",), 1.5))
    put_record(store, keys[4], DrillRecord(make_id(START + timedelta(days=4)), checked, False, "role x missing", 12.0, "throwaway"))
    result = run_main(["--targets", str(targets), "history", "app", "production", "--json", "--limit", "4"], capsys)
    assert result.code == 0, result.output
    data = json.loads(result.out)
    assert data["measure"] == "uncompressed"
    assert data["sizes"] == [4 * MiB + 2000, 4 * MiB + 3000, 4 * MiB + 4000, 40 * 1024]  # oldest to newest
    assert data["sparkline"] == "███▁"
    newest, second = data["backups"][0], data["backups"][1]
    assert newest["id"] == make_id(START + timedelta(days=5)) and newest["shrunk"] is True
    assert newest["uncompressed_bytes"] == 40 * 1024 and newest["rate_bytes_per_s"] == 20 * 1024
    assert newest["median_bytes"] == 4 * MiB + 2000 and newest["change"] < -0.99
    assert second["shrunk"] is False and second["verify"] == {"at": "2024-05-06T03:00:00Z", "ok": True, "problem": None}
    assert second["drill"]["ok"] is False and second["drill"]["problem"] == "role x missing"
    assert [b["shrunk"] for b in data["backups"]] == [True, False, False, False]

    table = run_main(["--targets", str(targets), "history", "app", "production"], capsys)
    assert table.code == 0, table.output
    lines = table.out.splitlines()
    assert lines[0].split()[:3] == ["ID", "SIZE", "UNCOMPRESSED"]
    assert "SHRUNK" in lines[1] and "\N{MINUS SIGN}99%" in lines[1]
    assert "FAILED" in lines[2] and "ok" in lines[2]
    assert lines[-1].startswith("trend (uncompressed size, oldest → newest): █████▁")


def test_status_fails_on_an_unacknowledged_shrink_and_ack_clears_it(
    world: tuple[Path, LocalStore, list[str]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    targets, store, _keys = world
    registry = load_registry(targets)
    [row] = target_statuses(registry, _services(5.1), timedelta(hours=26))
    assert row.shrink is not None and row.shrink.shrunk and row.shrink_alarm and not row.stale
    [problem] = row.problems
    newest = make_id(START + timedelta(days=5))
    assert f"backup {newest} shrank to 40.0 KiB (uncompressed)" in problem
    assert f"`db-backup ack app production {newest}`" in problem
    error = failure([row], "26h")
    assert isinstance(error, JobFailed) and not isinstance(error, StaleBackups) and str(error) == problem

    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    acked = run_main(["--targets", str(targets), "ack", "app", "production", newest, "--reason", "archived old rows"], capsys)
    assert acked.code == 0, acked.output
    assert f"acknowledged backup {newest} of app/production as octocat" in acked.out
    record = json.loads((store.root / store.key("app", "production", newest)).with_name(f"{newest}.dump.ack.json").read_text())
    assert (record["by"], record["reason"]) == ("octocat", "archived old rows")
    [row] = target_statuses(registry, _services(5.1), timedelta(hours=26))
    assert row.shrink is not None and row.shrink.shrunk and not row.shrink_alarm and row.problems == ()
    assert failure([row], "26h") is None


def test_status_json_table_and_github_annotations(
    world: tuple[Path, LocalStore, list[str]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    targets, store, keys = world
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    put_record(store, keys[5], DrillRecord(make_id(START + timedelta(days=5)), datetime.now(UTC), False, "extension x missing", 3.0, "t"))
    result = run_main(["--targets", str(targets), "status", "--json", "--max-age", "100000h"], capsys)
    assert result.code == 1
    [row] = json.loads(result.out)  # stdout stays pure JSON: the annotations went to stderr
    assert {"identifier", "env", "newest", "status", "age_hours", "stale", "damaged"} <= set(row)  # the keys it always had
    assert row["shrink_alarm"] is True and row["trend"]["shrunk"] is True and row["trend"]["previous"] == 5
    assert row["last_drill"]["ok"] is False and row["last_verify"] is None
    assert len(row["problems"]) == 2
    assert result.err.count("::error title=db-backup status app/production::") == 2
    assert "extension x missing" in result.err and "shrank to" in result.err
    text = summary.read_text()
    assert "### Backup status" in text and "❌ SHRUNK, DRILL" in text and "- app/production: the last drill" in text


def test_a_drill_older_than_max_drill_age_fails_status(world: tuple[Path, LocalStore, list[str]]) -> None:
    targets, store, keys = world
    registry = load_registry(targets)
    put_record(store, keys[4], DrillRecord(make_id(START + timedelta(days=4)), START + timedelta(days=4, hours=1), True, None, 3.0, "t"))
    (store.root / keys[5]).unlink()  # without the shrunk backup, the drilled one is the newest
    (store.root / (keys[5] + ".json")).unlink()
    [row] = target_statuses(registry, _services(5), timedelta(hours=26), max_drill_age=timedelta(days=7))
    assert row.problems == ()
    [row] = target_statuses(registry, _services(12), timedelta(days=30), max_drill_age=timedelta(days=7))
    assert row.problems == ("app/production: the last drill is 7d 23h old (limit 7d)",)
    [row] = target_statuses(registry, _services(5), timedelta(days=30), max_drill_age=None)
    assert row.problems == ()


def test_shrink_alarm_settings_in_targets_yaml(tmp_path: Path) -> None:
    path = write_targets_file(tmp_path / "targets.yaml", ["storage: file://./b", "shrink_alarm: {threshold: 0.3, window: 10}"], [
        "- {identifier: a, env: production}",
        "- {identifier: b, env: production, shrink_alarm: off}",
        "- {identifier: c, env: production, shrink_alarm: {window: 5}}",
    ])
    policies = {t.identifier: t.shrink_alarm for t in load_registry(path).targets}
    assert policies == {"a": ShrinkPolicy(0.3, 10), "b": ShrinkPolicy(0.0, 10), "c": ShrinkPolicy(0.3, 5)}
    assert not policies["b"].enabled


def test_a_failed_verify_fails_status(world: tuple[Path, LocalStore, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    targets, store, keys = world
    newest = make_id(START + timedelta(days=5))
    put_record(store, keys[5], VerifyRecord(newest, datetime.now(UTC), False, "sha256 mismatch", ("sha256",), 1.0))
    put_record(store, keys[5], AckRecord(newest, datetime.now(UTC), "ops"))  # the shrink is known; the verify is not
    result = run_main(["--targets", str(targets), "status", "--max-age", "100000h"], capsys)
    assert result.code == 1
    assert f"app/production: the last verify (backup {newest}" in result.err and "sha256 mismatch" in result.err
    assert "VERIFY" in result.out
