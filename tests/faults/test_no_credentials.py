"""The real CLI on a machine with no AWS credentials at all: one clear error at once, not a retry loop."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from runner.errors import ExitCode
from tests.conftest import run_cli

TARGETS = """\
version: 1
defaults:
  storage: s3://db-backups
  region: us-east-1
  ecs:
    cluster: db-backup
    task_definition: db-backup
    container: db-backup
    subnets: [subnet-0123456789abcdef0]
    security_groups: [sg-0123456789abcdef0]
    assign_public_ip: false
environments:
  production: {protected: true}
  beta: {}
targets:
  - identifier: app
    env: production
    database: {host: db.internal, port: 5432, name: app, user: backup, password: 'env:APP_PG_PASSWORD'}
  - identifier: app
    env: beta
    database: {host: db.internal, port: 5432, name: app_beta, user: backup, password: 'env:APP_PG_PASSWORD'}
"""


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment in which boto3 finds no credentials anywhere and cannot reach AWS."""
    # Not only the key variables: web identity, container and profile settings are credential sources too.
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    empty_credentials, empty_config = tmp_path / "credentials", tmp_path / "config"
    empty_credentials.write_text("")
    empty_config.write_text("")
    (tmp_path / "targets.yaml").write_text(TARGETS)
    return {
        "AWS_SHARED_CREDENTIALS_FILE": str(empty_credentials),
        "AWS_CONFIG_FILE": str(empty_config),
        # Otherwise boto asks the instance metadata service, which on a CI machine may hand out a role.
        "AWS_EC2_METADATA_DISABLED": "true",
        # Nothing listens here: were a request ever sent, it would fail rather than reach AWS.
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
        "DB_BACKUP_TARGETS": str(tmp_path / "targets.yaml"),
    }


@pytest.mark.parametrize("argv", [
    ["backup", "app", "production", "--executor", "ecs"],
    ["backup", "app", "production", "--executor", "ecs", "--detach"],
    ["restore", "app", "--from", "production", "--to", "beta", "--executor", "ecs"],
], ids=["backup", "backup-detach", "restore"])
def test_ecs_run_without_credentials_fails_at_once_with_exit_3(no_credentials: dict[str, str], tmp_path: Path,
                                                               argv: list[str]) -> None:
    started = time.monotonic()
    result = run_cli(*argv, env=no_credentials, cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == ExitCode.INFRA, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    # The first AWS call of an ECS run reads the task definition: the error names that step.
    assert "no AWS credentials" in errors[0] and "reading task definition db-backup" in errors[0]
    assert "capacity" not in result.stderr and "retrying" not in result.stderr
    assert elapsed < 20, f"took {elapsed:.1f}s: {result.stderr}"


@pytest.mark.parametrize("broken", [
    {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEONLYHALF"},
    {"AWS_PROFILE": "no-such-profile"},
], ids=["half-a-key-pair", "unknown-profile"])
def test_unusable_credentials_fail_at_once_with_exit_3(no_credentials: dict[str, str], tmp_path: Path, broken: dict[str, str]) -> None:
    """Half a key pair or a profile that does not exist: exit 3 naming the credentials, not an unexpected error."""
    result = run_cli("backup", "app", "production", "--executor", "ecs", env={**no_credentials, **broken}, cwd=tmp_path, timeout=60)
    assert result.returncode == ExitCode.INFRA, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "no usable AWS credentials" in errors[0] and "unexpected" not in errors[0]
