"""ECS fixtures on the moto server: the stack's resources and a fake Fargate (tests.helpers.ecs)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MotoServer
from tests.helpers.ecs import BUCKET, REGION, EcsInfra, FakeFargate, make_ecs_infra

CLUSTER = "db-backup"
PASSWORD_VAR = "DB_BACKUP_TEST_PGPASSWORD"


@dataclass
class EcsWorld:
    """The AWS side of one test, as targets.yaml needs it."""

    endpoint: str
    infra: EcsInfra
    tmp: Path

    @property
    def subnet(self) -> str:
        return self.infra.subnet

    @property
    def security_group(self) -> str:
        return self.infra.security_group

    def targets(self, databases: dict[str, dict[str, Any]], protected: bool = False, *, task_definition: str | None = None,
                named: Mapping[str, str] | None = None) -> Path:
        """Write targets.yaml: one target per env of identifier `curation`, database as given.

        `named`: the ecs settings the runner could read from the task definition, written anyway;
        by default its container and log group, as the stack's TargetsDefaults output writes them.
        """
        if named is None:
            named = {"container": self.infra.container, **({"log_group": self.infra.log_group} if self.infra.log_group else {})}
        lines = [
            "version: 1",
            "defaults:",
            f"  storage: s3://{self.infra.bucket}",
            f"  region: {REGION}",
            "  ecs:",
            f"    cluster: {self.infra.cluster}",
            f"    task_definition: {task_definition or self.infra.task_definition}",
            *(f"    {key}: {value}" for key, value in named.items()),
            f"    subnets: [{self.subnet}]",
            f"    security_groups: [{self.security_group}]",
            "    assign_public_ip: false",
            "environments:",
            f"  production: {{protected: {'true' if protected else 'false'}}}",
            "  beta: {}",
            "targets:",
        ]
        for env, db in databases.items():
            lines.append(f"  - identifier: curation\n    env: {env}\n    database: {{host: {db['host']}, port: {db['port']}, "
                         f"name: {db['name']}, user: {db['user']}, password: 'env:{PASSWORD_VAR}'}}")
        path = self.tmp / "targets.yaml"
        path.write_text("\n".join(lines) + "\n")
        return path


@pytest.fixture
def task_definition_names() -> dict[str, Any]:
    """How make_ecs_infra names the task definition's container and log settings; a test module
    overrides this fixture to run against other names."""
    return {}


@pytest.fixture
def ecs_world(aws: MotoServer, tmp_path: Path, task_definition_names: dict[str, Any]) -> EcsWorld:
    return EcsWorld(aws.endpoint, make_ecs_infra(bucket=BUCKET, cluster=CLUSTER, **task_definition_names), tmp_path)


@pytest.fixture
def fake_fargate(ecs_world: EcsWorld) -> Iterator[FakeFargate]:
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(ecs_world.tmp), "LC_ALL": "C.UTF-8",
        "AWS_ENDPOINT_URL": ecs_world.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION, "DB_BACKUP_TARGETS": str(ecs_world.tmp / "targets.yaml"),
    }
    with FakeFargate(CLUSTER, env, mode="moto") as fake:
        yield fake
