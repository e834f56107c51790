"""The task definition, read once per run: its essential container and where that container logs.

targets.yaml may name these too (ecs.container, ecs.log_group, ecs.log_stream_prefix); then they must
agree with it. Of several essential containers, ecs.container must say which one runs db-backup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from ..aws import infra_error
from ..errors import BadInput, InfraError
from ..targets import EcsConfig

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient
    from mypy_boto3_ecs.type_defs import ContainerDefinitionOutputTypeDef


@dataclass(frozen=True)
class AwsLogs:
    """Where the awslogs driver writes the container's output; the region may differ from the task's."""

    group: str
    region: str
    stream_prefix: str


@dataclass(frozen=True)
class TaskDefinition:
    """What a run relies on, from one revision of the task definition."""

    name: str  # family:revision; run_task gets it, so the task runs the revision these facts are from
    container: str  # the essential container: its command is overridden and its exit code is the verdict
    logs: AwsLogs | None  # None when its log stream cannot be read from CloudWatch Logs
    logs_missing: str = ""  # why `logs` is None, as a sentence


def read(client: ECSClient, config: EcsConfig, region: str) -> TaskDefinition:
    """describe_task_definition once, pick the essential container, check targets.yaml against both."""
    try:
        found = client.describe_task_definition(taskDefinition=config.task_definition)["taskDefinition"]
    except ClientError as exc:
        raise InfraError(f"{infra_error(f'reading task definition {config.task_definition}', exc)}; check "
                         "ecs.task_definition in targets.yaml and the runner's ecs:DescribeTaskDefinition permission") from exc
    except BotoCoreError as exc:  # no credentials, no connection
        raise infra_error(f"reading task definition {config.task_definition}", exc) from exc
    name = f"{found.get('family', config.task_definition)}:{found.get('revision', '?')}"
    container = _essential(found.get("containerDefinitions", []), config.container, name)
    container_name = container.get("name", "")
    logs, missing = _logs(container, name, region)
    _check_logs(config, logs, missing, container_name, name)
    return TaskDefinition(name=name, container=container_name, logs=logs, logs_missing=missing)


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _essential(definitions: Sequence[ContainerDefinitionOutputTypeDef], wanted: str | None, name: str) -> ContainerDefinitionOutputTypeDef:
    # ECS counts a container without `essential` as essential.
    essential = [d for d in definitions if d.get("essential", True)]
    names = [d.get("name", "") for d in essential]
    if not essential:
        raise BadInput(f"task definition {name} has no essential container; mark the container that runs db-backup essential")
    if wanted is not None:
        for definition in essential:
            if definition.get("name") == wanted:
                return definition
        if len(essential) == 1:
            raise BadInput(f"ecs.container {wanted!r} in targets.yaml is not the task definition's essential container "
                           f"{names[0]!r} ({name}); remove ecs.container or set it to {names[0]!r}")
        raise BadInput(f"ecs.container {wanted!r} in targets.yaml is not one of the task definition's essential containers "
                       f"{_quoted(names)} ({name}); set it to the one that runs db-backup")
    if len(essential) > 1:
        raise BadInput(f"task definition {name} has {len(essential)} essential containers ({_quoted(names)}); "
                       "set ecs.container in targets.yaml to the one that runs db-backup")
    return essential[0]


def _logs(container: ContainerDefinitionOutputTypeDef, name: str, region: str) -> tuple[AwsLogs | None, str]:
    """The container's awslogs settings, or None and why there are none."""
    where = f"container {container.get('name', '')!r} of task definition {name}"
    settings = container.get("logConfiguration")
    if settings is None:
        return None, f"{where} has no log configuration"
    driver = settings.get("logDriver", "")
    if driver != "awslogs":
        return None, f"{where} logs with the {driver} driver"
    options = settings.get("options", {})
    group, prefix = options.get("awslogs-group"), options.get("awslogs-stream-prefix")
    if not group:
        return None, f"{where} sets no awslogs-group"
    if not prefix:
        # Without a prefix the stream is named after the container's id, which ECS does not report here.
        return None, f"{where} sets no awslogs-stream-prefix, so its log stream has no known name"
    # awslogs-region left out means the task's own region.
    return AwsLogs(group=group, region=options.get("awslogs-region") or region, stream_prefix=prefix), ""


def _check_logs(config: EcsConfig, logs: AwsLogs | None, missing: str, container: str, name: str) -> None:
    given = (
        ("ecs.log_group", config.log_group, logs.group if logs else None, "awslogs-group"),
        ("ecs.log_stream_prefix", config.log_stream_prefix, logs.stream_prefix if logs else None, "awslogs-stream-prefix"),
    )
    for field, value, actual, option in given:
        if value is None or value == actual:
            continue
        if actual is None:
            raise BadInput(f"{field} {value!r} is set in targets.yaml, but {missing}; remove {field}")
        raise BadInput(f"{field} {value!r} in targets.yaml is not the task definition's {option} {actual!r} "
                       f"({name}, container {container!r}); remove {field} or set it to {actual!r}")
