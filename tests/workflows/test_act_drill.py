"""drill.yml under act: the weekly run drills exactly the nightly targets, the form drills one, bad
input stops before any task, and a real drill runs as an ECS task whose record the summary tables."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from tests.conftest import AWS_ENV, MotoServer, PgCluster, fill_small, run_cli
from tests.helpers.ecs import FakeFargate, make_ecs_infra

from .conftest import ROLES, Act, write_targets

NIGHTLY = """  - {identifier: app, env: production, schedule: nightly}
  - {identifier: app, env: beta}
  - {identifier: crm, env: alpha, schedule: nightly}
"""


def test_weekly_run_drills_every_nightly_target(act: Act, tmp_path: Path) -> None:
    targets = write_targets(tmp_path / "targets.yaml", NIGHTLY)
    run = act.run("drill.yml", targets=targets, event="schedule", job="plan")
    assert run.job_results("plan") == ["success"], run.explain()
    outputs = run.outputs("plan", "matrix")
    assert json.loads(outputs["matrix"]) == {"include": [
        {"identifier": "app", "env": "production"}, {"identifier": "crm", "env": "alpha"}]}
    assert outputs["count"] == "2"


def test_the_form_drills_only_the_target_asked_for(act: Act, tmp_path: Path) -> None:
    targets = write_targets(tmp_path / "targets.yaml", NIGHTLY)
    run = act.run("drill.yml", {"identifier": "app", "env": "beta", "backup": "latest"}, targets=targets, job="plan")
    assert run.job_results("plan") == ["success"], run.explain()
    assert json.loads(run.outputs("plan", "matrix")["matrix"]) == {"include": [{"identifier": "app", "env": "beta"}]}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"identifier": "app", "env": "production", "backup": "yesterday"},
         'input "backup" is not latest or a backup id (got "yesterday")'),
        ({"identifier": "app", "env": "beta;rm -rf /", "backup": "latest"},
         'input "env" is not a valid environment name (got "beta;rm -rf /")'),
    ],
    ids=["bad-backup-id", "shell-metacharacters"],
)
def test_bad_input_starts_no_task(act: Act, tmp_path: Path, inputs: dict[str, str], message: str) -> None:
    targets = write_targets(tmp_path / "targets.yaml", NIGHTLY)
    run = act.run("drill.yml", inputs, targets=targets, job="plan" if ";" in inputs["env"] else "drill")
    assert message in run.log(), run.explain()
    assert ROLES["DB_BACKUP_ROLE_ARN"] not in run.roles_assumed  # refused before the credentials step


def test_the_form_refuses_an_environment_the_identifier_lacks_before_any_drill(act: Act, tmp_path: Path) -> None:
    targets = write_targets(tmp_path / "targets.yaml", NIGHTLY)
    run = act.run("drill.yml", {"identifier": "crm", "env": "production", "backup": "latest"}, targets=targets)
    assert run.job_results("plan") == ["failure"], run.explain()
    assert "crm has no environment production; it has: alpha" in run.log("plan"), run.explain()
    assert run.job_results("drill") == []
    assert ROLES["DB_BACKUP_ROLE_ARN"] not in run.roles_assumed


def test_drill_runs_as_an_ecs_task_and_the_summary_tables_its_record(
    act: Act, tmp_path: Path, aws: MotoServer, pg: PgCluster, dbname: str,
) -> None:
    """A real backup in moto's S3, then the form: the drill runs in FakeFargate (the task's real CLI
    command, a throwaway cluster here), writes its record beside the backup, and the summary job
    reads it back into the table."""
    infra = make_ecs_infra()
    targets = write_targets(
        tmp_path / "targets.yaml",
        "  - identifier: app\n    env: production\n    schedule: nightly\n"
        f"    database: {{host: {pg.host}, port: {pg.port}, name: {dbname}, user: {pg.user}, password: 'env:TEST_PG_PASSWORD'}}\n",
        subnet=infra.subnet, security_group=infra.security_group,
    )
    fill_small(pg, dbname, "drilled")
    cli_env = {**AWS_ENV, "AWS_ENDPOINT_URL": aws.endpoint, "DB_BACKUP_TARGETS": str(targets),
               "TEST_PG_PASSWORD": pg.password}
    made = run_cli("backup", "app", "production", "--executor", "local", env=cli_env)
    assert made.returncode == 0, made.stderr
    backup_id = json.loads(run_cli("list", "app", "production", "--json", env=cli_env).stdout)[0]["id"]

    with FakeFargate(infra.cluster, cli_env) as fargate:
        run = act.run("drill.yml", {"identifier": "app", "env": "production", "backup": "latest"}, targets=targets,
                      endpoint=aws.endpoint, timeout=280)

    assert run.step_results("drill", "drill") == {"app/production": "success"}, run.explain()
    assert [t.command[:3] for t in fargate.tasks] == [["drill", "app", "production"]], fargate.tasks
    assert fargate.tasks[0].returncode == 0, fargate.tasks
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=infra.bucket).get("Contents", [])]
    assert f"app/production/{backup_id}.dump.drill.json" in keys

    assert run.job_results("summary") == ["success"], run.explain()
    summary = run.summary("summary")
    assert "Restore drills: 1 of 1 passed" in summary, summary
    row = next(line for line in summary.splitlines() if line.startswith("| app/production"))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert cells[1] == backup_id and cells[2] == "✅ passed", row
    assert cells[3] not in ("-", "unknown"), row  # the restore duration, from the record
    assert cells[4] == "500 in 1 table", row  # marker's 500 rows
    assert run.roles_assumed.count(ROLES["DB_BACKUP_ROLE_ARN"]) == 2  # the drill and the summary
