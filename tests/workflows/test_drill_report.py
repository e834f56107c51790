"""runner.drill_report: one table of a drill run's results and the drill records beside the backups."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runner.drill_report import expected_targets, render_drills
from runner.errors import BadInput, InfraError
from runner.records import DrillRecord, put_record
from runner.stores import BackupStore
from runner.stores.local import LocalStore
from runner.targets import Registry, Target
from tests.helpers.backups import write_manifest
from tests.helpers.targets import folder_registry

WHEN = datetime(2025, 1, 5, 3, 17, tzinfo=UTC)


def _registry(store: Path) -> Registry:
    return folder_registry(store, "- {identifier: crm, env: beta}")


def _result(folder: Path, identifier: str, env: str, **data: object) -> None:
    path = folder / f"db-backup-drill-{identifier}--{env}" / f"{identifier}--{env}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"identifier": identifier, "env": env, "command": "drill", **data}))


def _drilled(store: LocalStore, env: str, *, ok: bool, problem: str | None = None) -> str:
    manifest = write_manifest(store, "app", env, WHEN, None)
    put_record(store, manifest.key, DrillRecord(
        backup_id=manifest.id, checked_at=WHEN + timedelta(days=1), ok=ok, problem=problem, restore_duration_s=125.0,
        server="throwaway cluster (PostgreSQL 17.2)", tables={"public.a": 1200, "public.b": 34},
        restored_tables={"public.a": 1200, "public.b": 34} if ok else {}))
    return manifest.id


def test_every_nightly_target_with_its_restore_duration_and_rows(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    good = _drilled(store, "production", ok=True)
    bad = _drilled(store, "beta", ok=False, problem="role app_reader does not exist")
    results = tmp_path / "results"
    _result(results, "app", "production", result="success", backup_id=good, logs_url="https://logs.example/p")
    _result(results, "app", "beta", result="failure", error="error: drill of app/beta failed")  # no backup id: found by record
    registry = _registry(tmp_path / "store")
    markdown, ok = render_drills(registry, results, lambda t: store, expected_targets(registry, [], "nightly"))
    assert not ok
    assert "Restore drills: 1 of 2 passed" in markdown
    assert "| Target | Backup | Result | Restore duration | Rows | Links |" in markdown
    assert f"| app/production | {good} | ✅ passed | 2m 05s | 1,234 in 2 tables | [logs](https://logs.example/p) |" in markdown
    assert f"| app/beta | {bad} | ❌ failed | 2m 05s | 1,234 in 2 tables | - |" in markdown  # the dump's counts
    assert "**app/beta**: role app_reader does not exist" in markdown  # the record's reason beats stderr's
    assert "crm/beta" not in markdown


def test_a_dispatched_drill_expects_only_its_target_and_a_missing_result_fails(tmp_path: Path) -> None:
    registry = _registry(tmp_path / "store")
    markdown, ok = render_drills(registry, tmp_path / "none", lambda t: LocalStore(tmp_path / "store"),
                                 expected_targets(registry, ["app/beta"], "nightly"))
    assert not ok
    assert "Restore drills: 0 of 1 passed" in markdown
    assert "| app/beta | - | ❌ missing | - | - | - |" in markdown
    assert "app/production" not in markdown


def test_an_unreadable_store_leaves_cells_unknown(tmp_path: Path) -> None:
    def unreadable(target: Target) -> BackupStore:
        raise InfraError("AccessDenied")

    results = tmp_path / "results"
    _result(results, "app", "beta", result="success", backup_id="2025-01-05_03-17-00")
    registry = _registry(tmp_path / "store")
    markdown, ok = render_drills(registry, results, unreadable, expected_targets(registry, ["app/beta"], "nightly"))
    assert ok  # the job's exit code decides; the record is detail
    assert "| app/beta | 2025-01-05_03-17-00 | ✅ passed | unknown | unknown | - |" in markdown


def test_target_names_must_be_ident_slash_env(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="is not IDENT/ENV"):
        expected_targets(_registry(tmp_path), ["app"], "nightly")
