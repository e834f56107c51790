"""restore.yml under act: the check job refuses bad requests before any AWS call, then looks the
backup up with the read-only role before the job that waits for approval; good requests restore
(or roll back) through ECS with the role of the destination's environment."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from psycopg import sql

from runner.catalog import make_id
from tests.conftest import AWS_ENV, DB_BACKUP, MotoServer, PgCluster, fill_small, run_cli
from tests.helpers.ecs import BUCKET, FakeFargate, make_ecs_infra

from .conftest import ROLES, Act, store_fake_backups, write_targets

TARGETS = """  - {identifier: app, env: production, schedule: nightly}
  - {identifier: app, env: beta}
  - {identifier: app, env: alpha}
"""


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"identifier": "app", "from": "alpha", "to": "production", "backup": "latest"},
         "refusing to restore app/alpha into app/production: alpha is less important than production"),
        ({"identifier": "nosuchdb", "from": "production", "to": "beta", "backup": "latest"},
         "unknown identifier nosuchdb; targets.yaml has: app"),
        ({"identifier": "app", "from": "production", "to": "dev", "backup": "latest"},
         "app has no environment dev; it has: production, beta, alpha"),
        ({"identifier": "app", "from": "production", "to": "beta", "backup": "latest", "action": "drop"},
         'input "action" must be restore or rollback'),
        ({"identifier": "app", "action": "rollback", "to": "dev"},
         "app has no environment dev; it has: production, beta, alpha"),
        ({"identifier": "app", "from": "production", "to": "beta;rm -rf /", "backup": "latest"},
         'input "to" is not a valid environment name (got "beta;rm -rf /")'),
        ({"identifier": "app", "from": "production", "to": "beta", "backup": "yesterday"},
         'input "backup" is not latest or a backup id (got "yesterday")'),
    ],
    ids=["upward", "unknown-identifier", "unknown-environment", "shell-metacharacters", "bad-backup-id", "unknown-action",
         "rollback-unknown-environment"],
)
def test_check_job_refuses_before_any_aws_call(act: Act, tmp_path: Path, inputs: dict[str, str], message: str) -> None:
    targets = write_targets(tmp_path / "targets.yaml", TARGETS)
    run = act.run("restore.yml", inputs, targets=targets)
    assert run.job_results("check") == ["failure"], run.explain()
    assert message in run.log("check"), run.explain()
    assert "nothing was started" in run.summary("check")
    assert run.job_events("restore") == []  # never started: no environment, no role, no task
    assert run.roles_assumed == []


GOOD, DAMAGED = make_id(datetime(2026, 1, 1, 3, tzinfo=UTC)), make_id(datetime(2026, 1, 2, 3, tzinfo=UTC))


def stored_backups() -> None:
    """app/production: a good backup, and a newer one whose dump is missing (damaged)."""
    assert store_fake_backups("app", "production", datetime(2026, 1, 2, 3, tzinfo=UTC)) == (GOOD, DAMAGED)


@pytest.mark.parametrize(
    ("backup", "message"),
    [
        ("2026-01-03_03-00-00", "no backup 2026-01-03_03-00-00 for app/production"),
        (DAMAGED, f"backup {DAMAGED} of app/production in s3://{BUCKET} is damaged (manifest without dump"),
    ],
    ids=["unknown-id", "damaged-id"],
)
def test_an_unknown_or_damaged_backup_fails_the_check_before_approval(
    act: Act, tmp_path: Path, aws: MotoServer, backup: str, message: str,
) -> None:
    stored_backups()
    targets = write_targets(tmp_path / "targets.yaml", TARGETS)
    run = act.run("restore.yml", {"identifier": "app", "from": "production", "to": "production", "backup": backup},
                  targets=targets, endpoint=aws.endpoint)
    assert run.job_results("check") == ["failure"], run.explain()
    assert message in run.log("check"), run.explain()
    assert "restore refused, nothing was started" in run.summary("check")
    assert run.job_events("restore") == []  # the job that waits for approval never started
    assert run.roles_assumed == [ROLES["DB_BACKUP_READ_ROLE_ARN"]]  # only the read-only one


def test_a_backup_that_cannot_be_looked_up_fails_the_check_and_says_so(act: Act, tmp_path: Path, aws: MotoServer) -> None:
    # The read-only role reaches S3, but the bucket targets.yaml names does not exist: nothing is
    # known about the backup, which is not the same as a bad one.
    targets = write_targets(tmp_path / "targets.yaml", TARGETS, bucket="no-such-bucket")
    run = act.run("restore.yml", {"identifier": "app", "from": "production", "to": "production", "backup": "latest"},
                  targets=targets, endpoint=aws.endpoint)
    assert run.job_results("check") == ["failure"], run.explain()
    log = run.log("check")
    assert "bucket no-such-bucket does not exist" in log, run.explain()
    assert "Backup could not be looked up" in log, run.explain()
    assert "Backup not restorable" not in log
    summary = run.summary("check")
    assert "backup could not be looked up, nothing was started" in summary
    assert "Show backups workflow" in summary
    assert run.job_events("restore") == []
    assert run.roles_assumed == [ROLES["DB_BACKUP_READ_ROLE_ARN"]]


def test_latest_is_resolved_to_the_newest_good_backup_before_approval(act: Act, tmp_path: Path, aws: MotoServer) -> None:
    stored_backups()
    targets = write_targets(tmp_path / "targets.yaml", TARGETS)
    run = act.run("restore.yml", {"identifier": "app", "from": "production", "to": "alpha", "backup": "latest"},
                  targets=targets, endpoint=aws.endpoint, job="check")
    assert run.job_results("check") == ["success"], run.explain()
    log = run.log("check")
    assert "restore request valid: app/production backup latest -> app/alpha" in log
    assert f"skipping backup {DAMAGED} of app/production" in log, run.explain()  # passed over, and said so
    assert f"backup {GOOD} of app/production (complete, " in log
    outputs = run.outputs("check", "check")
    assert outputs["protected"] == "false" and outputs["backup-id"] == GOOD
    assert f"`{GOOD}` of app/production, requested as `latest`" in run.summary("check")
    assert run.roles_assumed == [ROLES["DB_BACKUP_READ_ROLE_ARN"]]


def test_no_read_role_configured_checks_targets_yaml_only_and_says_so(act: Act, tmp_path: Path) -> None:
    targets = write_targets(tmp_path / "targets.yaml", TARGETS)
    run = act.run("restore.yml", {"identifier": "app", "from": "production", "to": "alpha", "backup": "latest"},
                  targets=targets, job="check", variables={"DB_BACKUP_READ_ROLE_ARN": ""})
    assert run.job_results("check") == ["success"], run.explain()
    assert "the backup was not looked up before approval" in run.log("check")
    assert ("`latest` was not checked before approval: the repository variable DB_BACKUP_READ_ROLE_ARN is not set"
            in run.summary("check")), run.explain()
    assert run.outputs("check", "check").get("backup-id", "") == ""
    assert run.roles_assumed == []


def dump_ids(bucket: str) -> list[str]:
    """Ids of the dumps in the bucket, oldest first."""
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])]
    return sorted(key.rsplit("/", 1)[-1].removesuffix(".dump") for key in keys if key.endswith(".dump"))


def newer_backup_hook(tmp_path: Path, role: str, cli_env: dict[str, str]) -> Path:
    """A FAKE_AWS_ASSUME_HOOK that takes a new backup of app/production when `role` is assumed."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), **cli_env}
    hook = tmp_path / "newer-backup.sh"
    hook.write_text(
        "#!/bin/bash\nset -euo pipefail\n"
        f"[[ $1 == {shlex.quote(role)} ]] || exit 0\n"
        f"exec env -i {' '.join(shlex.quote(f'{k}={v}') for k, v in env.items())} "
        f"{shlex.quote(DB_BACKUP)} backup app production --executor local\n",
        encoding="utf-8",
    )
    hook.chmod(0o700)
    return hook


@pytest.mark.parametrize(
    ("to", "role", "confirmed"),
    [("beta", "DB_RESTORE_ROLE_ARN", False), ("production", "DB_RESTORE_PRODUCTION_ROLE_ARN", True)],
    ids=["into-beta", "into-protected-production"],
)
def test_restore_runs_as_an_ecs_task(
    act: Act, tmp_path: Path, aws: MotoServer, pg: PgCluster, dbname: str, to: str, role: str, confirmed: bool,
) -> None:
    infra = make_ecs_infra()
    beta_db = f"{dbname}__beta"  # dropped with dbname by its fixture
    targets = write_targets(
        tmp_path / "targets.yaml",
        "".join(
            f"  - identifier: app\n    env: {env}\n"
            f"    database: {{host: {pg.host}, port: {pg.port}, name: {name}, user: {pg.user}, password: 'env:TEST_PG_PASSWORD'}}\n"
            for env, name in (("production", dbname), ("beta", beta_db))
        ),
        subnet=infra.subnet, security_group=infra.security_group,
    )
    fill_small(pg, dbname, "from-production")
    cli_env = {**AWS_ENV, "AWS_ENDPOINT_URL": aws.endpoint, "DB_BACKUP_TARGETS": str(targets),
               "TEST_PG_PASSWORD": pg.password}
    made = run_cli("backup", "app", "production", "--executor", "local", env=cli_env)
    assert made.returncode == 0, made.stderr
    backup_id = dump_ids(infra.bucket)[0]
    # A newer backup lands after the check job resolved `latest` and before the restore job runs
    # (as while a request waits for approval): the restore must still be the backup the check found.
    hook = newer_backup_hook(tmp_path, ROLES[role], cli_env)

    with FakeFargate(infra.cluster, cli_env) as fargate:
        # Into beta the form's with_roles box is ticked; into production it is left alone.
        inputs = {"identifier": "app", "from": "production", "to": to, "backup": "latest", **({} if confirmed else {"with_roles": "true"})}
        run = act.run("restore.yml", inputs, targets=targets, endpoint=aws.endpoint, actor="alice",
                      env={"FAKE_AWS_ASSUME_HOOK": str(hook)})
    assert run.job_results("check") == ["success"], run.explain()
    assert run.job_results("restore") == ["success"], run.explain()
    # The check job looked the backup up read-only; the restore job assumed the destination's role.
    assert run.roles_assumed == [ROLES["DB_BACKUP_READ_ROLE_ARN"], ROLES[role]]
    assert run.outputs("check", "check")["backup-id"] == backup_id
    ids = dump_ids(infra.bucket)
    assert len(ids) == 2 and ids[0] == backup_id and ids[1] > backup_id, ids  # `latest` is now the newer one

    assert len(fargate.tasks) == 1, fargate.tasks
    task = fargate.tasks[0]
    assert task.returncode == 0, task.output
    # The check's id, not today's `latest`; --confirm only for the protected destination.
    assert task.command[:8] == ["restore", "app", "--from", "production", "--to", to, "--backup", backup_id]
    assert (["--confirm", to] == task.command[8:10]) is confirmed, task.command
    assert ("--with-roles" in task.command) is not confirmed, task.command
    with pg.connect(dbname if to == "production" else beta_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() != (0,)

    outputs = run.outputs("restore", "restore")
    assert outputs["result"] == "success" and outputs["backup-id"] == backup_id
    summary = run.summary("restore")
    assert f"Backup restored: `{backup_id}`" in summary
    assert "Requested by: @alice" in summary
    if confirmed:
        assert "approval through the production environment's required reviewers" in summary
    else:
        assert "beta is not protected" in summary


def test_rollback_of_a_target_that_keeps_no_previous_passes_the_check_with_a_warning(act: Act, tmp_path: Path) -> None:
    """As `db-backup rollback` does: the check cannot see the database, so it warns and does not refuse."""
    targets = write_targets(tmp_path / "targets.yaml", TARGETS.replace("env: beta}", "env: beta, keep_previous: false}"))
    run = act.run("restore.yml", {"identifier": "app", "action": "rollback", "to": "beta"}, targets=targets, job="check")
    assert run.job_results("check") == ["success"], run.explain()
    log = run.log("check")
    assert "rollback request valid: app/beta" in log
    assert "app/beta has keep_previous: false: its restores drop the database they replace" in log, run.explain()
    assert "app/beta has keep_previous: false" in run.summary("check")
    assert run.roles_assumed == []


@pytest.mark.parametrize(
    ("to", "role", "confirmed"),
    [("beta", "DB_RESTORE_ROLE_ARN", False), ("production", "DB_RESTORE_PRODUCTION_ROLE_ARN", True)],
    ids=["beta", "protected-production"],
)
def test_rollback_runs_as_an_ecs_task_gated_like_a_restore(
    act: Act, tmp_path: Path, aws: MotoServer, pg: PgCluster, dbname: str, to: str, role: str, confirmed: bool,
) -> None:
    """action=rollback: the same check and approval job as a restore into `to`; the task runs
    `rollback`, with --confirm only for the protected environment; from and backup are ignored."""
    infra = make_ecs_infra()
    names = {"production": dbname, "beta": f"{dbname}__beta"}  # dropped with dbname by its fixture
    target_db = names[to]
    with pg.connect() as conn:
        for name in {target_db, f"{target_db}__previous"} - {dbname}:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    fill_small(pg, target_db, "restored")
    fill_small(pg, f"{target_db}__previous", "kept")
    targets = write_targets(
        tmp_path / "targets.yaml",
        "".join(
            f"  - identifier: app\n    env: {env}\n"
            f"    database: {{host: {pg.host}, port: {pg.port}, name: {name}, user: {pg.user}, password: 'env:TEST_PG_PASSWORD'}}\n"
            for env, name in names.items()
        ),
        subnet=infra.subnet, security_group=infra.security_group,
    )
    cli_env = {**AWS_ENV, "AWS_ENDPOINT_URL": aws.endpoint, "DB_BACKUP_TARGETS": str(targets),
               "TEST_PG_PASSWORD": pg.password}
    with FakeFargate(infra.cluster, cli_env) as fargate:
        # from and backup hold what a restore would reject: a rollback ignores them.
        inputs = {"identifier": "app", "action": "rollback", "to": to, "from": "beta", "backup": "not-an-id"}
        run = act.run("restore.yml", inputs, targets=targets, endpoint=aws.endpoint, actor="alice")
    assert run.job_results("check") == ["success"], run.explain()
    assert "rollback request valid: app/" + to in run.log("check")
    assert run.job_results("restore") == ["success"], run.explain()
    # No backup to look up: the check assumed no role; the rollback the destination's restore role.
    assert run.roles_assumed == [ROLES[role]]

    assert len(fargate.tasks) == 1, fargate.tasks
    task = fargate.tasks[0]
    assert task.command[:3] == ["rollback", "app", to], task.command
    assert (["--confirm", to] == task.command[3:5]) is confirmed, task.command
    assert "--backup" not in task.command and "--from" not in task.command
    assert task.returncode == 0, task.output
    with pg.connect(target_db) as conn:
        assert conn.execute("SELECT label FROM marker ORDER BY id LIMIT 1").fetchone() == ("kept1",)
    with pg.connect(f"{target_db}__previous") as conn:
        assert conn.execute("SELECT label FROM marker ORDER BY id LIMIT 1").fetchone() == ("restored1",)
    summary = run.summary("restore")
    assert f"### Roll back app/{to}" in summary and "Requested by: @alice" in summary
