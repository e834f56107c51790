"""Backups of one target that run at the same time: distinct ids, both complete, neither disturbs the other."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from runner.aws import AwsClients
from runner.backup import BackupResult, run_backup
from runner.catalog import make_id
from runner.pg import session
from runner.services import Services
from runner.settings import Settings
from runner.stores.local import LocalStore
from runner.stores.s3 import S3Store
from runner.targets import load_registry
from tests.conftest import PgCluster, fill_small, lock_waiters, run_cli, run_in_threads, table_locked, wait_for, write_targets
from tests.faults.conftest import Run
from tests.helpers.clock import FakeClock
from tests.helpers.moto import real_upload_times

BUCKET = "concurrent-backups"


def _storage(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if kind == "folder":
        return f"file://{tmp_path / 'backups'}"
    real_upload_times(monkeypatch)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}"


def _leftovers(kind: str, tmp_path: Path) -> list[str]:
    """Hidden partial files (folder) or open multipart uploads (S3)."""
    if kind == "folder":
        return sorted(p.name for p in (tmp_path / "backups").rglob(".*"))
    return [u["Key"] for u in boto3.client("s3", region_name="us-east-1").list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def _listed(env: dict[str, str]) -> list[dict[str, Any]]:
    listed = run_cli("list", "app", "production", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    entries: list[dict[str, Any]] = json.loads(listed.stdout)
    return entries


@pytest.fixture(params=["folder", "s3"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "s3":
        request.getfixturevalue("aws")
    return kind


@pytest.mark.parametrize("decided_by", ["server lock", "store alone"])
def test_two_backups_in_the_same_second_get_distinct_ids_and_both_complete(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, store_kind: str,
    decided_by: str,
) -> None:
    """Two backups of one target started in the same second, racing for its first id: both succeed, with ids _1 and _2.

    Usually the upload locks on the database server decide the race; should both runs take the
    lock (as two sessions that cannot see each other's would), the store's own reservation does.
    """
    if decided_by == "store alone":
        monkeypatch.setattr(session.UploadLocks, "claim", lambda _self, _name: True)
        monkeypatch.setattr(session.UploadLocks, "release", lambda _self, _name: None)
    fill_small(pg, dbname, "prod")
    storage = _storage(store_kind, tmp_path, monkeypatch)
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, storage)
    for name, value in {**pg_env, "DB_BACKUP_PG_BINDIR": str(pg.bindir)}.items():
        monkeypatch.setenv(name, value)
    target = load_registry(targets).get("app", "production")
    now = datetime.now(UTC).replace(microsecond=0)
    # Both runs reach their first reservation together, so both try the same id at the same moment.
    barrier = threading.Barrier(2, timeout=60)
    waited = threading.local()
    tried: list[str] = []
    store_class = LocalStore if store_kind == "folder" else S3Store
    original = store_class.start_upload

    def start_upload(self: Any, key: str, storage_class: str, tags: Any = None) -> Any:
        tried.append(key.rsplit("/", 1)[1])
        if not getattr(waited, "done", False):
            waited.done = True
            barrier.wait()
        return original(self, key, storage_class, tags)

    monkeypatch.setattr(store_class, "start_upload", start_upload)
    results: list[BackupResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(run_backup(target, Services(settings=Settings(), clock=FakeClock(now), aws=AwsClients())))
        except BaseException as exc:
            errors.append(exc)

    run_in_threads(2, run, timeout=120)
    assert errors == []
    first, second = make_id(now), make_id(now, 2)
    assert sorted(r.manifest.id for r in results) == [first, second]
    if decided_by == "store alone":
        assert sorted(tried) == [f"{first}.dump", f"{first}.dump", f"{second}.dump"]  # one lost the race and moved on
    else:
        assert sorted(tried) == [f"{first}.dump", f"{second}.dump"]  # the lock sent the second straight on
    entries = _listed({**pg_env, "DB_BACKUP_TARGETS": str(targets)})
    assert sorted((e["id"], e["status"]) for e in entries) == [(first, "complete"), (second, "complete")]
    assert _leftovers(store_kind, tmp_path) == []


def test_a_running_backup_is_left_alone_by_the_next_one(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, store_kind: str,
    start_cli: Callable[..., Run],
) -> None:
    """A second backup while the first waits mid-dump: its cleanup leaves the first's partial or upload alone, both complete."""
    fill_small(pg, dbname, "prod")
    storage = _storage(store_kind, tmp_path, monkeypatch)
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, storage)
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    dead = tmp_path / "backups/app/production/.2020-01-01_00-00-00.dump.partial"
    # What a killed run leaves, which no one holds: the first backup's cleanup removes it.
    if store_kind == "folder":
        dead.parent.mkdir(parents=True)
        dead.write_bytes(b"half a dump")
    else:
        boto3.client("s3", region_name="us-east-1").create_multipart_upload(Bucket=BUCKET, Key="app/production/2020-01-01_00-00-00.dump")
    with table_locked(pg, dbname, "marker"):
        first = start_cli("backup", "app", "production", env=env, name="first")
        wait_for(lambda: lock_waiters(pg, dbname) == 1 and len(_leftovers(store_kind, tmp_path)) == 1, "the first backup to hold its id mid-dump")
        second = start_cli("backup", "app", "production", env=env, name="second")
        wait_for(lambda: lock_waiters(pg, dbname) == 2 and len(_leftovers(store_kind, tmp_path)) == 2,
                 "the second backup to clean up, hold its own id and block too")
    assert first.wait(timeout=120) == 0, first.stderr()
    assert second.wait(timeout=120) == 0, second.stderr()
    entries = _listed(env)
    assert [e["status"] for e in entries] == ["complete", "complete"] and entries[0]["id"] != entries[1]["id"]
    assert _leftovers(store_kind, tmp_path) == []
    if store_kind == "folder":
        assert f"removed {dead}, a partial file left by a backup that did not finish" in first.stderr()
        assert "aborted the multipart upload" not in first.stderr() + second.stderr()
    else:
        assert f"aborted the multipart upload of s3://{BUCKET}/app/production/2020-01-01_00-00-00.dump" in first.stderr()
        assert (first.stderr() + second.stderr()).count("aborted the multipart upload") == 1  # never the live one
