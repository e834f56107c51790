"""A backup in a (fake) Fargate task: its progress lines reach the CloudWatch log that the runner streams.

The task runs with a test hook (tests/helpers/progress.py) for a line every 0.1 s: users cannot go below 1 s.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from runner.aws import AwsClients
from runner.clock import SystemClock
from runner.ecs import remote
from runner.ecs.request import RemoteJob
from runner.ecs.task import Backoff, Policy
from runner.services import Services
from runner.settings import GithubEnv, Settings
from runner.targets import load_registry
from tests.aws.conftest import PASSWORD_VAR, EcsWorld
from tests.conftest import PgCluster
from tests.helpers.ecs import FakeFargate
from tests.helpers.progress import FAST_INTERVAL, fast_progress_env

QUICK = Policy(start_attempts=2, start_backoff=Backoff(0.1, 2, 1), poll_backoff=Backoff(0.1, 1.5, 0.5),
               log_interval=0.1, describe_errors=5, stop_wait_s=5, drain_quiet_s=0.5, drain_limit_s=5)


def test_backup_progress_lines_are_in_the_streamed_task_log(
    ecs_world: EcsWorld, fake_fargate: FakeFargate, pg: PgCluster, dbname: str, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    with pg.connect(dbname) as conn:
        # About 40 MB for pg_dump: several of the task's 0.1 s intervals.
        conn.execute("CREATE TABLE genes (id int PRIMARY KEY, a text, b text)")
        conn.execute("INSERT INTO genes SELECT g, md5(g::text), md5((-g)::text) FROM generate_series(1, 500000) g")
    targets = ecs_world.targets({"production": {"host": pg.host, "port": pg.port, "user": pg.user, "name": dbname}})
    fake_fargate.mode = "process"
    fake_fargate.env.update({PASSWORD_VAR: pg.password, "DB_BACKUP_PG_BINDIR": str(pg.bindir), "DB_BACKUP_TARGETS": str(targets),
                             **fast_progress_env()})
    monkeypatch.delenv(PASSWORD_VAR, raising=False)
    for name in [k for k in os.environ if k.startswith("GITHUB_")]:
        monkeypatch.delenv(name)
    out = io.StringIO()
    target = load_registry(targets).get("curation", "production")
    report = remote.run(RemoteJob(action="backup", target=target), Services(Settings(), SystemClock(), AwsClients()),
                        GithubEnv(step_summary=tmp_path / "summary.md"), timeout_s=120, policy=QUICK, out=out)

    assert report.result == "success", out.getvalue()
    assert report.dump is not None
    streamed = [line for line in out.getvalue().splitlines() if " INFO backup of curation/production: " in line]
    closing = [line for line in out.getvalue().splitlines() if " INFO backup of curation/production finished: " in line]
    # A line per interval while pg_dump runs, never one per chunk, then one line of totals.
    assert 1 <= len(streamed) <= report.dump.duration_s / FAST_INTERVAL + 2, out.getvalue()
    assert len(closing) == 1, out.getvalue()
    assert all(line.startswith("[task] ") for line in [*streamed, *closing])  # tailed from the task's CloudWatch stream
    assert any(re.search(r"read [\d.]+ MiB of ~[\d.]+ MiB \(\d+%\), stored [\d.]+ MiB, [\d.]+ MiB/s", line) for line in streamed)
    assert re.search(r"finished: read [\d.]+ MiB, stored [\d.]+ MiB, [\d.]+ MiB/s, [\dms. ]+ in all$", closing[0]), closing
    assert pg.password not in out.getvalue()
    # The job summary shows the dump's own figures, from the manifest the task wrote.
    summary = (tmp_path / "summary.md").read_text()
    for fact in ("| Size |", "| Original size |", "| Ratio |", "| Dump duration |", "| Dump rate |"):
        assert fact in summary, summary
