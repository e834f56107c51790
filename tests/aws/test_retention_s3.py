"""Retention on S3 (moto over HTTP, real PostgreSQL): tier tags on every object of a backup, pins, the retention view."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from runner.catalog import list_backups, make_id
from runner.records import DrillRecord, put_record
from runner.retention import TIER_TAG
from runner.stores.s3 import S3Store
from runner.tiering import promote_next
from tests.conftest import MotoServer, PgCluster, fill_small, run_cli
from tests.helpers.backups import sample_manifest

BUCKET = "db-backup-retention-test"
PREFIX = "nightly"


def _rules(weekly_days: int = 35) -> list[dict[str, object]]:
    """The stack's lifecycle rules, one per tier, as infra/db-backup.yaml deploys them with its defaults."""
    tiers = {"daily": 7, "weekly": weekly_days, "monthly": 372}
    return [
        {"ID": f"tier-{tier}", "Status": "Enabled", "Filter": {"Tag": {"Key": TIER_TAG, "Value": tier}}, "Expiration": {"Days": days}}
        for tier, days in tiers.items()
    ] + [{"ID": "noncurrent", "Status": "Enabled", "Filter": {"Prefix": ""}, "NoncurrentVersionExpiration": {"NoncurrentDays": 30}}]


def _tags(key: str) -> dict[str, str]:
    s3 = boto3.client("s3", region_name="us-east-1")
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]}


def _keys() -> list[str]:
    s3 = boto3.client("s3", region_name="us-east-1")
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


@pytest.fixture
def env(aws: MotoServer, pg: PgCluster, dbname: str, tmp_path: Path) -> dict[str, str]:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": _rules()})  # type: ignore[typeddict-item]
    fill_small(pg, dbname, "prod")
    targets = tmp_path / "targets.yaml"
    targets.write_text(f"""version: 1
defaults: {{storage: "s3://{BUCKET}/{PREFIX}", region: us-east-1, compression: "zstd:1"}}
environments: {{production: {{protected: true}}}}
targets:
  - identifier: app
    env: production
    database: {{host: {pg.host}, port: {pg.port}, name: {dbname}, user: {pg.user}, password: "env:PGPASSWORD_TEST"}}
""")
    return {"DB_BACKUP_TARGETS": str(targets), "PGPASSWORD_TEST": pg.password or ""}


def test_every_object_of_a_backup_carries_its_tier(env: dict[str, str]) -> None:
    first = run_cli("backup", "app", "production", env=env)
    assert first.returncode == 0, first.stderr
    second = run_cli("backup", "app", "production", env=env)
    assert second.returncode == 0, second.stderr
    dumps = [k for k in _keys() if k.endswith(".dump")]
    assert len(dumps) == 2
    # The first backup stored is the first of its month (yearly is off): monthly; the second of the day is daily.
    assert [_tags(k)[TIER_TAG] for k in dumps] == ["monthly", "daily"]
    for dump in dumps:
        assert _tags(dump + ".json") == _tags(dump)
    verified = run_cli("verify", "app", "production", env=env)
    assert verified.returncode == 0, verified.stderr
    assert _tags(dumps[1] + ".verify.json") == {TIER_TAG: "daily"}

    shown = run_cli("retention", "app", "production", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    plan = json.loads(shown.stdout)
    assert plan["warnings"] == []
    assert plan["days"] == {"daily": 7, "weekly": 35, "monthly": 372}
    assert [(b["tier"], b["expired"]) for b in plan["backups"]] == [("daily", False), ("monthly", False)]


def test_pin_and_unpin_retag_every_object(env: dict[str, str]) -> None:
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    dump = next(k for k in _keys() if k.endswith(".dump"))
    backup_id = dump.rsplit("/", 1)[1].removesuffix(".dump")
    pinned = run_cli("pin", "app", "production", backup_id, "--reason", "before the v2 migration", env=env)
    assert pinned.returncode == 0, pinned.stderr
    objects = [k for k in _keys() if k.startswith(dump.removesuffix(".dump") + ".")]
    assert dump + ".pin.json" in objects
    assert all(_tags(k) == {TIER_TAG: "pinned", "db-backup-pinned-from": "monthly"} for k in objects)
    shown = run_cli("retention", "app", "production", env=env)
    assert "pinned by" in shown.stdout and "before the v2 migration" in shown.stdout and "never" in shown.stdout

    released = run_cli("unpin", "app", "production", backup_id, env=env)
    assert released.returncode == 0, released.stderr
    assert "monthly again" in released.stdout
    assert all(_tags(k) == {TIER_TAG: "monthly"} for k in objects)
    missing = run_cli("pin", "app", "production", "2020-01-01_00-00-00", env=env)
    assert missing.returncode == 2 and "no backup 2020-01-01_00-00-00" in missing.stderr


def test_retention_warns_when_the_bucket_keeps_other_ages(env: dict[str, str]) -> None:
    boto3.client("s3", region_name="us-east-1").put_bucket_lifecycle_configuration(
        Bucket=BUCKET, LifecycleConfiguration={"Rules": _rules(weekly_days=30)[1:]},  # type: ignore[typeddict-item]
    )
    shown = run_cli("retention", "app", "production", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "no lifecycle rule for daily backups, so they never expire" in shown.stdout
    assert "expires weekly backups after 30 days but targets.yaml's weekly: 5 means 35" in shown.stdout


def test_retag_tags_backups_written_before_tiers(aws: MotoServer, env: dict[str, str]) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    for when in (datetime(2026, 3, 1, 2, tzinfo=UTC), datetime(2026, 3, 2, 2, tzinfo=UTC)):
        key = f"{PREFIX}/app/production/{make_id(when)}.dump"
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" * 10)
        manifest = sample_manifest(key, identifier="app", env="production", created_at=when, size=10)
        s3.put_object(Bucket=BUCKET, Key=key + ".json", Body=manifest.to_json().encode())
    before = run_cli("retention", "app", "production", env=env)
    assert "2 backups have no tier tag" in before.stdout
    retagged = run_cli("retention", "app", "production", "--retag", env=env)
    assert retagged.returncode == 0, retagged.stderr
    assert "tagged backup 2026-03-01_02-00-00 as monthly" in retagged.stdout
    assert "tagged backup 2026-03-02_02-00-00 as weekly" in retagged.stdout  # a Monday
    assert _tags(f"{PREFIX}/app/production/2026-03-02_02-00-00.dump.json") == {TIER_TAG: "weekly"}
    assert "no tier tag" not in retagged.stdout


def test_a_failed_drill_promotes_the_next_good_backup_of_its_month(aws: MotoServer, env: dict[str, str]) -> None:
    store = S3Store(boto3.client("s3", region_name="us-east-1"), BUCKET, f"{PREFIX}/", 5 << 20, 1)
    start = datetime(2026, 3, 1, 2, tzinfo=UTC)  # a Sunday: its backup is March's monthly
    for day in range(3):
        when = start + timedelta(days=day)
        key = store.key("app", "production", make_id(when))
        tier = {0: "monthly", 1: "weekly", 2: "daily"}[day]
        upload = store.start_upload(key, "STANDARD", {TIER_TAG: tier})
        upload.write(b"x" * 10)
        upload.complete()
        store.put_manifest(sample_manifest(key, identifier="app", env="production", created_at=when, size=10), {TIER_TAG: tier})
    entries = sorted(list_backups(store, "app", "production"), key=lambda e: e.created_at)
    put_record(store, entries[0].key, DrillRecord(backup_id=entries[0].id, checked_at=start, ok=False, problem="x",
                                                   restore_duration_s=1.0, server="throwaway"))
    promoted = promote_next(store, "app", "production", entries[0])
    assert promoted == [f"backup {entries[1].id} promoted from weekly to monthly in place of {entries[0].id}"]
    assert all(_tags(k) == {TIER_TAG: "monthly"} for k in _keys() if k.startswith(entries[1].key.removesuffix(".dump")))
    assert _tags(entries[0].key) == {TIER_TAG: "monthly"}  # the failed one keeps its tier
    assert _tags(entries[2].key) == {TIER_TAG: "daily"}
    assert promote_next(store, "app", "production", entries[0]) == []  # the month is held now


def _old_backup(store: S3Store, when: datetime, tags: dict[str, str] | None, dump: bool = True) -> str:
    key = store.key("app", "production", make_id(when))
    if dump:
        upload = store.start_upload(key, "STANDARD", tags)
        upload.write(b"x" * 10)
        upload.complete()
    store.put_manifest(sample_manifest(key, identifier="app", env="production", created_at=when, size=10), tags)
    return make_id(when)


def _store() -> S3Store:
    return S3Store(boto3.client("s3", region_name="us-east-1"), BUCKET, f"{PREFIX}/", 5 << 20, 1)


def test_retention_copes_with_a_manifest_whose_dump_expired(aws: MotoServer, env: dict[str, str]) -> None:
    store = _store()
    gone = _old_backup(store, datetime(2026, 3, 1, 2, tzinfo=UTC), {TIER_TAG: "daily"}, dump=False)
    kept = _old_backup(store, datetime(2026, 3, 2, 2, tzinfo=UTC), {TIER_TAG: "weekly"})
    shown = run_cli("retention", "app", "production", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    rows = {b["id"]: b for b in json.loads(shown.stdout)["backups"]}
    assert rows[gone]["status"] == "damaged" and rows[gone]["tier"] == "daily" and rows[gone]["expired"] is True
    assert rows[kept]["tier"] == "weekly"
    assert run_cli("retention", "app", "production", "--retag", env=env).returncode == 0


def test_unpinning_a_backup_that_had_no_tier_gives_it_the_tier_it_earned(aws: MotoServer, env: dict[str, str]) -> None:
    store = _store()
    # Written before tiers existed: the first of March (monthly by the policy) and a Tuesday after a Monday (daily).
    first = _old_backup(store, datetime(2026, 3, 1, 2, tzinfo=UTC), None)
    _old_backup(store, datetime(2026, 3, 2, 2, tzinfo=UTC), None)
    third = _old_backup(store, datetime(2026, 3, 3, 2, tzinfo=UTC), None)
    for backup_id, earned in ((first, "monthly"), (third, "daily")):
        dump = store.key("app", "production", backup_id)
        assert run_cli("pin", "app", "production", backup_id, env=env).returncode == 0
        assert _tags(dump) == {TIER_TAG: "pinned", "db-backup-pinned-from": earned}
        released = run_cli("unpin", "app", "production", backup_id, env=env)
        assert released.returncode == 0, released.stderr
        assert f"{earned} again" in released.stdout
        assert _tags(dump) == _tags(dump + ".json") == {TIER_TAG: earned}  # never a default daily for March's monthly


def test_a_tier_turned_on_mid_month_goes_to_the_next_backup(aws: MotoServer, env: dict[str, str], tmp_path: Path) -> None:
    from runner.retention import RetentionPolicy, Tier
    from runner.tiering import tier_for_new

    store = _store()
    # 1 and 2 March were backed up while monthly was off: both daily, so March has no monthly yet.
    _old_backup(store, datetime(2026, 3, 1, 2, tzinfo=UTC), {TIER_TAG: "daily"})
    _old_backup(store, datetime(2026, 3, 2, 2, tzinfo=UTC), {TIER_TAG: "weekly"})
    policy = RetentionPolicy()
    assert tier_for_new(store, "app", "production", datetime(2026, 3, 3, 2, tzinfo=UTC), policy) is Tier.MONTHLY
    # Once March holds a monthly, the next one is daily again.
    _old_backup(store, datetime(2026, 3, 3, 2, tzinfo=UTC), {TIER_TAG: "monthly"})
    assert tier_for_new(store, "app", "production", datetime(2026, 3, 4, 2, tzinfo=UTC), policy) is Tier.DAILY


def test_rules_that_expire_regardless_of_tier_are_named(aws: MotoServer, env: dict[str, str]) -> None:
    rules = [
        *_rules(),
        {"ID": "old-stuff", "Status": "Enabled", "Filter": {"Prefix": f"{PREFIX}/"}, "Expiration": {"Days": 90}},
        {"ID": "pins-too", "Status": "Enabled", "Filter": {"Tag": {"Key": TIER_TAG, "Value": "pinned"}}, "Expiration": {"Days": 400}},
        {"ID": "other-target", "Status": "Enabled", "Filter": {"Prefix": f"{PREFIX}/other/"}, "Expiration": {"Days": 1}},
    ]
    boto3.client("s3", region_name="us-east-1").put_bucket_lifecycle_configuration(
        Bucket=BUCKET, LifecycleConfiguration={"Rules": rules},  # type: ignore[typeddict-item]
    )
    shown = run_cli("retention", "app", "production", env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"lifecycle rule old-stuff expires every object under {PREFIX}/ after 90 days, whatever its tier or pin" in shown.stdout
    assert "lifecycle rule pins-too expires pinned backups after 400 days" in shown.stdout
    assert "other-target" not in shown.stdout


def test_a_rule_on_some_objects_of_a_tier_is_named() -> None:
    from runner.stores.s3_tags import judge_rules

    sized = {"ID": "big-dailies", "Status": "Enabled", "Expiration": {"Days": 2},
             "Filter": {"And": {"Prefix": "nightly/app/", "ObjectSizeGreaterThan": 1000, "Tags": [{"Key": TIER_TAG, "Value": "daily"}]}}}
    legacy = {"ID": "legacy-prefix", "Status": "Enabled", "Prefix": "nightly/", "Expiration": {"Days": 30}}
    disabled = {"ID": "off", "Status": "Disabled", "Filter": {}, "Expiration": {"Days": 1}}
    narrower = {"ID": "one-db", "Status": "Enabled", "Filter": {"Prefix": "nightly/app/production/2026-"}, "Expiration": {"Days": 9}}
    seen = judge_rules([*_rules(), sized, legacy, disabled, narrower], "nightly/app/production/")
    assert seen.days == {"daily": 7, "weekly": 35, "monthly": 372}
    assert [p.split(" expires")[0] for p in seen.problems] == [
        "lifecycle rule big-dailies", "lifecycle rule legacy-prefix", "lifecycle rule one-db"]
    assert "a dump and its manifest may not expire together" in seen.problems[0]


def test_a_failed_verify_hands_the_month_to_the_next_good_backup(aws: MotoServer, env: dict[str, str]) -> None:
    store = _store()
    # The dumps' bytes do not match their manifests' sha256: any of them fails a verify.
    first = _old_backup(store, datetime(2026, 3, 1, 2, tzinfo=UTC), {TIER_TAG: "monthly"})
    second = _old_backup(store, datetime(2026, 3, 2, 2, tzinfo=UTC), {TIER_TAG: "weekly"})
    third = _old_backup(store, datetime(2026, 3, 3, 2, tzinfo=UTC), {TIER_TAG: "daily"})
    failed = run_cli("verify", "app", "production", "--backup", first, env=env)
    assert failed.returncode == 1, failed.stderr
    assert f"backup {second} promoted from weekly to monthly in place of {first}" in failed.stderr
    assert _tags(store.key("app", "production", second)) == _tags(store.key("app", "production", second) + ".json") == {TIER_TAG: "monthly"}
    assert _tags(store.key("app", "production", first)) == {TIER_TAG: "monthly"}
    assert _tags(store.key("app", "production", third)) == {TIER_TAG: "daily"}
