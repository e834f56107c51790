"""Static rules every workflow and the composite action keep (and zizmor agrees)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runner.targets import load_registry

from .conftest import ACTION_DIR, REPO, WORKFLOWS

WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))
ALL_FILES = [*WORKFLOW_FILES, ACTION_DIR / "action.yml"]


def _load(path: Path) -> dict:  # type: ignore[type-arg]
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def test_the_expected_workflows_exist() -> None:
    assert {p.name for p in WORKFLOW_FILES} == {
        "backup.yml", "backups.yml", "restore.yml", "scheduled-backups.yml", "drill.yml", "ci.yml", "image.yml"}


def test_zizmor_finds_nothing() -> None:
    zizmor = Path(sys.executable).parent / "zizmor"
    done = subprocess.run([str(zizmor), "--offline", ".github", "actions"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_third_party_actions_are_pinned_by_sha_with_a_version(path: Path) -> None:
    for line in path.read_text().splitlines():
        match = re.search(r"uses:\s*(\S+)", line)
        if not match or match.group(1).startswith("./"):
            continue
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", match.group(1)), line
        assert re.search(r"#\s*v\d+\.\d+\.\d+\s*$", line), f"no # vX.Y.Z comment: {line}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_least_privilege_and_timeouts(path: Path) -> None:
    data = _load(path)
    assert data["permissions"] == {}, "top-level permissions must be {}"
    for name, job in data["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), f"{name}: timeout-minutes"
        perms = job.get("permissions")
        assert isinstance(perms, dict), f"{name}: job permissions must be explicit"
        assert set(perms) <= {"contents", "id-token"}, f"{name}: {perms}"
        assert perms.get("contents") in (None, "read")


def test_only_jobs_that_assume_a_role_get_an_id_token() -> None:
    for path in WORKFLOW_FILES:
        for name, job in _load(path)["jobs"].items():
            steps = yaml.safe_dump(job.get("steps", []))
            assumes = "role-to-assume" in steps
            assert (job["permissions"].get("id-token") == "write") == assumes, f"{path.name}/{name}"


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_no_expressions_inside_scripts(path: Path) -> None:
    """Inputs reach scripts only through env:, never `${{ }}` pasted into a shell script."""
    def steps(data: dict) -> list[dict]:  # type: ignore[type-arg]
        if "runs" in data:
            return list(data["runs"]["steps"])
        return [s for job in data["jobs"].values() for s in job.get("steps", [])]
    for step in steps(_load(path)):
        assert "${{" not in str(step.get("run", "")), f"{path.name}: {step.get('name') or step.get('run')}"


def test_concurrency_per_target() -> None:
    groups = {
        "backup.yml": ("backup", "db-backup-${{ inputs.identifier }}-${{ inputs.env }}"),
        "restore.yml": ("restore", "db-backup-${{ inputs.identifier }}-${{ inputs.to }}"),
        "scheduled-backups.yml": ("backup", "db-backup-${{ matrix.identifier }}-${{ matrix.env }}"),
        "drill.yml": ("drill", "db-backup-drill-${{ matrix.identifier }}-${{ matrix.env }}"),
    }
    for name, (job, group) in groups.items():
        concurrency = _load(WORKFLOWS / name)["jobs"][job]["concurrency"]
        assert concurrency == {"group": group, "cancel-in-progress": False}


def test_restore_job_runs_in_the_destination_environment() -> None:
    job = _load(WORKFLOWS / "restore.yml")["jobs"]["restore"]
    assert job["environment"] == "${{ inputs.to }}"
    assert job["needs"] == "check"
    action = next(s for s in job["steps"] if s.get("id") == "restore")["with"]
    assert "vars.DB_RESTORE_PRODUCTION_ROLE_ARN" in action["role-to-assume"]


def test_show_backups_assumes_only_the_read_only_role() -> None:
    data = _load(WORKFLOWS / "backups.yml")
    inputs = data[True]["workflow_dispatch"]["inputs"]
    assert inputs["what"]["options"] == ["list", "history", "status"] and inputs["what"]["default"] == "list"
    [job] = data["jobs"].values()
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    assert "environment" not in job  # the read-only role trusts only the default branch's subject
    roles = [s["with"]["role-to-assume"] for s in job["steps"] if "role-to-assume" in s.get("with", {})]
    assert roles == ["${{ vars.DB_BACKUP_READ_ROLE_ARN }}"]
    assert not re.search(r"DB_(BACKUP|RESTORE)(_PRODUCTION)?_ROLE_ARN", yaml.safe_dump(job))


def test_restore_check_job_looks_the_backup_up_with_the_read_only_role_before_approval() -> None:
    data = _load(WORKFLOWS / "restore.yml")
    inputs = data[True]["workflow_dispatch"]["inputs"]
    assert inputs["action"]["options"] == ["restore", "rollback"] and inputs["action"]["default"] == "restore"
    for name in ("from", "backup", "with_roles"):
        assert "ignored for rollback" in inputs[name]["description"], name
    check = data["jobs"]["check"]
    assert "environment" not in check
    action = next(s for s in check["steps"] if s.get("id") == "check")["with"]
    assert action["role-to-assume"] == "${{ inputs.action != 'rollback' && vars.DB_BACKUP_READ_ROLE_ARN || '' }}"
    assert check["outputs"]["backup-id"] == "${{ steps.check.outputs.backup-id }}"
    # The restore job, the one that waits for approval, restores the id the check found.
    restore = data["jobs"]["restore"]
    with_ = next(s for s in restore["steps"] if s.get("id") == "restore")["with"]
    assert "needs.check.outputs.backup-id" in with_["backup"]
    assert with_["command"] == "${{ inputs.action == 'rollback' && 'rollback' || 'restore' }}"
    assert with_["confirm"] == "${{ needs.check.outputs.protected == 'true' && inputs.to || '' }}"


def test_scheduled_matrix_does_not_fail_fast_and_report_always_runs() -> None:
    data = _load(WORKFLOWS / "scheduled-backups.yml")
    assert data[True]["schedule"] == [{"cron": "17 3 * * *"}]  # PyYAML reads `on` as True
    strategy = data["jobs"]["backup"]["strategy"]
    assert strategy["fail-fast"] is False and 1 <= strategy["max-parallel"] <= 8
    assert data["jobs"]["report"]["if"] == "always()"


def test_drill_runs_weekly_for_every_nightly_target_or_the_one_asked_for() -> None:
    data = _load(WORKFLOWS / "drill.yml")
    on = data[True]
    assert len(on["schedule"]) == 1 and on["schedule"][0]["cron"].split()[2:] == ["*", "*", "0"]  # weekly
    inputs = on["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"identifier", "env", "backup"} and inputs["backup"]["default"] == "latest"
    plan = next(s for s in data["jobs"]["plan"]["steps"] if s.get("id") == "matrix")
    assert "db-backup matrix --schedule nightly" in plan["run"]
    drill = data["jobs"]["drill"]
    assert drill["strategy"]["fail-fast"] is False
    action = next(s for s in drill["steps"] if s.get("id") == "drill")["with"]
    assert action["command"] == "drill" and action["backup"] == "${{ inputs.backup || 'latest' }}"
    assert action["role-to-assume"] == "${{ vars.DB_BACKUP_ROLE_ARN }}"
    summary = data["jobs"]["summary"]
    assert summary["if"] == "always() && (github.event_name == 'schedule' || needs.plan.result == 'success')"
    assert summary["needs"] == ["plan", "drill"]
    assert any("--drills" in s.get("run", "") for s in summary["steps"])


def test_repository_targets_yaml() -> None:
    registry = load_registry(REPO / "targets.yaml")
    assert registry.environments == ("production", "beta", "alpha", "dev")
    assert registry.protected == {"production"}
    assert sorted(t.name for t in registry.scheduled("nightly")) == [
        "chipmunk/dev", "chipmunk/production", "curation/alpha", "curation/beta", "curation/production",
        "mati/alpha", "mati/beta", "mati/production"]
    assert all(t.executor == "ecs" for t in registry.targets)


def test_action_requirements_pin_every_runtime_dependency() -> None:
    lines = [line.split("#")[0].strip() for line in (ACTION_DIR / "requirements.txt").read_text().splitlines()]
    lines = [line for line in lines if line]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", line) for line in lines), lines
    names = {line.split("==")[0].lower().replace("_", "-") for line in lines}
    assert {"boto3", "botocore", "pydantic", "typer", "pyyaml", "psycopg",
            "psycopg-binary"} <= names
    dev = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
           for line in (REPO / "requirements-dev.txt").read_text().splitlines() if "==" in line}
    for line in lines:
        name, version = line.split("==")
        key = name.lower().replace("_", "-")
        if key in dev and key != "setuptools":  # the build backend: pyproject wants >=68, the venv has 65.5
            assert dev[key] == version, f"{name}: {version} here, {dev[key]} in requirements-dev.txt"


def test_both_report_steps_get_the_alert_secrets_through_env() -> None:
    """The report reads the webhook and heartbeat URLs from its environment; targets.yaml names only the variables."""
    reports = {
        "scheduled-backups.yml": ("report", "db-backup report "),
        "drill.yml": ("summary", "--drills"),
    }
    for name, (job, marker) in reports.items():
        steps = _load(WORKFLOWS / name)["jobs"][job]["steps"]
        [step] = [s for s in steps if marker in s.get("run", "")]
        for variable in ("DB_BACKUP_WEBHOOK_URL", "DB_BACKUP_HEARTBEAT_URL"):
            assert step["env"][variable] == f"${{{{ secrets.{variable} }}}}", f"{name}: {variable}"
        assert "secrets." not in str(step["run"])
