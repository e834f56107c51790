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

    threshold: float = Field(
        default=DEFAULT_THRESHOLD, ge=0, lt=1,
        description="A backup smaller than this fraction of the median of the good backups before it fires the alarm "
                    "(strictly smaller: exactly this fraction is still in range). `0` turns the alarm off.",
        examples=[0.3],
    )
    # Fewer than MIN_PREVIOUS backups are never judged, so a smaller window would never fire.
    window: int = Field(
        default=DEFAULT_WINDOW, ge=MIN_PREVIOUS, le=60,
        description="How many of the previous good backups the median is taken over. A backup is judged only once "
                    f"{MIN_PREVIOUS} previous good backups exist, hence no window below {MIN_PREVIOUS}.",
        examples=[14],
    )


class RetentionModel(_Strict):
    """How many backups of each calendar tier to keep (runner.retention); `0` turns weekly, monthly or yearly off, never daily."""

    daily: int = Field(
        default=DEFAULT_RETENTION.daily, ge=1, le=3650,
        description="Keep every backup of the last N days; at least 1, since the daily tier cannot be turned off. "
                    "In S3 the stack's `DailyRetentionDays` must be N x 1.",
        examples=[7],
    )
    weekly: int = Field(
        default=DEFAULT_RETENTION.weekly, ge=0, le=520,
        description="Keep the first good backup of each of the last N ISO weeks; `0`: no backup becomes weekly "
                    "(those that would are daily ones). "
                    "In S3 the stack's `WeeklyRetentionDays` must be N x 7.",
        examples=[5],
    )
    monthly: int = Field(
        default=DEFAULT_RETENTION.monthly, ge=0, le=1200,
        description="Keep the first good backup of each of the last N months; `0`: no backup becomes monthly "
                    "(those that would are weekly or daily ones, by the rules of those tiers). "
                    "In S3 the stack's `MonthlyRetentionDays` must be N x 31.",
        examples=[12],
    )
    yearly: int = Field(
        default=DEFAULT_RETENTION.yearly, ge=0, le=100,
        description="Keep the first good backup of each of the last N years; `0`: no backup becomes yearly "
                    "(those that would are monthly, weekly or daily ones, by the rules of those tiers). "
                    "In S3 the stack's `YearlyRetentionDays` must be N x 366.",
        examples=[3],
    )


class TargetRetentionModel(_Strict):
    """A target's retention: the fields it gives replace the defaults' ones."""

    daily: int | None = Field(
        default=None, ge=1, le=3650,
        description="Replaces `defaults.retention.daily` for this target (at least 1). S3 expires by the bucket's rules, "
                    "so a count other than the stack's only warns (`db-backup retention`).",
        examples=[14],
    )
    weekly: int | None = Field(
        default=None, ge=0, le=520,
        description="Replaces `defaults.retention.weekly` for this target; `0`: none of its backups is weekly.",
        examples=[0],
    )
    monthly: int | None = Field(
        default=None, ge=0, le=1200,
        description="Replaces `defaults.retention.monthly` for this target; `0`: none of its backups is monthly.",
        examples=[0],
    )
    yearly: int | None = Field(
        default=None, ge=0, le=100,
        description="Replaces `defaults.retention.yearly` for this target; `0`: none of its backups is yearly.",
        examples=[0],
    )


def _env_reference(value: str | None) -> str | None:
    if value is not None and not value.startswith("env:"):
        raise ValueError("a URL here is a secret; write env:VARIABLE and set that variable from a secret")
    if value is not None and not ENV_NAME_RE.match(value.removeprefix("env:")):
        raise ValueError(f"{value!r} does not name an environment variable; write e.g. env:DB_BACKUP_WEBHOOK_URL")
    return value


class AlertsModel(_Strict):
    """Where the nightly report and the drill report tell someone; URLs are secrets, so only env: references."""

    webhook: str | None = Field(
        default=None,
        description="`env:VARIABLE` naming the variable that holds the webhook URL (a Slack incoming webhook works as is). "
                    "A URL written here is refused. Unset: no message.",
        examples=["env:DB_BACKUP_WEBHOOK_URL"],
    )
    webhook_format: Literal["slack", "json"] = Field(
        default="slack",
        description="`slack`: Slack blocks with a plain-text fallback; `json`: a generic JSON document.",
        examples=["json"],
    )
    heartbeat_url: str | None = Field(
        default=None,
        description="`env:VARIABLE` naming the variable that holds a dead man's switch URL (e.g. healthchecks.io), "
                    "sent a GET only after a fully good night. Unset: no ping.",
        examples=["env:DB_BACKUP_HEARTBEAT_URL"],
    )
    notify: Literal["failures", "always"] = Field(
        default="failures",
        description="`failures`: a message only when a target failed, is missing or is stale; `always`: after every report. "
                    "`db-backup report --notify` overrides it for one run.",
        examples=["always"],
    )

    _webhook = field_validator("webhook", "heartbeat_url")(_env_reference)


class EcsModel(_Strict):
    """How `--executor ecs` starts a Fargate task; the stack's `TargetsDefaults` output (a whole `defaults:` block) holds it."""

    cluster: str = Field(description="The ECS cluster (the stack's `EcsCluster` output).", examples=["db-backup"])
    task_definition: str = Field(
        description="The task definition family (the stack's `TaskDefinition` output); each task runs its newest revision.",
        examples=["db-backup"],
    )
    # The runner reads these three from the task definition; given here, they must match it.
    container: str | None = Field(
        default=None, min_length=1,
        description="The container that runs db-backup. Unset: the task definition's essential container; "
                    "set, it must be that container. Best left out.",
        examples=["db-backup"],
    )
    subnets: list[str] = Field(
        min_length=1,
        description="Subnets the task runs in, a YAML list. The stack's `Subnets` output is one comma-separated string: "
                    "write each of its ids as an item.",
        examples=[["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]],
    )
    security_groups: list[str] = Field(
        default_factory=list,
        description="Security groups of the task (the stack's `SecurityGroups` output).",
        examples=[["sg-0123456789abcdef0"]],
    )
    assign_public_ip: bool = Field(
        default=False,
        description="Give the task a public IP: only for public subnets without a NAT gateway.",
        examples=[True],
    )
    log_group: str | None = Field(
        default=None, min_length=1,
        description="The CloudWatch log group the job follows. Unset: the container's `awslogs-group`; "
                    "set, it must be that group. Best left out.",
        examples=["/ecs/db-backup"],
    )
    log_stream_prefix: str | None = Field(
        default=None, min_length=1,
        description="The log stream prefix. Unset: the container's `awslogs-stream-prefix`; set, it must be that prefix. "
                    "Best left out.",
        examples=["ecs"],
    )
    platform_version: str = Field(
        default="LATEST",
        description="The Fargate platform version the task runs on.",
        examples=["1.4.0"],
    )
    # Task role for restores into unprotected environments (the stack's NonProductionTaskRoleArn);
    # unset, they run as the task definition's role.
    nonproduction_task_role_arn: str | None = Field(
        default=None,
        description="Task role of restores into unprotected environments (the stack's `NonProductionTaskRoleArn` output: "
                    "no production SSM parameters, reads the bucket only). Unset: the task definition's role, "
                    "which the stack's non-production restore role may not pass.",
        examples=["arn:aws:iam::123456789012:role/db-backup-NonProductionTaskRole-ABC123"],
    )
    # Task role for restore drills (the stack's DrillTaskRoleArn: no SSM reads, writes only drill
    # records); unset, drills run as the task definition's role.
    drill_task_role_arn: str | None = Field(
        default=None,
        description="Task role of restore drills (the stack's `DrillTaskRoleArn` output: no SSM reads, writes only drill "
                    "records). Unset: drills run as the task definition's role.",
        examples=["arn:aws:iam::123456789012:role/db-backup-DrillTaskRole-ABC123"],
    )


class DatabaseModel(_Strict):
    """Fields left out come from the old system's SSM layout (port: 5432)."""

    host: str | None = Field(
        default=None,
        description="Server host name or address: a literal, `ssm:/path` or `env:VARIABLE`. "
                    "Unset: `ssm:/{identifier}/{env}/db/backup/host`.",
        examples=["literature-beta.example.internal"],
    )
    port: int | str = Field(
        default=5432,
        description="Server port: a number, `ssm:/path` or `env:VARIABLE` (the SSM layout has no port).",
        examples=[5433],
    )
    name: str | None = Field(
        default=None,
        description="Database name: a literal, `ssm:/path` or `env:VARIABLE`. Unset: `ssm:/{identifier}/{env}/db/backup/name`.",
        examples=["literature"],
    )
    user: str | None = Field(
        default=None,
        description="User name: a literal, `ssm:/path` or `env:VARIABLE`. Unset: `ssm:/{identifier}/{env}/db/backup/user`.",
        examples=["backup"],
    )
    password: str | None = Field(
        default=None,
        description="`ssm:/path` (a SecureString) or `env:VARIABLE`; a literal password is refused. "
                    "Left out: `ssm:/{identifier}/{env}/db/backup/password`; `null`: no password "
                    "(trust, certificates, `.pgpass` or `PGPASSWORD`).",
        examples=["ssm:/literature/beta/db/backup/password"],
    )
    sslmode: str | None = Field(
        default=None,
        description="libpq's `sslmode` (`disable`, `require`, `verify-full`, ...). Unset: libpq's default.",
        examples=["verify-full"],
    )

    @field_validator("password")
    @classmethod
    def _password_is_a_reference(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(SECRET_PREFIXES):
            raise ValueError(
                "a literal password is not allowed; write ssm:/path/to/parameter or env:VARIABLE"
            )
        return value


class DefaultsModel(_Strict):
    """Settings every target shares; a target's own field of the same name wins."""

    storage: str = Field(
        description="Where backups are stored: `s3://BUCKET[/PREFIX]` or `file://PATH` (a relative path is taken from "
                    "targets.yaml's folder). Each target's backups go under `{identifier}/{env}/`.",
        examples=["s3://acme-db-backups"],
    )
    region: str = Field(default="us-east-1", description="AWS region of the bucket, SSM and ECS.", examples=["eu-west-1"])
    storage_class: str = Field(
        default="STANDARD",
        description="S3 storage class of new backups (ignored by folders).",
        examples=["STANDARD_IA"],
    )
    compression: str = Field(
        default="zstd:3",
        description="`zstd[:1-19]` (zstd around pg_dump's stream), `gzip[:1-9]` (pg_dump's own) or `none`.",
        examples=["zstd:1"],
    )
    executor: Literal["local", "ecs"] | None = Field(
        default=None,
        description="Where jobs run: `local` (this machine) or `ecs` (a Fargate task). "
                    "Unset: `ecs` when `ecs` is set, else `local`. `--executor` overrides it.",
        examples=["local"],
    )
    keep_previous: bool = Field(
        default=True,
        description="Keep the replaced database as `{name}__previous` after a restore, until the next one.",
        examples=[False],
    )
    lock_wait_timeout: str = Field(
        default="5m",
        description="How long pg_dump waits for each table's lock before failing the backup: "
                    "a duration from `1s` to `24h` with its unit (`30s`, `5m`, `2h`).",
        examples=["10m"],
    )
    ecs: EcsModel | None = Field(
        default=None,
        description="How ECS tasks are started. Needed for `executor: ecs`.",
        examples=[{"cluster": "db-backup", "task_definition": "db-backup", "subnets": ["subnet-0123456789abcdef0"]}],
    )
    shrink_alarm: ShrinkAlarmModel | None = Field(
        default=None,
        description="The shrink alarm; `off` turns it off, `on` takes the defaults.",
        examples=[{"threshold": 0.5, "window": 7}],
    )
    retention: RetentionModel | None = Field(
        default=None,
        description="Calendar retention. Unset: "
                    f"daily {DEFAULT_RETENTION.daily}, weekly {DEFAULT_RETENTION.weekly}, "
                    f"monthly {DEFAULT_RETENTION.monthly}, yearly {DEFAULT_RETENTION.yearly}.",
        examples=[{"daily": 7, "weekly": 5, "monthly": 12, "yearly": 0}],
    )

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
    """One environment, under its name (lower case letters, digits, `_`, `-`); `{}` takes the defaults."""

    protected: bool = Field(
        default=False,
        description="A restore into it needs `--confirm ENV` (in GitHub, the environment's approval).",
        examples=[True],
    )


class TargetModel(_Strict):
    """One database in one environment; unset fields come from `defaults`."""

    identifier: str = Field(
        description="The database's name in db-backup: lower case letters, digits, `_` and `-`, at most 63 characters. "
                    "(identifier, env) is unique.",
        examples=["curation"],
    )
    env: str = Field(description="Its environment: a name declared under `environments`.", examples=["production"])
    schedule: Literal["nightly"] | None = Field(
        default=None,
        description="`nightly`: backed up by the nightly workflow, drilled weekly and checked by `status`. Unset: on demand only.",
        examples=["nightly"],
    )
    ignore_privileges: bool = Field(
        default=False,
        description="Restore without owners and grants (`pg_restore --no-owner --no-privileges`), "
                    "for a destination that lacks the source's roles.",
        examples=[True],
    )
    keep_previous: bool | None = Field(
        default=None,
        description="Replaces `defaults.keep_previous` for restores into this target.",
        examples=[False],
    )
    allow_upward_restore: bool = Field(
        default=False,
        description="Allow restores into this target from a less important environment (one listed after its own).",
        examples=[True],
    )
    storage_class: str | None = Field(
        default=None, description="Replaces `defaults.storage_class`.", examples=["GLACIER_IR"],
    )
    compression: str | None = Field(default=None, description="Replaces `defaults.compression`.", examples=["gzip:6"])
    executor: Literal["local", "ecs"] | None = Field(
        default=None, description="Replaces `defaults.executor`.", examples=["local"],
    )
    lock_wait_timeout: str | None = Field(
        default=None, description="Replaces `defaults.lock_wait_timeout` (from `1s` to `24h`).", examples=["30s"],
    )
    database: DatabaseModel | None = Field(
        default=None,
        description="Where to connect. Unset: everything from "
                    "SSM `/{identifier}/{env}/db/backup/{host,name,user,password}`, port 5432.",
        examples=[{"port": 5433}],
    )
    shrink_alarm: ShrinkAlarmModel | None = Field(
        default=None,
        description="Overrides the defaults' shrink alarm field by field; `off` turns it off for this target.",
        examples=[{"window": 14}],
    )
    retention: TargetRetentionModel | None = Field(
        default=None,
        description="Overrides the defaults' retention field by field.",
        examples=[{"weekly": 0, "monthly": 0}],
    )

    _lock_wait = field_validator("lock_wait_timeout", mode="before")(_lock_wait_timeout)
    _shrink = field_validator("shrink_alarm", mode="before")(_shrink_alarm)

    @field_validator("compression")
    @classmethod
    def _compression(cls, value: str | None) -> str | None:
        if value is not None:
            parse_compression(value)
        return value


class TargetsFileModel(_Strict):
    """The whole file: its version, the shared defaults, the environments, the targets and the alerts."""

    version: Literal[1] = Field(description="The file format's version: always `1`.", examples=[1])
    defaults: DefaultsModel = Field(
        description="Settings every target shares.",
        examples=[{"storage": "s3://acme-db-backups"}],
    )
    environments: dict[str, EnvironmentModel | None] = Field(
        min_length=1,
        description="The environments, most important first: restores never go to an environment listed before "
                    "the source's, unless the destination sets `allow_upward_restore`.",
        examples=[{"production": {"protected": True}, "beta": {}}],
    )
    targets: list[TargetModel] = Field(
        default_factory=list,
        description="The databases, one entry per (identifier, env).",
        examples=[[{"identifier": "curation", "env": "production", "schedule": "nightly"}]],
    )
    alerts: AlertsModel | None = Field(
        default=None,
        description="Where reports tell someone. Unset: no message, no heartbeat.",
        examples=[{"webhook": "env:DB_BACKUP_WEBHOOK_URL"}],
    )


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
