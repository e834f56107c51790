"""scheduled-backups.yml under act: the matrix is exactly the nightly targets, each target is
backed up through ECS, and one report job tables every result and turns the run red."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import AWS_ENV, MotoServer, PgCluster
from tests.helpers.ecs import FakeFargate, make_ecs_infra

from .conftest import ROLES, Act, write_targets


def test_matrix_is_exactly_the_nightly_targets(act: Act, tmp_path: Path) -> None:
    targets = write_targets(tmp_path / "targets.yaml", """  - {identifier: app, env: production, schedule: nightly}
  - {identifier: app, env: beta}
  - {identifier: crm, env: alpha, schedule: nightly}
  - {identifier: crm, env: beta, schedule: nightly}
""")
    run = act.run("scheduled-backups.yml", targets=targets, job="plan")
    assert run.job_results("plan") == ["success"], run.explain()
    outputs = run.outputs("plan", "matrix")
    assert json.loads(outputs["matrix"]) == {"include": [
        {"identifier": "app", "env": "production"}, {"identifier": "crm", "env": "alpha"},
        {"identifier": "crm", "env": "beta"},
    ]}
    assert outputs["count"] == "3"


def test_nightly_run_reports_every_target_and_fails_when_one_failed(
    act: Act, tmp_path: Path, aws: MotoServer, pg: PgCluster, dbname: str,
) -> None:
    """app/production backs up for real; app/beta's database does not exist, so its task's container
    exits 1; app/alpha is not nightly and must not run at all."""
    infra = make_ecs_infra()
    database = "{{host: {h}, port: {p}, name: {n}, user: {u}, password: 'env:TEST_PG_PASSWORD'}}"
    targets = write_targets(
        tmp_path / "targets.yaml",
        f"""  - identifier: app
    env: production
    schedule: nightly
    database: {database.format(h=pg.host, p=pg.port, n=dbname, u=pg.user)}
  - identifier: app
    env: beta
    schedule: nightly
    database: {database.format(h=pg.host, p=pg.port, n=dbname + "__missing", u=pg.user)}
  - identifier: app
    env: alpha
    database: {database.format(h=pg.host, p=pg.port, n=dbname, u=pg.user)}
""",
        subnet=infra.subnet, security_group=infra.security_group,
    )
    worker_env = {**AWS_ENV, "AWS_ENDPOINT_URL": aws.endpoint, "DB_BACKUP_TARGETS": str(targets),
                  "TEST_PG_PASSWORD": pg.password}
    with FakeFargate(infra.cluster, worker_env) as fargate:
        run = act.run("scheduled-backups.yml", targets=targets, endpoint=aws.endpoint, timeout=280)

    assert run.job_results("plan") == ["success"], run.explain()
    assert sorted(f"{m['identifier']}/{m['env']}" for m in run.matrix_runs("backup")) == ["app/beta", "app/production"]
    assert run.step_results("backup", "backup") == {"app/production": "success", "app/beta": "failure"}, run.explain()
    assert sorted(" ".join(t.command[:3]) for t in fargate.tasks) == ["backup app beta", "backup app production"]

    # Each matrix job left its result for the report (through the artifact fakes).
    uploaded = sorted(p.name for p in run.artifacts.glob("*/*.json"))
    assert uploaded == ["app--beta.json", "app--production.json"]

    assert run.job_results("report") == ["failure"], run.explain()
    summary = run.summary("report")
    assert "Nightly backups: 1 of 2 succeeded" in summary, summary
    lines = {line.split("|")[1].strip(): line for line in summary.splitlines() if line.startswith("| app/")}
    assert set(lines) == {"app/production", "app/beta"}
    assert "✅ success" in lines["app/production"] and "[logs](" in lines["app/production"]
    assert "[task](" in lines["app/production"] and " B |" in lines["app/production"]  # size known
    assert "❌ failure" in lines["app/beta"]
    # Date and totals above the table; trend and last drill read from moto's S3 by the report job.
    assert "Run of " in summary and " UTC · 2 targets · " in summary and "of backup time" in summary
    assert "| first backup |" in lines["app/production"] and "| never |" in lines["app/production"]
    assert "unknown" not in summary  # the report job's role could read the store
    # The failure's reason, below the table: the task's container exited 1, and what the task said.
    assert "**app/beta**: error: container db-backup of ECS task" in summary
    assert f'database "{dbname}__missing" does not exist' in summary
    # status: app/production has a fresh backup, app/beta none, so the gap is reported too.
    report_log = run.log("report")
    assert "no backup newer than 26h: app/beta" in report_log, report_log
    # ... in the job summary as its own table, and as one error annotation naming the target.
    assert "### Backup status" in summary
    status_rows = {line.split("|")[2].strip(): line for line in summary.split("### Backup status", 1)[1].splitlines()
                   if line.startswith("| app |")}
    assert "✅ ok" in status_rows["production"] and "❌ STALE" in status_rows["beta"], summary
    assert "- app/beta: no good backup newer than 26h" in summary
    assert "::error title=db-backup status app/beta::" in report_log or "db-backup status app/beta" in report_log, report_log
    assert run.roles_assumed.count(ROLES["DB_BACKUP_ROLE_ARN"]) == 3  # two backups and the report
