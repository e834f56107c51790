"""backup.yml under act: input validation before any AWS call, and one backup through ECS on moto."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from tests.conftest import AWS_ENV, MotoServer, PgCluster
from tests.helpers.ecs import FakeFargate, make_ecs_infra

from .conftest import ROLES, Act, write_targets

ONE_TARGET = "  - {identifier: app, env: beta, schedule: nightly}\n"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"identifier": "app", "env": "beta;rm -rf /"},
         'input "env" is not a valid environment name (got "beta;rm -rf /")'),
        ({"identifier": "$(id)", "env": "beta"}, 'input "identifier" is not a valid identifier (got "??id?")'),
        ({"identifier": "app", "env": ""}, 'input "env" is required for command backup'),
    ],
    ids=["shell-metacharacters", "command-substitution", "missing"],
)
def test_bad_input_fails_with_a_message_and_no_aws_call(act: Act, tmp_path: Path, inputs: dict[str, str], message: str) -> None:
    targets = write_targets(tmp_path / "targets.yaml", ONE_TARGET)
    run = act.run("backup.yml", inputs, targets=targets)
    assert run.job_results("backup") == ["failure"], run.explain()
    assert message in run.log("backup"), run.explain()
    assert "request refused, nothing was started" in run.summary("backup")
    assert run.roles_assumed == []  # the credentials step never ran: no AWS call was possible
    assert "Run Main Run db-backup" not in run.log("backup")


CURATION = "  - {identifier: curation, env: production, schedule: nightly}\n  - {identifier: curation, env: beta}\n"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"identifier": "curation", "env": "alpha"}, "curation has no environment alpha; it has: production, beta"),
        ({"identifier": "nosuchdb", "env": "beta"}, "unknown identifier nosuchdb; targets.yaml has: curation"),
    ],
    ids=["environment-the-identifier-lacks", "unknown-identifier"],
)
def test_a_pair_not_in_targets_yaml_fails_before_any_aws_call(
    act: Act, tmp_path: Path, aws: MotoServer, inputs: dict[str, str], message: str,
) -> None:
    """The form offers every environment for every identifier; a pair targets.yaml lacks is refused at once."""
    infra = make_ecs_infra()
    targets = write_targets(tmp_path / "targets.yaml", CURATION, subnet=infra.subnet, security_group=infra.security_group)
    run = act.run("backup.yml", inputs, targets=targets, endpoint=aws.endpoint)
    assert run.job_results("backup") == ["failure"], run.explain()
    assert message in run.log("backup"), run.explain()
    assert "request refused, nothing was started" in run.summary("backup")
    assert run.roles_assumed == []
    ecs = boto3.client("ecs", region_name="us-east-1")
    assert ecs.list_tasks(cluster=infra.cluster)["taskArns"] == []


def test_backup_runs_as_an_ecs_task_and_reports(act: Act, tmp_path: Path, aws: MotoServer, pg: PgCluster, dbname: str) -> None:
    """The whole path on GitHub's side: role, install, `--executor ecs`, run_task with the right
    overrides, the log, outputs and summary. The task's command is run by FakeFargate (moto's ECS
    runs nothing), so a real backup of a real database lands in moto's S3 and is confirmed."""
    infra = make_ecs_infra()
    targets = write_targets(
        tmp_path / "targets.yaml",
        "  - identifier: app\n    env: beta\n    schedule: nightly\n"
        f"    database: {{host: {pg.host}, port: {pg.port}, name: {dbname}, user: {pg.user}, password: 'env:TEST_PG_PASSWORD'}}\n",
        subnet=infra.subnet, security_group=infra.security_group,
    )
    worker_env = {**AWS_ENV, "AWS_ENDPOINT_URL": aws.endpoint, "DB_BACKUP_TARGETS": str(targets),
                  "TEST_PG_PASSWORD": pg.password}
    with FakeFargate(infra.cluster, worker_env) as fargate:
        run = act.run("backup.yml", {"identifier": "app", "env": "beta"}, targets=targets, endpoint=aws.endpoint,
                      timeout=240)
    assert run.job_results("backup") == ["success"], run.explain()
    assert run.roles_assumed == [ROLES["DB_BACKUP_ROLE_ARN"]]

    # run_task reached moto with the same CLI command, locally, and the network settings.
    ecs = boto3.client("ecs", region_name="us-east-1")
    arns = [a for s in ("RUNNING", "STOPPED") for a in ecs.list_tasks(cluster=infra.cluster, desiredStatus=s)["taskArns"]]
    assert len(arns) == 1, arns
    task = ecs.describe_tasks(cluster=infra.cluster, tasks=arns, include=["TAGS"])["tasks"][0]
    assert task["taskDefinitionArn"].endswith("task-definition/db-backup:1")
    command = task["overrides"]["containerOverrides"][0]["command"]
    assert command[:5] == ["backup", "app", "beta", "--executor", "local"]
    assert "--request-id" in command
    assert task["overrides"]["containerOverrides"][0]["name"] == "db-backup"
    assert len(fargate.tasks) == 1 and fargate.tasks[0].returncode == 0, fargate.tasks

    outputs = run.outputs("backup", "backup")
    assert outputs["result"] == "success"
    assert outputs["task-arn"] == arns[0]
    assert outputs["backup-uri"].startswith(f"s3://{infra.bucket}/app/beta/")
    assert outputs["backup-uri"].endswith(f"{outputs['backup-id']}.dump")
    assert "#logsV2:log-groups/log-group/" in outputs["logs-url"]
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=infra.bucket).get("Contents", [])]
    assert f"app/beta/{outputs['backup-id']}.dump.json" in keys

    summary = run.summary("backup")
    assert "app/beta" in summary and outputs["backup-id"] in summary
    assert "console.aws.amazon.com/cloudwatch" in summary and "/ecs/v2/clusters/" in summary
    assert pg.password not in run.log()
