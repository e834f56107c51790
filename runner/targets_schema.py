"""What targets.yaml may contain: the pydantic models of the file, its YAML reader, and each problem's place."""

from __future__ import annotations

import re
from collections.abc import Hashable
from datetime import timedelta
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .compression import parse_compression
from .durations import parse_duration
from .errors import BadInput
from .retention import DEFAULT_RETENTION
from .shrink import DEFAULT_THRESHOLD, DEFAULT_WINDOW, MIN_PREVIOUS

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SECRET_PREFIXES = ("ssm:", "env:")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Far larger than any real registry; a bigger file is the wrong file, and is refused before it is read.
MAX_TARGETS_BYTES = 1024 * 1024
DEFAULT_LOCK_WAIT_TIMEOUT = timedelta(minutes=5)
# pg_dump counts its lock wait in whole milliseconds and treats 0 as "wait forever": at least 1s.
LOCK_WAIT_RANGE = (timedelta(seconds=1), timedelta(hours=24))


class UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that records every mapping key given twice (plain YAML lets the last one win)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.found: list[tuple[int, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first: dict[Hashable, int] = {}
        for key_node, _value in node.value:
            # `<<: *anchor` merges may repeat on purpose; what they bring in may be overridden.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if not isinstance(key, Hashable):
                continue
            line = key_node.start_mark.line + 1
            if key in first:
                self.found.append((line, f"line {line}: duplicate key {key!r} (first on line {first[key]}); remove one of them"))
            else:
                first[key] = line
        return super().construct_mapping(node, deep)

    @property
    def duplicates(self) -> list[str]:
        """Every repeated key, in the order of the file."""
        return [problem for _line, problem in sorted(self.found)]


def _lock_wait_timeout(value: object) -> object:
    """Checks a lock_wait_timeout as written (`5m`); stays text in the model, a timedelta in Target."""
    if value is None:
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} has no unit; write a duration such as 30s, 5m or 2h")
    try:
        duration = parse_duration(value)
    except BadInput:
        raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m or 2h") from None
    low, high = LOCK_WAIT_RANGE
    if not low <= duration <= high:
        raise ValueError(f"{value!r} is out of range; write from 1s to 24h, e.g. 5m")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _shrink_alarm(value: object) -> object:
    """`off` (YAML reads it as false) turns the alarm off; `on` (true) takes the defaults; else a mapping."""
    if value is False or value == "off":
        return {"threshold": 0}
    if value is True or value == "on":
        return {}
    if value is None or isinstance(value, dict):
        return value
    raise ValueError(f"{value!r} is not a shrink alarm; write shrink_alarm: {{threshold: 0.5, window: 7}} or shrink_alarm: off")


class ShrinkAlarmModel(_Strict):
    """Alarm below `threshold` x the median of the previous `window` good backups; threshold 0 turns it off."""

    threshold: float = Field(default=DEFAULT_THRESHOLD, ge=0, lt=1)
    # Fewer than MIN_PREVIOUS backups are never judged, so a smaller window would never fire.
    window: int = Field(default=DEFAULT_WINDOW, ge=MIN_PREVIOUS, le=60)


class RetentionModel(_Strict):
    """How many backups of each calendar tier to keep (runner.retention); 0 turns a tier off."""

    daily: int = Field(default=DEFAULT_RETENTION.daily, ge=1, le=3650)
    weekly: int = Field(default=DEFAULT_RETENTION.weekly, ge=0, le=520)
    monthly: int = Field(default=DEFAULT_RETENTION.monthly, ge=0, le=1200)
    yearly: int = Field(default=DEFAULT_RETENTION.yearly, ge=0, le=100)


class TargetRetentionModel(_Strict):
    """A target's retention: the fields it gives replace the defaults' ones."""

    daily: int | None = Field(default=None, ge=1, le=3650)
    weekly: int | None = Field(default=None, ge=0, le=520)
    monthly: int | None = Field(default=None, ge=0, le=1200)
    yearly: int | None = Field(default=None, ge=0, le=100)


def _env_reference(value: str | None) -> str | None:
    if value is not None and not value.startswith("env:"):
        raise ValueError("a URL here is a secret; write env:VARIABLE and set that variable from a secret")
    if value is not None and not ENV_NAME_RE.match(value.removeprefix("env:")):
        raise ValueError(f"{value!r} does not name an environment variable; write e.g. env:DB_BACKUP_WEBHOOK_URL")
    return value


class AlertsModel(_Strict):
    """Where the nightly report and the drill report tell someone; URLs are secrets, so only env: references."""

    webhook: str | None = None
    webhook_format: Literal["slack", "json"] = "slack"
    heartbeat_url: str | None = None
    notify: Literal["failures", "always"] = "failures"

    _webhook = field_validator("webhook", "heartbeat_url")(_env_reference)


class EcsModel(_Strict):
    cluster: str
    task_definition: str
    # The runner reads these three from the task definition; given here, they must match it.
    container: str | None = Field(default=None, min_length=1)
    subnets: list[str] = Field(min_length=1)
    security_groups: list[str] = Field(default_factory=list)
    assign_public_ip: bool = False
    log_group: str | None = Field(default=None, min_length=1)
    log_stream_prefix: str | None = Field(default=None, min_length=1)
    platform_version: str = "LATEST"
    # Task role for restores into unprotected environments (the stack's NonProductionTaskRoleArn);
    # unset, they run as the task definition's role.
    nonproduction_task_role_arn: str | None = None
    # Task role for restore drills (the stack's DrillTaskRoleArn: no SSM reads, writes only drill
    # records); unset, drills run as the task definition's role.
    drill_task_role_arn: str | None = None


class DatabaseModel(_Strict):
    """Fields left out come from the old system's SSM layout (port: 5432)."""

    host: str | None = None
    port: int | str = 5432
    name: str | None = None
    user: str | None = None
    password: str | None = None
    sslmode: str | None = None

    @field_validator("password")
    @classmethod
    def _password_is_a_reference(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(SECRET_PREFIXES):
            raise ValueError(
                "a literal password is not allowed; write ssm:/path/to/parameter or env:VARIABLE"
            )
        return value


class DefaultsModel(_Strict):
    storage: str
    region: str = "us-east-1"
    storage_class: str = "STANDARD"
    compression: str = "zstd:3"
    executor: Literal["local", "ecs"] | None = None
    keep_previous: bool = True
    lock_wait_timeout: str = "5m"
    ecs: EcsModel | None = None
    shrink_alarm: ShrinkAlarmModel | None = None
    retention: RetentionModel | None = None

    _lock_wait = field_validator("lock_wait_timeout", mode="before")(_lock_wait_timeout)
    _shrink = field_validator("shrink_alarm", mode="before")(_shrink_alarm)

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        if not value.startswith(("s3://", "file://")) or value in ("s3://", "file://"):
            raise ValueError("storage must be s3://BUCKET[/PREFIX] or file://PATH")
        return value

    @field_validator("compression")
    @classmethod
    def _compression(cls, value: str) -> str:
        parse_compression(value)
        return value


class EnvironmentModel(_Strict):
    protected: bool = False


class TargetModel(_Strict):
    identifier: str
    env: str
    schedule: Literal["nightly"] | None = None
    ignore_privileges: bool = False
    keep_previous: bool | None = None
    allow_upward_restore: bool = False
    storage_class: str | None = None
    compression: str | None = None
    executor: Literal["local", "ecs"] | None = None
    lock_wait_timeout: str | None = None
    database: DatabaseModel | None = None
    shrink_alarm: ShrinkAlarmModel | None = None
    retention: TargetRetentionModel | None = None

    _lock_wait = field_validator("lock_wait_timeout", mode="before")(_lock_wait_timeout)
    _shrink = field_validator("shrink_alarm", mode="before")(_shrink_alarm)

    @field_validator("compression")
    @classmethod
    def _compression(cls, value: str | None) -> str | None:
        if value is not None:
            parse_compression(value)
        return value


class TargetsFileModel(_Strict):
    version: Literal[1]
    defaults: DefaultsModel
    environments: dict[str, EnvironmentModel | None] = Field(min_length=1)
    targets: list[TargetModel] = Field(default_factory=list)
    alerts: AlertsModel | None = None


def _place(loc: tuple[int | str, ...], raw: dict[str, Any]) -> str:
    """`targets[2] (literature/beta).database.password` from pydantic's location tuple."""
    parts: list[str] = []
    for position, item in enumerate(loc):
        if isinstance(item, int):
            label = ""
            items = raw.get("targets")
            if position == 1 and loc[0] == "targets" and isinstance(items, list) and item < len(items) and isinstance(items[item], dict):
                label = f" ({items[item].get('identifier', '?')}/{items[item].get('env', '?')})"
            if parts:
                parts[-1] = f"{parts[-1]}[{item}]{label}"
            else:  # a top-level key YAML read as a number
                parts.append(str(item))
        else:
            parts.append(item)
    return ".".join(parts) or "(top level)"


def pydantic_problems(error: ValidationError, raw: dict[str, Any]) -> list[str]:
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key; remove it or check its spelling"
        problems.append(f"{_place(item['loc'], raw)}: {message}")
    return problems


def cross_problems(raw: dict[str, Any]) -> list[str]:
    """Rules across entries, checked on the raw data so they are reported with field errors."""
    problems = []
    environments = raw.get("environments") if isinstance(raw.get("environments"), dict) else {}
    assert isinstance(environments, dict)
    for env in environments:
        if not NAME_RE.match(str(env)):
            problems.append(f"environments.{env}: name must match {NAME_RE.pattern}")
    defaults = raw.get("defaults") if isinstance(raw.get("defaults"), dict) else {}
    assert isinstance(defaults, dict)
    items = raw.get("targets") if isinstance(raw.get("targets"), list) else []
    assert isinstance(items, list)
    seen: set[tuple[str, str]] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        identifier, env = str(item.get("identifier", "?")), str(item.get("env", "?"))
        place = f"targets[{index}] ({identifier}/{env})"
        if "identifier" in item and not NAME_RE.match(identifier):
            problems.append(f"{place}.identifier: must match {NAME_RE.pattern}")
        if "env" in item and env not in environments:
            problems.append(f"{place}.env: environment {env!r} is not declared under environments")
        key = (identifier, env)
        if key in seen:
            problems.append(f"{place}: duplicate target; (identifier, env) must be unique")
        seen.add(key)
        if (item.get("executor") or defaults.get("executor")) == "ecs" and not defaults.get("ecs"):
            problems.append(f"{place}.executor: ecs needs defaults.ecs settings")
    return problems
