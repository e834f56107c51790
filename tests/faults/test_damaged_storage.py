"""Damaged backups in storage: each one is named, never restored, and never hides the good backups next to it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from tests.conftest import MotoServer, PgCluster, fill_small, fingerprint, restore_leftovers, run_cli, write_targets

BUCKET = "damaged-backups"


class Stored:
    """The backup store's objects by key, in a folder or in the moto bucket."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root

    def read(self, key: str) -> bytes:
        if self.kind == "folder":
            return (self.root / key).read_bytes()
        return bytes(boto3.client("s3", region_name="us-east-1").get_object(Bucket=BUCKET, Key=key)["Body"].read())

    def write(self, key: str, data: bytes) -> None:
        if self.kind == "folder":
            (self.root / key).write_bytes(data)
        else:
            boto3.client("s3", region_name="us-east-1").put_object(Bucket=BUCKET, Key=key, Body=data)

    def delete(self, key: str) -> None:
        if self.kind == "folder":
            (self.root / key).unlink()
        else:
            boto3.client("s3", region_name="us-east-1").delete_object(Bucket=BUCKET, Key=key)


@dataclass
class World:
    """production holds a good backup; its data has changed since; beta is the restore's target."""

    env: dict[str, str]
    status_env: dict[str, str]  # a registry whose only scheduled target is production
    stored: Stored
    beta: str
    good_id: str
    good: dict[str, object]  # production's data when the good backup was taken


def backup(env: dict[str, str], target_env: str = "production") -> str:
    result = run_cli("backup", "app", target_env, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]  # "backup ID of app/production: ..."


@pytest.fixture(params=["folder", "s3"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "s3":
        request.getfixturevalue("aws")
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return kind


def make_world(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], kind: str) -> World:
    beta = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{beta}"')
    fill_small(pg, beta, "beta")
    fill_small(pg, dbname, "good")
    storage = f"file://{tmp_path / 'backups'}" if kind == "folder" else f"s3://{BUCKET}"
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta}, storage)
    status_targets = write_targets(tmp_path / "status.yaml", pg, {"production": dbname}, storage)
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    good_id = backup(env)
    good = fingerprint(pg, dbname)
    with pg.connect(dbname) as conn:
        conn.execute("UPDATE marker SET label = 'newer ' || id")
    return World(env, {**pg_env, "DB_BACKUP_TARGETS": str(status_targets)}, Stored(kind, tmp_path / "backups"), beta, good_id, good)


def key(backup_id: str, env: str = "production") -> str:
    return f"app/{env}/{backup_id}.dump"


def assert_passed_over(pg: PgCluster, world: World, damaged_id: str, reason: str) -> None:
    """What a user checks: list, status and restore name the damaged backup and go on with the good one."""
    listed = run_cli("list", "app", "production", "--json", env=world.env)
    assert listed.returncode == 0, listed.stderr
    entries = {e["id"]: e for e in json.loads(listed.stdout)}
    assert list(entries) == [damaged_id, world.good_id]
    assert entries[damaged_id]["status"] == "damaged" and entries[damaged_id]["complete"] is False
    assert reason in entries[damaged_id]["reason"]
    assert entries[world.good_id]["status"] == "complete" and entries[world.good_id]["complete"] is True
    assert entries[world.good_id]["reason"] is None and entries[world.good_id]["verified"] is False
    table = run_cli("list", "app", "production", env=world.env)
    assert table.returncode == 0, table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert f"damaged: {reason}" in rows[damaged_id] and rows[world.good_id].endswith("complete")
    assert "verified" not in table.stdout

    status = run_cli("status", "--json", env=world.status_env)
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)
    assert (row["newest"], row["status"], row["stale"]) == (world.good_id, "complete", False)
    assert [d["id"] for d in row["damaged"]] == [damaged_id] and reason in row["damaged"][0]["reason"]
    assert f"backup {damaged_id} is damaged ({reason}" in status.stderr and f"judged by {world.good_id}" in status.stderr

    before, databases = fingerprint(pg, world.beta), pg.databases()
    by_id = run_cli("restore", "app", "--from", "production", "--to", "beta", "--backup", damaged_id, env=world.env)
    assert by_id.returncode == 1, by_id.stderr
    last = by_id.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: backup {damaged_id} of app/production in ") and f"is damaged ({reason}" in last
    assert "cannot be restored" in last
    assert fingerprint(pg, world.beta) == before and pg.databases() == databases

    latest = run_cli("restore", "app", "--from", "production", "--to", "beta", env=world.env)
    assert latest.returncode == 0, latest.stderr
    assert f"skipping backup {damaged_id} of app/production" in latest.stderr and reason in latest.stderr
    assert f"backup {world.good_id} into app/beta" in latest.stdout
    assert fingerprint(pg, world.beta) == world.good
    assert restore_leftovers(pg) == set()


# Each spoils a backup as a fault would and returns the reason db-backup must give.


def _invalid_json(world: World, damaged_id: str) -> str:
    world.stored.write(key(damaged_id) + ".json", b'{"identifier": "app", "env": "production", "id": ')
    return "manifest is not valid JSON"


def _wrong_schema(world: World, damaged_id: str) -> str:
    manifest = json.loads(world.stored.read(key(damaged_id) + ".json"))
    manifest["size_bytes"] = "a lot"
    del manifest["sha256"]
    world.stored.write(key(damaged_id) + ".json", json.dumps(manifest).encode())
    return "manifest does not follow the manifest schema (2 problems: sha256, size_bytes)"


def _empty_dump(world: World, damaged_id: str) -> str:
    # The manifest agrees with it: a zero-byte dump is still never a backup.
    manifest = json.loads(world.stored.read(key(damaged_id) + ".json"))
    manifest.update(size_bytes=0, sha256=hashlib.sha256(b"").hexdigest())
    world.stored.write(key(damaged_id) + ".json", json.dumps(manifest).encode())
    world.stored.write(key(damaged_id), b"")
    return "dump is empty (0 bytes)"


def _missing_dump(world: World, damaged_id: str) -> str:
    world.stored.delete(key(damaged_id))
    return "manifest without dump: the dump is missing (expired by retention, or deleted)"


def _resized_dump(world: World, damaged_id: str, resize: Callable[[bytes], bytes]) -> str:
    data = world.stored.read(key(damaged_id))
    world.stored.write(key(damaged_id), resize(data))
    return f"dump is {len(resize(data))} bytes but its manifest says {len(data)}"


DAMAGES: dict[str, Callable[[World, str], str]] = {
    "invalid-json": _invalid_json,
    "wrong-schema": _wrong_schema,
    "zero-byte-dump": _empty_dump,
    "missing-dump": _missing_dump,
    "truncated-dump": lambda world, damaged_id: _resized_dump(world, damaged_id, lambda data: data[: len(data) // 2]),
    "longer-dump": lambda world, damaged_id: _resized_dump(world, damaged_id, lambda data: data + b"\0" * 100),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newer_backup_is_named_and_passed_over_in_a_folder(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], damage: str,
) -> None:
    """A newer backup damaged in the folder store: list and status exit 0 naming it, restore latest takes the older good one."""
    world = make_world(pg, dbname, tmp_path, pg_env, "folder")
    damaged_id = backup(world.env)
    reason = DAMAGES[damage](world, damaged_id)
    assert_passed_over(pg, world, damaged_id, reason)


@pytest.mark.parametrize("damage", ["invalid-json", "truncated-dump"])
def test_a_damaged_newer_backup_is_named_and_passed_over_on_s3(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], aws: MotoServer, damage: str,
) -> None:
    """The same on S3: list and status exit 0 naming the damaged backup, restore latest takes the older good one."""
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    world = make_world(pg, dbname, tmp_path, pg_env, "s3")
    damaged_id = backup(world.env)
    reason = DAMAGES[damage](world, damaged_id)
    assert_passed_over(pg, world, damaged_id, reason)


def test_another_environments_backup_copied_under_production_is_never_restored(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], store_kind: str,
) -> None:
    """beta's dump and manifest copied into production's place: damaged (it describes app/beta), latest restores production's own."""
    world = make_world(pg, dbname, tmp_path, pg_env, store_kind)
    beta_id = backup(world.env, "beta")
    for suffix in ("", ".json"):
        world.stored.write(key(beta_id) + suffix, world.stored.read(key(beta_id, "beta") + suffix))
    assert_passed_over(pg, world, beta_id, f"manifest does not match its place: it describes app/beta backup {beta_id}")


def test_a_wrong_checksum_is_caught_by_the_restore_and_leaves_the_target(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str],
) -> None:
    """A manifest whose sha256 is wrong looks complete (only reading the dump can tell); restoring it fails with exit 1, target unchanged."""
    world = make_world(pg, dbname, tmp_path, pg_env, "folder")
    wrong_id = backup(world.env)
    manifest = json.loads(world.stored.read(key(wrong_id) + ".json"))
    manifest["sha256"] = "0" * 64
    world.stored.write(key(wrong_id) + ".json", json.dumps(manifest).encode())
    listed = run_cli("list", "app", "production", "--json", env=world.env)
    assert listed.returncode == 0, listed.stderr
    assert [(e["id"], e["status"], e["verified"]) for e in json.loads(listed.stdout)] == [
        (wrong_id, "complete", False), (world.good_id, "complete", False),
    ]
    status = run_cli("status", "--json", env=world.status_env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)[0]["newest"] == wrong_id
    before, databases = fingerprint(pg, world.beta), pg.databases()
    for which in (["--backup", wrong_id], []):
        result = run_cli("restore", "app", "--from", "production", "--to", "beta", *which, env=world.env)
        assert result.returncode == 1, result.stderr
        assert "checksum mismatch" in result.stderr.strip().splitlines()[-1]
        assert fingerprint(pg, world.beta) == before
        assert pg.databases() == databases and restore_leftovers(pg) == set()
    older = run_cli("restore", "app", "--from", "production", "--to", "beta", "--backup", world.good_id, env=world.env)
    assert older.returncode == 0, older.stderr
    assert fingerprint(pg, world.beta) == world.good


def test_only_damaged_backups_fail_restore_and_status_naming_them(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str],
) -> None:
    """With no good backup left, restore latest exits 1 naming the damaged one and status calls the target stale."""
    world = make_world(pg, dbname, tmp_path, pg_env, "folder")
    reason = _invalid_json(world, world.good_id)
    before = fingerprint(pg, world.beta)
    result = run_cli("restore", "app", "--from", "production", "--to", "beta", env=world.env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: no backup of app/production in file://{tmp_path / 'backups'} can be restored: its only backup is damaged "
        f"(the newest, {world.good_id}: {reason})"
    )
    assert fingerprint(pg, world.beta) == before and restore_leftovers(pg) == set()
    status = run_cli("status", "--json", env=world.status_env)
    assert status.returncode == 1, status.stderr
    [row] = json.loads(status.stdout)
    assert (row["newest"], row["stale"], [d["id"] for d in row["damaged"]]) == (None, True, [world.good_id])
    assert f"backup {world.good_id} is damaged ({reason}); no good backup" in status.stderr
