"""Promises of a backup under faults: killed at any moment it stores nothing half-written that
looks good, leaves no password on disk, and the next backup cleans up and succeeds; a held lock
fails it in bounded time, naming the table."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import pytest

from tests.conftest import PgCluster, fill_rich, fill_small, lock_waiters, run_cli, table_locked, wait_for, write_targets
from tests.faults.conftest import Run, files_holding, private_tmp

BACKUP = ("backup", "app", "production")
BUCKET = "kill-backups"


def _statuses(env: dict[str, str]) -> list[str]:
    listed = run_cli("list", "app", "production", "--json", "--limit", "100", env=env)
    assert listed.returncode == 0, listed.stderr
    return [entry["status"] for entry in json.loads(listed.stdout)]


@pytest.fixture(params=["folder", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "folder":
        return f"file://{tmp_path / 'backups'}"
    request.getfixturevalue("aws")
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}"


def _unfinished(storage: str, backups: Path) -> list[str]:
    """Partial files (folder) or open multipart uploads (S3): what a killed backup leaves."""
    if storage.startswith("file://"):
        return sorted(p.name for p in backups.rglob(".*"))
    return [u["Key"] for u in boto3.client("s3", region_name="us-east-1").list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def _stored(storage: str, backups: Path) -> dict[str, bytes]:
    """Every stored object by key: the dumps, their manifests, anything else."""
    if storage.startswith("file://"):
        return {str(p.relative_to(backups)): p.read_bytes() for p in backups.rglob("*") if p.is_file()}
    s3 = boto3.client("s3", region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    return {key: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}


def _check_every_manifest(storage: str, backups: Path) -> int:
    """Each manifest's dump has exactly the bytes it records (size and sha256); how many there are."""
    stored = _stored(storage, backups)
    manifests = [key for key in stored if key.endswith(".dump.json")]
    for key in manifests:
        manifest = json.loads(stored[key])
        dump = stored[key.removesuffix(".json")]
        assert (len(dump), hashlib.sha256(dump).hexdigest()) == (manifest["size_bytes"], manifest["sha256"]), key
    return len(manifests)


def test_backup_killed_at_seeded_random_moments(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], start_cli: Callable[..., Run], storage: str
) -> None:
    """Kills -9 of a backup's process tree while it works: every manifest's dump is whole, nothing unfinished survives
    the next run, and no password is in any file or stored object."""
    fill_rich(pg, dbname)
    fill_small(pg, dbname, "x")
    backups = tmp_path / "backups"
    backups.mkdir()
    tmp = private_tmp(tmp_path)
    (tmp_path / "home").mkdir()
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, storage)
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "TMPDIR": str(tmp), "HOME": str(tmp_path / "home")}

    def started(run: Run) -> None:
        wait_for(lambda: "INFO backing up " in run.stderr() or run.proc.poll() is not None, "the backup to start its work")

    measured = start_cli(*BACKUP, env=env, name="measured")
    started(measured)
    began = time.monotonic()
    assert measured.wait() == 0, measured.stderr()
    work = time.monotonic() - began
    # One kill at a known moment: pg_dump blocked on a lock, the upload open.
    with table_locked(pg, dbname, "marker"):
        held = start_cli(*BACKUP, env=env, name="backup-held")
        wait_for(lambda: lock_waiters(pg, dbname) > 0 and bool(_unfinished(storage, backups)), "the backup to block mid-upload")
        held.kill_tree()
    rnd = random.Random(f"backup-{storage[:2]}")
    landed = 0
    for attempt in range(8):
        run = start_cli(*BACKUP, env=env, name=f"backup-{attempt}")
        started(run)
        time.sleep(rnd.uniform(0.0, 0.8 * work))
        landed += run.proc.poll() is None
        run.kill_tree()
        assert files_holding(pg.password, tmp_path) == []
        assert not any(pg.password.encode() in body for body in _stored(storage, backups).values())
        assert "damaged" not in _statuses(env)
        _check_every_manifest(storage, backups)
    assert landed >= 5, f"only {landed} of 8 kills landed while the backup was still running"
    done = run_cli(*BACKUP, env=env)
    assert done.returncode == 0, done.stderr
    assert _unfinished(storage, backups) == [], "what a killed backup left survived the next run"
    assert _check_every_manifest(storage, backups) == _statuses(env).count("complete") >= 2
    restored = run_cli("restore", "app", "--from", "production", "--to-url", pg.url(f"{dbname}__check", password=False),
                       env={**env, "PGPASSWORD": pg.password})
    assert restored.returncode == 0, restored.stderr


def test_a_table_locked_by_another_session_fails_the_backup_in_bounded_time(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]
) -> None:
    """pg_dump waits lock_wait_timeout for a table held ACCESS EXCLUSIVE, then the backup fails naming it; nothing is stored."""
    fill_small(pg, dbname, "x")
    backups = tmp_path / "backups"
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, f"file://{backups}", extra="lock_wait_timeout: 2s")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    with table_locked(pg, dbname, "marker"):
        began = time.monotonic()
        done = run_cli(*BACKUP, env=env, timeout=120)
        elapsed = time.monotonic() - began
    assert done.returncode == 1
    assert "could not lock public.marker within 2.0s (lock_wait_timeout)" in done.stderr
    assert "raise lock_wait_timeout in targets.yaml" in done.stderr
    assert elapsed < 60
    assert [p for p in backups.rglob("*") if p.is_file()] == []
    wait_for(lambda: lock_waiters(pg, dbname) == 0, "no one to wait on the lock any more")
