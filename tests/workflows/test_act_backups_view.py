"""backups.yml ("Show backups") under act: list, history and status of the backups in moto's S3 in
the job summary, with the read-only role only; a target targets.yaml lacks fails before any AWS call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import MotoServer

from .conftest import ROLES, Act, store_fake_backups, write_targets

TARGETS = """  - {identifier: app, env: production, schedule: nightly}
  - {identifier: app, env: beta}
"""


@pytest.mark.parametrize("what", ["list", "history"])
def test_the_backups_of_one_target_land_in_the_job_summary(act: Act, tmp_path: Path, aws: MotoServer, what: str) -> None:
    good, damaged = store_fake_backups("app", "production", datetime(2026, 3, 2, 3, tzinfo=UTC))
    targets = write_targets(tmp_path / "targets.yaml", TARGETS)
    run = act.run("backups.yml", {"identifier": "app", "env": "production", "what": what, "limit": "20"},
                  targets=targets, endpoint=aws.endpoint)
    assert run.job_results("show") == ["success"], run.explain()
    summary = run.summary("show")
    assert f"### db-backup {what} app production" in summary, run.explain()
    assert good in summary and damaged in summary
    if what == "list":
        assert "damaged: manifest without dump" in summary
    assert run.roles_assumed == [ROLES["DB_BACKUP_READ_ROLE_ARN"]]


def test_limit_is_passed_on(act: Act, tmp_path: Path, aws: MotoServer) -> None:
    good, damaged = store_fake_backups("app", "production", datetime(2026, 3, 2, 3, tzinfo=UTC))
    targets = write_targets(tmp_path / "targets.yaml", TARGETS)
    run = act.run("backups.yml", {"identifier": "app", "env": "production", "what": "list", "limit": "1"},
                  targets=targets, endpoint=aws.endpoint)
    assert run.job_results("show") == ["success"], run.explain()
    summary = run.summary("show")
    assert damaged in summary and good not in summary  # newest first, one shown


def test_status_tables_the_nightly_targets_and_fails_on_a_problem(act: Act, tmp_path: Path, aws: MotoServer) -> None:
    # The newest backup is damaged and the good one is days old: status says so, and the job fails.
    good, _damaged = store_fake_backups("app", "production", datetime.now(UTC) - timedelta(days=3))
    targets = write_targets(tmp_path / "targets.yaml", TARGETS)
    run = act.run("backups.yml", {"identifier": "app", "env": "production", "what": "status"},
                  targets=targets, endpoint=aws.endpoint)
    assert run.job_results("show") == ["failure"], run.explain()
    summary = run.summary("show")
    assert "app/production" in summary and good in summary, run.explain()
    assert "db-backup status failed (exit 1)" in summary
    assert run.roles_assumed == [ROLES["DB_BACKUP_READ_ROLE_ARN"]]


@pytest.mark.parametrize(
    ("inputs", "variables", "message"),
    [
        ({"identifier": "app", "env": "alpha", "what": "list"}, {}, "app has no environment alpha; it has: production, beta"),
        ({"identifier": "app", "env": "beta", "what": "list"}, {"DB_BACKUP_READ_ROLE_ARN": ""},
         "the repository variable DB_BACKUP_READ_ROLE_ARN is not set"),
    ],
    ids=["environment-the-identifier-lacks", "no-read-role"],
)
def test_refused_before_any_aws_call(
    act: Act, tmp_path: Path, inputs: dict[str, str], variables: dict[str, str], message: str,
) -> None:
    targets = write_targets(tmp_path / "targets.yaml", TARGETS)
    run = act.run("backups.yml", inputs, targets=targets, variables=variables)
    assert run.job_results("show") == ["failure"], run.explain()
    assert message in run.log("show"), run.explain()
    assert run.roles_assumed == []


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"what": "list", "limit": "1;id"}, 'input "limit" must be a number from 1 to 500'),
        ({"what": "history", "limit": "501"}, 'input "limit" must be a number from 1 to 500'),
        ({"what": "dump", "limit": "20"}, 'input "what" must be list, history or status'),
    ],
    ids=["limit-not-a-number", "limit-too-big", "unknown-what"],
)
def test_bad_inputs_are_refused_before_any_role_is_assumed(
    act: Act, tmp_path: Path, aws: MotoServer, inputs: dict[str, str], message: str,
) -> None:
    targets = write_targets(tmp_path / "targets.yaml", TARGETS)
    run = act.run("backups.yml", {"identifier": "app", "env": "beta", **inputs}, targets=targets, endpoint=aws.endpoint)
    assert run.job_results("show") == ["failure"], run.explain()
    assert message in run.log("show"), run.explain()
    assert "request refused, nothing was looked up" in run.summary("show")
    # Neither the setup step (which holds configure-aws-credentials) nor the listing ran.
    assert "setup" not in run.steps_run("show"), run.steps_run("show")
    assert "configure-aws-credentials" not in run.log("show")
    assert run.roles_assumed == []
