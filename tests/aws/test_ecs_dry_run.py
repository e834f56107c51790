"""restore --dry-run --executor ecs end to end: the (fake) Fargate task reads the server, the runner shows what it said."""

from __future__ import annotations

import io
import os

import pytest
from psycopg import sql

from runner.aws import AwsClients
from runner.clock import SystemClock
from runner.ecs import remote
from runner.ecs.request import RemoteJob
from runner.ecs.task import Backoff, Policy
from runner.services import Services
from runner.settings import GithubEnv, Settings
from runner.targets import load_registry
from tests.aws.conftest import PASSWORD_VAR, EcsWorld
from tests.conftest import PgCluster, fingerprint
from tests.helpers.cli import run_main
from tests.helpers.ecs import FakeFargate

# The task is a real process taking real seconds, so the clock is real; the intervals are short.
QUICK = Policy(start_attempts=2, start_backoff=Backoff(0.1, 2, 1), poll_backoff=Backoff(0.1, 1.5, 0.5),
               log_interval=0.1, describe_errors=5, stop_wait_s=5, drain_quiet_s=0.5, drain_limit_s=5)


def test_the_task_reads_the_server_and_the_runner_resolves_no_credential(
    ecs_world: EcsWorld, fake_fargate: FakeFargate, pg: PgCluster, dbname: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    beta = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(beta)))
    with pg.connect(dbname) as conn:
        conn.execute("CREATE TABLE genes (id int PRIMARY KEY, symbol text)")
        conn.execute("INSERT INTO genes SELECT g, 'gene-' || g FROM generate_series(1, 50) g")
    base = {"host": pg.host, "port": pg.port, "user": pg.user}
    targets = ecs_world.targets({"production": {**base, "name": dbname}, "beta": {**base, "name": beta}})
    fake_fargate.mode = "process"
    # Only the task has the password: a dry run that resolved it here would fail for want of it.
    fake_fargate.env.update({PASSWORD_VAR: pg.password, "DB_BACKUP_PG_BINDIR": str(pg.bindir), "DB_BACKUP_TARGETS": str(targets)})
    monkeypatch.delenv(PASSWORD_VAR, raising=False)
    for name in [k for k in os.environ if k.startswith("GITHUB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DB_BACKUP_TARGETS", str(targets))
    services = Services(settings=Settings(), clock=SystemClock(), aws=AwsClients())
    backup = remote.run(RemoteJob(action="backup", target=load_registry(targets).get("curation", "production")), services,
                        GithubEnv(), timeout_s=120, policy=QUICK, out=io.StringIO())
    before = sorted(pg.databases()), fingerprint(pg, beta)
    monkeypatch.setattr(remote, "Policy", lambda: QUICK)  # the CLI uses the default policy; make it quick

    with pg.connect(beta) as _session:
        run = run_main(["restore", "curation", "--from", "production", "--to", "beta", "--dry-run", "--timeout", "2m"], capsys)

    assert run.code == 0, run.err
    assert f"backup:   curation/production {backup.backup_id} " in run.out
    assert f"target:   curation/beta, database {beta}" in run.out and "server:   read by an ECS task" in run.out
    # What the task read from its network, shown here as it said it.
    assert "[task] dry run: nothing was changed" in run.out
    assert f"[task] database: {beta} exists; its data would be replaced" in run.out
    assert "[task] sessions: 1 session would be ended now" in run.out
    assert "[task] tools:    pg_restore " in run.out
    command = fake_fargate.tasks[-1].command
    assert command == ["restore", "curation", "--from", "production", "--to", "beta", "--backup", backup.backup_id,
                       "--dry-run", "--executor", "local"]
    assert pg.password not in run.out + run.err
    assert (sorted(pg.databases()), fingerprint(pg, beta)) == before

