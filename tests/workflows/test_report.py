"""runner.report: one table of a scheduled run's result files; missing or failed means red."""

from __future__ import annotations

import json
from pathlib import Path

from runner.report import render, task_console_url
from runner.targets import parse_registry

REGISTRY = parse_registry("""version: 1
defaults: {storage: s3://bucket}
environments: {production: {protected: true}, beta: {}}
targets:
  - {identifier: app, env: production, schedule: nightly}
  - {identifier: app, env: beta, schedule: nightly}
  - {identifier: crm, env: beta}
""")
ARN = "arn:aws:ecs:us-east-1:123456789012:task/db-backup/0123abcd"


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
    markdown, ok = render(REGISTRY, tmp_path)
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
    markdown, ok = render(REGISTRY, tmp_path)
    assert not ok
    assert "1 of 2 succeeded" in markdown
    assert "| app/beta | ❌ failure |" in markdown
    assert "**app/beta**: error: pg_dump failed \\| exit 1" in markdown  # pipes cannot break the table


def test_a_target_without_a_result_file_counts_as_failed(tmp_path: Path) -> None:
    _ok(tmp_path, "production")
    markdown, ok = render(REGISTRY, tmp_path)
    assert not ok
    assert "| app/beta | ❌ missing |" in markdown
    assert "did not report" in markdown


def test_no_results_folder_at_all(tmp_path: Path) -> None:
    markdown, ok = render(REGISTRY, tmp_path / "absent")
    assert not ok
    assert markdown.count("❌ missing") == 2


def test_unreadable_file_is_reported_and_fails(tmp_path: Path) -> None:
    _ok(tmp_path, "production")
    _ok(tmp_path, "beta")
    (tmp_path / "junk.json").write_text("{not json")
    markdown, ok = render(REGISTRY, tmp_path)
    assert not ok
    assert "junk.json is not readable JSON" in markdown


def test_task_console_url() -> None:
    # The same link as the job summary's (github.task_url): one builder, China/GovCloud consoles included.
    assert task_console_url(ARN) == ("https://us-east-1.console.aws.amazon.com/ecs/v2/clusters/db-backup/tasks/"
                                     "0123abcd/configuration?region=us-east-1")
    assert task_console_url("arn:aws-cn:ecs:cn-north-1:123456789012:task/db-backup/0123abcd") == (
        "https://cn-north-1.console.amazonaws.cn/ecs/v2/clusters/db-backup/tasks/0123abcd/configuration?region=cn-north-1")
    assert task_console_url("not-an-arn") is None
