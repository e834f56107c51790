"""What a new user meets first: --version, a missing targets file, counts in words, list's columns, workflow diffs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pytest

from runner.catalog import list_page, make_id
from runner.manifest import Manifest
from runner.stores.local import LocalStore
from runner.words import plural
from tests.conftest import run_cli
from tests.helpers.backups import sample_manifest, write_manifest
from tests.helpers.cli import run_main
from tests.helpers.targets import write_targets_file

NOW = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)


def test_version_prints_the_installed_version() -> None:
    for flag in ("--version", "-V"):
        result = run_cli(flag)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"db-backup {version('db-backup')}\n"
        assert result.stderr == ""


def _not_found(path: Path, origin: str) -> str:
    return (f"error: targets.yaml not found at {path} ({origin}); create it (see targets.example.yaml / docs/targets.md) "
            "or pass --targets PATH / DB_BACKUP_TARGETS")


def test_a_missing_targets_file_says_where_it_was_looked_for_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DB_BACKUP_TARGETS", raising=False)
    absent = tmp_path / "nowhere" / "targets.yaml"
    result = run_cli("--targets", str(absent), "validate")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [_not_found(absent, f"from --targets {absent}")]

    from_env = run_cli("list", "app", "production", env={"DB_BACKUP_TARGETS": "nowhere/targets.yaml"}, cwd=tmp_path)
    assert from_env.returncode == 2
    assert from_env.stderr.splitlines() == [_not_found(absent, "from DB_BACKUP_TARGETS=nowhere/targets.yaml")]

    # --targets wins over the variable; the relative path is shown resolved.
    both = run_cli("--targets", "other.yaml", "validate", env={"DB_BACKUP_TARGETS": str(absent)}, cwd=tmp_path)
    assert both.returncode == 2
    assert both.stderr.splitlines() == [_not_found(tmp_path / "other.yaml", "from --targets other.yaml")]

    default = run_cli("validate", cwd=tmp_path)
    assert default.returncode == 2
    assert default.stderr.splitlines() == [
        _not_found(tmp_path / "targets.yaml", "the default path, targets.yaml in the current folder")]


def test_a_folder_as_targets_file_says_so(tmp_path: Path) -> None:
    result = run_cli("--targets", str(tmp_path), "validate")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: targets file {tmp_path} is a folder; point --targets (or DB_BACKUP_TARGETS) at the targets.yaml file inside it"
    ]


def test_plural() -> None:
    assert plural(0, "target") == "0 targets"
    assert plural(1, "target") == "1 target"
    assert plural(2, "target") == "2 targets"
    assert plural(1, "entry", "entries") == "1 entry"
    assert plural(3, "entry", "entries") == "3 entries"


def test_counts_read_right_for_one(tmp_path: Path) -> None:
    one = tmp_path / "targets.yaml"
    one.write_text(f'version: 1\ndefaults: {{storage: "file://{tmp_path}"}}\nenvironments: {{production: {{}}}}\n'
                   "targets:\n  - {identifier: app, env: production}\n")
    result = run_cli("--targets", str(one), "validate")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{one}: 1 target in 1 environment, valid\n"
    two = write_targets_file(tmp_path / "two.yaml", [f'storage: "file://{tmp_path / "b"}"'],
                             ["- {identifier: app, env: production}", "- {identifier: app, env: beta}"])
    assert run_cli("--targets", str(two), "validate").stdout == f"{two}: 2 targets in 3 environments, valid\n"


def test_one_problem_in_targets_yaml_is_one_problem(tmp_path: Path) -> None:
    bad = write_targets_file(tmp_path / "targets.yaml", [f'storage: "file://{tmp_path}"'], ["- {identifier: app, env: nowhere}"])
    result = run_cli("--targets", str(bad), "validate")
    assert result.returncode == 2
    header, *rest = result.stderr.splitlines()
    assert header == f"error: {bad} is not valid (1 problem); fix it below:"
    assert len(rest) == 1 and "nowhere" in rest[0]


def _store(tmp_path: Path, count: int) -> tuple[Path, list[Manifest]]:
    root = tmp_path / "backups"
    store = LocalStore(root)
    made = [write_manifest(store, "app", "production", NOW - timedelta(days=day), None) for day in range(count)]
    targets = write_targets_file(tmp_path / "targets.yaml", [f'storage: "file://{root}"'], ["- {identifier: app, env: production}"])
    return targets, made


def test_list_page_knows_the_total_without_reading_hidden_manifests(tmp_path: Path) -> None:
    _store(tmp_path, 5)
    root = tmp_path / "backups"
    store = LocalStore(root)
    hidden = store.root / store.key("app", "production", make_id(NOW - timedelta(days=4)))
    Path(str(hidden) + ".json").write_text("not json")  # would make the entry damaged, were it read
    page = list_page(store, "app", "production", limit=2)
    assert page.total == 5
    assert [e.id for e in page.entries] == [make_id(NOW), make_id(NOW - timedelta(days=1))]
    assert len(list_page(store, "app", "production").entries) == 5


def test_list_shows_original_size_duration_and_how_many_are_hidden(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    targets, made = _store(tmp_path, 3)
    root = tmp_path / "backups"
    store = LocalStore(root)
    # One backup with an original size recorded (zstd, or no compression, know it), and a long dump.
    newest = made[0]
    richer = sample_manifest(newest.key, identifier="app", env="production", created_at=newest.created_at, size=newest.size_bytes,
                             duration_s=125.0)
    store.put_manifest(Manifest(**{**richer.__dict__, "uncompressed_bytes": 5 << 20}))
    shown = run_main(["--targets", str(targets), "list", "app", "production", "--limit", "2"], capsys)
    assert shown.code == 0, shown.err
    header, first, second, note = shown.out.splitlines()
    assert header.split() == ["ID", "CREATED", "SIZE", "ORIGINAL", "DURATION", "SHA256", "STATUS"]
    assert first.startswith(newest.id) and "5.0 MiB" in first.split("  ") and "2m 05s" in first
    assert second.startswith(made[1].id) and " - " in second and "1.0s" in second
    assert note == "2 of 3 backups shown (use --limit to see more)"

    everything = run_main(["--targets", str(targets), "list", "app", "production"], capsys)
    assert "shown" not in everything.out and len(everything.out.splitlines()) == 4

    listed = run_main(["--targets", str(targets), "list", "app", "production", "--json", "--limit", "2"], capsys)
    rows = json.loads(listed.out)  # still the array older scripts read, with new fields only
    assert [r["id"] for r in rows] == [newest.id, made[1].id]
    assert {"id", "key", "created", "size_bytes", "sha256", "status", "complete", "verified", "reason", "compression",
            "pinned"} <= set(rows[0])
    assert (rows[0]["uncompressed_bytes"], rows[0]["duration_s"]) == (5 << 20, 125.0)
    assert (rows[1]["uncompressed_bytes"], rows[1]["duration_s"]) == (None, 1.0)
    assert "2 of 3 backups shown (use --limit to see more)" in listed.err


WORKFLOW = """name: backup
on:
  workflow_dispatch:
    inputs:
      identifier:
        type: choice
        options:
          - app
          - gone
      env:
        type: choice
        options: [production]
jobs: {}
"""


def test_workflows_check_shows_a_diff_and_exits_1(tmp_path: Path) -> None:
    targets = write_targets_file(tmp_path / "targets.yaml", [f'storage: "file://{tmp_path / "b"}"'],
                                 ["- {identifier: app, env: production}", "- {identifier: app, env: beta}"])
    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "backup.yml").write_text(WORKFLOW)
    (folder / "other.yml").write_text("name: other\non: push\n")
    result = run_cli("--targets", str(targets), "workflows", "--dir", str(folder), "--check")
    assert result.returncode == 1
    assert (folder / "backup.yml").read_text() == WORKFLOW  # --check changes nothing
    lines = result.stdout.splitlines()
    assert lines[:2] == [f"--- {folder / 'backup.yml'} (now)", f"+++ {folder / 'backup.yml'} (from targets.yaml)"]
    assert "-          - gone" in lines
    assert "-        options: [production]" in lines and "+        options: [production, beta]" in lines
    assert "other.yml" not in result.stdout
    assert result.stderr.splitlines()[-1] == ("error: dropdown options differ from targets.yaml in backup.yml; "
                                              "run `db-backup workflows`")
    fixed = run_cli("--targets", str(targets), "workflows", "--dir", str(folder))
    assert fixed.returncode == 0 and fixed.stdout == "updated backup.yml\n"
    again = run_cli("--targets", str(targets), "workflows", "--dir", str(folder), "--check")
    assert again.returncode == 0 and again.stdout == "workflow options match targets.yaml\n"


@pytest.mark.parametrize("present", [[], ["other.yml"]], ids=["empty folder", "no dropdowns"])
def test_workflows_in_a_folder_without_them_are_missing_not_matching(tmp_path: Path, present: list[str]) -> None:
    targets = write_targets_file(tmp_path / "targets.yaml", [f'storage: "file://{tmp_path / "b"}"'],
                                 ["- {identifier: app, env: production}"])
    folder = tmp_path / "workflows"
    folder.mkdir()
    for name in present:
        (folder / name).write_text("name: other\non: push\n")
    found = ("no workflow file there has a choice input named identifier, env, from or to (1 file read)" if present
             else "it holds no workflow file (*.yml, *.yaml)")
    for check in (["--check"], []):
        result = run_cli("--targets", str(targets), "workflows", "--dir", str(folder), *check)
        assert result.returncode == 1, result.stderr
        assert "match" not in result.stdout
        assert result.stderr.splitlines() == [f"error: the dispatch workflows are missing from {folder}: {found}; "
                                              "copy db-backup's .github/workflows there or pass --dir"]
