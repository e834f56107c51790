"""restore.yml under act: the check job refuses bad requests before any AWS call; good requests
restore through ECS with the role of the destination's environment."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from tests.conftest import AWS_ENV, MotoServer, PgCluster, fill_small, run_cli
from tests.helpers.ecs import FakeFargate, make_ecs_infra

from .conftest import ROLES, Act, write_targets

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
         "unknown target 'nosuchdb'"),
        ({"identifier": "app", "from": "production", "to": "dev", "backup": "latest"},
         "app has no target in environment 'dev'"),
        ({"identifier": "app", "from": "production", "to": "beta;rm -rf /", "backup": "latest"},
         'input "to" is not a valid environment name (got "beta;rm -rf /")'),
        ({"identifier": "app", "from": "production", "to": "beta", "backup": "yesterday"},
         'input "backup" is not latest or a backup id (got "yesterday")'),
    ],
    ids=["upward", "unknown-identifier", "unknown-environment", "shell-metacharacters", "bad-backup-id"],
)
def test_check_job_refuses_before_any_aws_call(act: Act, tmp_path: Path, inputs: dict[str, str], message: str) -> None:
    targets = write_targets(tmp_path / "targets.yaml", TARGETS)
    run = act.run("restore.yml", inputs, targets=targets)
    assert run.job_results("check") == ["failure"], run.explain()
    assert message in run.log("check"), run.explain()
    assert "nothing was started" in run.summary("check")
    assert run.job_results("restore") == []  # never started: no environment, no role, no task
    assert run.roles_assumed == []


def test_check_job_accepts_a_downward_request(act: Act, tmp_path: Path) -> None:
    targets = write_targets(tmp_path / "targets.yaml", TARGETS)
    run = act.run("restore.yml", {"identifier": "app", "from": "production", "to": "alpha", "backup": "latest"},
                  targets=targets, job="check")
    assert run.job_results("check") == ["success"], run.explain()
    assert "restore request valid: app/production backup latest -> app/alpha" in run.log("check")
    assert run.outputs("check", "check")["protected"] == "false"


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
    backup_id = boto3.client("s3").list_objects_v2(Bucket=infra.bucket)["Contents"][0]["Key"].split("/")[-1].split(".")[0]

    with FakeFargate(infra.cluster, cli_env) as fargate:
        # Into beta the form's with_roles box is ticked; into production it is left alone.
        inputs = {"identifier": "app", "from": "production", "to": to, "backup": "latest", **({} if confirmed else {"with_roles": "true"})}
        run = act.run("restore.yml", inputs, targets=targets, endpoint=aws.endpoint, actor="alice")
    assert run.job_results("check") == ["success"], run.explain()
    assert run.job_results("restore") == ["success"], run.explain()
    assert run.roles_assumed == [ROLES[role]]  # only the restore job assumed a role, the destination's

    assert len(fargate.tasks) == 1, fargate.tasks
    task = fargate.tasks[0]
    assert task.returncode == 0, task.output
    # The runner pins the resolved backup id; --confirm only for the protected destination.
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
