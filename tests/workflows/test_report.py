"""runner.report: one table of a scheduled run's result files; missing or failed means red."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from runner.catalog import make_id
from runner.errors import InfraError
from runner.records import DrillRecord, put_record
from runner.report import render, task_console_url
from runner.stores import BackupStore
from runner.stores.local import LocalStore
from runner.targets import Registry, Target, parse_registry
from tests.helpers.backups import write_manifest
from tests.helpers.targets import folder_registry

REGISTRY = parse_registry("""version: 1
defaults: {storage: s3://bucket}
environments: {production: {protected: true}, beta: {}}
targets:
  - {identifier: app, env: production, schedule: nightly}
  - {identifier: app, env: beta, schedule: nightly}
  - {identifier: crm, env: beta}
""")
ARN = "arn:aws:ecs:us-east-1:123456789012:task/db-backup/0123abcd"
NOW = datetime(2025, 1, 9, 4, 0, tzinfo=UTC)


def _unreadable(target: Target) -> BackupStore:
    raise InfraError(f"cannot list s3://bucket/{target.identifier}/{target.env}/: AccessDenied")


def _render(registry: Registry, folder: Path) -> tuple[str, bool]:
    return render(registry, folder, _unreadable, NOW)


def _write(folder: Path, name: str, **data: object) -> None:
    path = folder / f"db-backup-result-{name}" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _ok(folder: Path, env: str) -> None:
    _write(folder, f"app--{env}", identifier="app", env=env, result="success", backup_id="2025-01-02_03-17-00",
           size_bytes=5 * 1024 * 1024, duration_s=125, task_arn=ARN, logs_url="https://logs.example/x",
           run_url="https://github.com/o/r/actions/runs/1")


def test_all_succeeded(tmp_path: Path) -> None:
    _ok(tmp_path, "production")
    _ok(tmp_path, "beta")
    markdown, ok = _render(REGISTRY, tmp_path)
    assert ok
    assert "Nightly backups: 2 of 2 succeeded" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| app/production"))
    assert "✅ success" in row and "2025-01-02_03-17-00" in row and "5.0 MiB" in row and "2m 05s" in row
    assert "[logs](https://logs.example/x)" in row and "[job](https://github.com/o/r/actions/runs/1)" in row
    assert f"[task]({task_console_url(ARN)})" in row
    assert "crm/beta" not in markdown  # not scheduled


def test_one_failure_turns_the_report_red(tmp_path: Path) -> None:
    _ok(tmp_path, "production")
    _write(tmp_path, "app--beta", identifier="app", env="beta", result="failure",
           error="error: pg_dump failed | exit 1")
    markdown, ok = _render(REGISTRY, tmp_path)
    assert not ok
    assert "1 of 2 succeeded" in markdown
    assert "| app/beta | ❌ failure |" in markdown
    assert "**app/beta**: error: pg_dump failed \\| exit 1" in markdown  # pipes cannot break the table


def test_a_target_without_a_result_file_counts_as_failed(tmp_path: Path) -> None:
    _ok(tmp_path, "production")
    markdown, ok = _render(REGISTRY, tmp_path)
    assert not ok
    assert "| app/beta | ❌ missing |" in markdown
    assert "did not report" in markdown


def test_no_results_folder_at_all(tmp_path: Path) -> None:
    markdown, ok = _render(REGISTRY, tmp_path / "absent")
    assert not ok
    assert markdown.count("❌ missing") == 2


def test_unreadable_file_is_reported_and_fails(tmp_path: Path) -> None:
    _ok(tmp_path, "production")
    _ok(tmp_path, "beta")
    (tmp_path / "junk.json").write_text("{not json")
    markdown, ok = _render(REGISTRY, tmp_path)
    assert not ok
    assert "junk.json is not readable JSON" in markdown


def test_task_console_url() -> None:
    # The same link as the job summary's (github.task_url): one builder, China/GovCloud consoles included.
    assert task_console_url(ARN) == ("https://us-east-1.console.aws.amazon.com/ecs/v2/clusters/db-backup/tasks/"
                                     "0123abcd/configuration?region=us-east-1")
    assert task_console_url("arn:aws-cn:ecs:cn-north-1:123456789012:task/db-backup/0123abcd") == (
        "https://cn-north-1.console.amazonaws.cn/ecs/v2/clusters/db-backup/tasks/0123abcd/configuration?region=cn-north-1")
    assert task_console_url("not-an-arn") is None


def test_a_store_that_cannot_be_read_makes_cells_unknown_not_a_failed_report(tmp_path: Path) -> None:
    _ok(tmp_path, "production")
    _ok(tmp_path, "beta")
    markdown, ok = _render(REGISTRY, tmp_path)
    assert ok
    row = next(line for line in markdown.splitlines() if line.startswith("| app/production"))
    assert [cell.strip() for cell in row.split("|")].count("unknown") == 3  # dump, trend and last drill


def _local_registry(store: Path) -> Registry:
    return folder_registry(store)


def test_date_totals_trend_and_last_drill(tmp_path: Path) -> None:
    """app/production: seven earlier nights of 1000 bytes, tonight 1030, drilled two days ago; app/beta:
    tonight's backup is its first, never drilled."""
    store = LocalStore(tmp_path / "store")
    first = datetime(2025, 1, 1, 3, 17, tzinfo=UTC)
    for night in range(7):
        manifest = write_manifest(store, "app", "production", first + timedelta(days=night), None, size=1000)
    put_record(store, manifest.key, DrillRecord(
        backup_id=manifest.id, checked_at=NOW - timedelta(days=2), ok=True, problem=None, restore_duration_s=42.0,
        server="throwaway cluster (PostgreSQL 17.2)", tables={"public.t": 10}, restored_tables={"public.t": 10}))
    tonight = first + timedelta(days=8)
    write_manifest(store, "app", "production", tonight, None, size=1030)
    write_manifest(store, "app", "beta", tonight, None, size=2 * 1024 * 1024)
    results = tmp_path / "results"
    started = tonight.timestamp()
    _write(results, "app--production", identifier="app", env="production", result="success", backup_id=make_id(tonight),
           size_bytes=1030, duration_s=60, finished_at=started + 60)
    _write(results, "app--beta", identifier="app", env="beta", result="success", backup_id=make_id(tonight),
           size_bytes=2 * 1024 * 1024, duration_s=90, finished_at=started + 95)

    markdown, ok = render(_local_registry(tmp_path / "store"), results, lambda t: store, NOW)
    assert ok, markdown
    assert "Run of 2025-01-09 03:17 UTC · 2 targets · 2.0 MiB written · 2m 30s of backup time" in markdown
    assert "| Target | Result | Backup | Size | Dump | Trend | Duration | Last drill | Links |" in markdown
    rows = {line.split("|")[1].strip(): line for line in markdown.splitlines() if line.startswith("| app/")}
    assert "| +3% vs median of 7 |" in rows["app/production"]
    assert f"| ✅ passed 48h ago ({manifest.id}) |" in rows["app/production"]
    assert "| first backup |" in rows["app/beta"] and "| never |" in rows["app/beta"]
    # The dump's own figures from its manifest, not the job's: these manifests know no original size and took 1 s.
    assert "| 1.0s at 1.0 KiB/s compressed |" in rows["app/production"] and "| 1m 00s |" in rows["app/production"]


def test_the_dump_cell_shows_original_size_ratio_rate_and_the_dumps_duration(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    tonight = datetime(2025, 1, 9, 3, 17, tzinfo=UTC)
    manifest = write_manifest(store, "app", "production", tonight, None, size=300 * 1024)
    store.put_manifest(replace(manifest, uncompressed_bytes=1200 * 1024, duration_s=2.0))
    results = tmp_path / "results"
    _write(results, "app--production", identifier="app", env="production", result="success", backup_id=manifest.id,
           size_bytes=300 * 1024, duration_s=95)
    markdown, _ = render(_local_registry(tmp_path / "store"), results, lambda t: store, NOW)
    row = next(line for line in markdown.splitlines() if line.startswith("| app/production"))
    assert "| 1.2 MiB original (4.00:1), 2.0s at 600.0 KiB/s uncompressed |" in row and "| 1m 35s |" in row, row


def test_failed_drill_and_shrunk_backup_are_shown(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    first = datetime(2025, 1, 1, 3, 17, tzinfo=UTC)
    for night, size in enumerate([1000, 1200, 900]):
        manifest = write_manifest(store, "app", "production", first + timedelta(days=night), None, size=size)
    put_record(store, manifest.key, DrillRecord(
        backup_id=manifest.id, checked_at=NOW - timedelta(hours=5), ok=False, problem="extension postgis is not available",
        restore_duration_s=3.0, server="throwaway cluster (PostgreSQL 17.2)"))
    tonight = write_manifest(store, "app", "production", first + timedelta(days=3), None, size=400)
    results = tmp_path / "results"
    _write(results, "app--production", identifier="app", env="production", result="success", backup_id=tonight.id,
           size_bytes=400, duration_s=10)
    markdown, _ = render(_local_registry(tmp_path / "store"), results, lambda t: store, NOW)
    row = next(line for line in markdown.splitlines() if line.startswith("| app/production"))
    assert "| \N{MINUS SIGN}60% vs median of 3 ⚠️ shrink alarm |" in row  # median of 1000, 1200, 900 is 1000; alarm below 50%
    assert f"| ❌ failed 5h ago ({manifest.id}): extension postgis is not available |" in row


def test_odd_numbers_in_a_result_file_are_unknown_not_a_crash(tmp_path: Path) -> None:
    # A result file is data: a NaN finish time or a negative duration is unknown, and the report still renders.
    _ok(tmp_path, "production")
    path = tmp_path / "db-backup-result-app--beta" / "app--beta.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"identifier": "app", "env": "beta", "result": "success", "backup_id": "2025-01-02_03-17-00",'
                    ' "size_bytes": 1024, "duration_s": -3, "finished_at": NaN}')
    markdown, ok = _render(REGISTRY, tmp_path)
    assert ok, markdown
    assert "Nightly backups: 2 of 2 succeeded" in markdown and "Run of " in markdown
