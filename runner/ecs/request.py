"""Everything the run_task request is built from: the task's command, environment, labels and role."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..errors import BadInput
from ..settings import GithubEnv
from ..targets import EcsConfig, Target
from .taskdef import TaskDefinition

if TYPE_CHECKING:
    from mypy_boto3_ecs.type_defs import RunTaskRequestTypeDef, TaskOverrideTypeDef

# Tuning settings the task may inherit from the runner; none of them is a secret.
FORWARDED_SETTINGS = (
    "DB_BACKUP_PART_SIZE_MB", "DB_BACKUP_PARALLEL_UPLOADS", "DB_BACKUP_RESTORE_MODE",
    "DB_BACKUP_RESTORE_JOBS", "DB_BACKUP_PARALLEL_THRESHOLD_MB", "DB_BACKUP_SWAP_WAIT_S", "DB_BACKUP_ADMIN_TIMEOUT_S",
    "DB_BACKUP_PROGRESS_INTERVAL", "DB_BACKUP_RESTORE_MAINTENANCE_MB",
)
# ECS allows 8192 characters of overrides in all; the command and settings need the rest.
MAX_TARGETS_JSON = 6000
_TAG_VALUE_BAD = re.compile(r"[^\w .:/=+\-@]")
_STARTED_BY_BAD = re.compile(r"[^A-Za-z0-9_/-]")


@dataclass(frozen=True)
class RemoteJob:
    """One backup, restore, restore preview (--dry-run), rollback or restore drill to run in a Fargate task."""

    action: Literal["backup", "restore", "preview", "rollback", "drill"]
    target: Target  # where the task runs: the backup's target, the restore's destination or rolled back target, the drilled target
    source: Target | None = None  # restore and preview: the target whose backup is restored
    backup: str = "latest"  # restore, preview and drill: `latest` or a backup id
    confirm: str | None = None  # restore, preview and rollback: the protected environment named to allow it
    with_roles: bool = False  # restore and preview: create the missing roles first (--with-roles)
    verbose: bool = False
    targets_json: str = ""  # Registry.excerpt of the targets involved, for the task

    def __post_init__(self) -> None:
        if self.action in ("restore", "preview") and self.source is None:
            raise ValueError(f"a {self.action} needs its source target")
        if self.action == "rollback" and self.source is not None:
            raise ValueError("a rollback swaps databases within its target: it has no source")


@dataclass(frozen=True)
class TaskRequest:
    """One run_task call: which revision and container, the command, its plain environment, and labels."""

    task_definition: str  # family:revision
    container: str
    command: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]
    started_by: str
    tags: tuple[tuple[str, str], ...]
    client_token: str
    task_role_arn: str | None = None  # overrides the task definition's role; an ARN, not a secret


def task_argv(job: RemoteJob, request_id: str) -> tuple[str, ...]:
    """The command the task runs: this same CLI and job, with --executor local."""
    target = job.target
    head = ("--verbose",) if job.verbose else ()
    if job.action == "backup":
        return (*head, "backup", target.identifier, target.env, "--executor", "local", "--request-id", request_id)
    if job.action == "drill":
        # A throwaway cluster inside the task: no environment is touched, so nothing to confirm.
        return (*head, "drill", target.identifier, target.env, "--backup", job.backup, "--executor", "local")
    confirm = ("--confirm", job.confirm) if job.confirm else ()
    if job.action == "rollback":
        return (*head, "rollback", target.identifier, target.env, *confirm, "--executor", "local")
    assert job.source is not None
    roles = ("--with-roles",) if job.with_roles else ()
    # A preview reads the server from the task's network, with the credentials only the task resolves.
    dry_run = ("--dry-run",) if job.action == "preview" else ()
    return (*head, "restore", target.identifier, "--from", job.source.env, "--to", target.env, "--backup", job.backup,
            *confirm, *roles, *dry_run, "--executor", "local")


def started_by(text: str) -> str:
    return _STARTED_BY_BAD.sub("_", text)[:128]


def tag_value(text: str) -> str:
    return _TAG_VALUE_BAD.sub("_", text)[:256]


def task_role_for(config: EcsConfig, action: str, dest_protected: bool) -> str | None:
    """The task role override, or None for the task definition's role: drills run as the drill role
    and restores, their previews and rollbacks in unprotected environments as the non-production role, each when configured."""
    # A drill runs the dump's SQL as superuser inside the task: its role reads no database credentials.
    if action == "drill" and config.drill_task_role_arn:
        return config.drill_task_role_arn
    # A preview reads the same credentials as the restore it previews: the same role.
    if action in ("restore", "preview", "rollback") and not dest_protected and config.nonproduction_task_role_arn:
        return config.nonproduction_task_role_arn
    return None


def task_request(job: RemoteJob, taskdef: TaskDefinition, request_id: str, gh: GithubEnv,
                 environ: Mapping[str, str]) -> TaskRequest:
    """The task's command, plain environment, startedBy, tags and role for `job`."""
    tags = [("db-backup:target", job.target.name), ("db-backup:action", job.action), ("db-backup:request-id", request_id)]
    if gh.run_id:
        tags.append(("github:run-id", gh.run_id))
        tags.append(("github:run-attempt", gh.run_attempt or "1"))
        if gh.repository:
            tags.append(("github:repository", gh.repository))
            tags.append(("github:run-url", f"{gh.server_url}/{gh.repository}/actions/runs/{gh.run_id}"))
        if gh.triggering_actor or gh.actor:
            tags.append(("github:actor", str(gh.triggering_actor or gh.actor)))
    label = f"db-backup/gh-{gh.run_id}-{gh.run_attempt or '1'}" if gh.run_id else "db-backup/cli"
    environment = [(name, environ[name]) for name in FORWARDED_SETTINGS if name in environ]
    if job.targets_json:
        if len(job.targets_json) > MAX_TARGETS_JSON:
            raise BadInput(f"the targets.yaml entries for {job.target.name} take {len(job.targets_json)} characters, "
                           f"more than the {MAX_TARGETS_JSON} an ECS task's overrides leave room for; shorten them")
        environment.append(("DB_BACKUP_TARGETS_JSON", job.targets_json))
    config = job.target.ecs
    return TaskRequest(
        task_definition=taskdef.name,
        container=taskdef.container,
        command=task_argv(job, request_id),
        environment=tuple(environment),
        started_by=started_by(label),
        tags=tuple((key, tag_value(value)) for key, value in tags),
        client_token=request_id,
        task_role_arn=task_role_for(config, job.action, job.target.protected) if config else None,
    )


def run_task_params(config: EcsConfig, request: TaskRequest, token: int) -> RunTaskRequestTypeDef:
    """The run_task request: Fargate, awsvpc, and a command override; nothing secret goes in."""
    overrides: TaskOverrideTypeDef = {
        "containerOverrides": [{
            "name": request.container,
            "command": list(request.command),
            "environment": [{"name": k, "value": v} for k, v in request.environment],
        }]
    }
    if request.task_role_arn:
        overrides["taskRoleArn"] = request.task_role_arn
    return {
        "cluster": config.cluster,
        "taskDefinition": request.task_definition,
        "launchType": "FARGATE",
        "platformVersion": config.platform_version,
        "count": 1,
        "networkConfiguration": {
            "awsvpcConfiguration": {
                "subnets": list(config.subnets),
                "securityGroups": list(config.security_groups),
                "assignPublicIp": "ENABLED" if config.assign_public_ip else "DISABLED",
            }
        },
        "overrides": overrides,
        "startedBy": request.started_by,
        "tags": [{"key": k, "value": v} for k, v in request.tags],
        "enableECSManagedTags": True,
        # ECS starts at most one task per token: `start` moves to the next token only after ECS
        # said no task was started, so a retry after a timeout cannot start a second one.
        "clientToken": f"{request.client_token}-{token}"[:64],
    }
