"""targets.yaml: the registry of databases and environments, built from the checked file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .compression import Compression, parse_compression
from .durations import parse_duration
from .errors import BadInput, RestoreRefused, TargetsInvalid, UnknownTarget
from .retention import DEFAULT_RETENTION, RetentionPolicy
from .shrink import DEFAULT_SHRINK_POLICY, ShrinkPolicy
from .targets_schema import (
    DEFAULT_LOCK_WAIT_TIMEOUT,
    MAX_TARGETS_BYTES,
    AlertsModel,
    RetentionModel,
    ShrinkAlarmModel,
    TargetRetentionModel,
    TargetsFileModel,
    UniqueKeyLoader,
    cross_problems,
    pydantic_problems,
)


@dataclass(frozen=True)
class EcsConfig:
    cluster: str
    task_definition: str
    container: str | None  # None: the task definition's essential container
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: bool
    log_group: str | None  # None: the container's awslogs-group
    log_stream_prefix: str | None  # None: the container's awslogs-stream-prefix
    platform_version: str
    nonproduction_task_role_arn: str | None = None
    drill_task_role_arn: str | None = None


@dataclass(frozen=True)
class DatabaseRef:
    """Where a target's connection comes from: values may be `ssm:/...` or `env:VAR` references."""

    host: str
    port: str
    name: str
    user: str
    password: str | None
    sslmode: str | None = None

    @staticmethod
    def default_ssm(identifier: str, env: str) -> DatabaseRef:
        base = f"ssm:/{identifier}/{env}/db/backup"
        return DatabaseRef(
            host=f"{base}/host",
            port="5432",
            name=f"{base}/name",
            user=f"{base}/user",
            password=f"{base}/password",
        )


@dataclass(frozen=True)
class Target:
    identifier: str
    env: str
    schedule: str | None
    protected: bool
    ignore_privileges: bool
    keep_previous: bool
    allow_upward_restore: bool
    storage: str
    region: str
    storage_class: str
    compression: Compression
    executor: str
    ecs: EcsConfig | None
    database: DatabaseRef
    # How long pg_dump waits for each table's lock before failing the backup, instead of hanging.
    lock_wait_timeout: timedelta = DEFAULT_LOCK_WAIT_TIMEOUT
    shrink_alarm: ShrinkPolicy = DEFAULT_SHRINK_POLICY
    retention: RetentionPolicy = DEFAULT_RETENTION

    @property
    def name(self) -> str:
        return f"{self.identifier}/{self.env}"


@dataclass(frozen=True)
class AlertsConfig:
    """Where reports tell someone: `env:VAR` references to secret URLs, resolved only when posting."""

    webhook: str | None = None
    webhook_format: str = "slack"  # slack (blocks with a plain-text fallback) or json (generic)
    heartbeat_url: str | None = None
    notify: str = "failures"  # failures (and stale backups) or always


@dataclass(frozen=True)
class Registry:
    path: str
    environments: tuple[str, ...]
    protected: frozenset[str]
    targets: tuple[Target, ...]
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the validated file
    alerts: AlertsConfig = AlertsConfig()

    def excerpt(self, *chosen: Target) -> str:
        """This file cut down to the chosen targets (defaults and environments whole), as compact JSON.

        A Fargate task gets it with its command, so it works from the same definitions as the
        runner, not from whatever targets.yaml its image was built with.
        """
        names = {(t.identifier, t.env) for t in chosen}
        kept = [t for t in self.document.get("targets", []) if (t.get("identifier"), t.get("env")) in names]
        return json.dumps({**self.document, "targets": kept}, separators=(",", ":"), default=str)

    def get(self, identifier: str, env: str) -> Target:
        for target in self.targets:
            if target.identifier == identifier and target.env == env:
                return target
        known = sorted({t.env for t in self.targets if t.identifier == identifier})
        if known:
            raise UnknownTarget(
                f"{identifier} has no target in environment {env!r} in {self.path}; "
                f"it has: {', '.join(known)}"
            )
        raise UnknownTarget(
            f"unknown target {identifier!r} in {self.path}; "
            "run `db-backup targets` to see the configured ones"
        )

    def rank(self, env: str) -> int:
        """Position by importance: 0 is the most important environment."""
        return self.environments.index(env)

    def check_direction(self, source: Target, dest: Target) -> None:
        """Refuse restores from a less important environment into a more important one."""
        if self.rank(source.env) > self.rank(dest.env) and not dest.allow_upward_restore:
            raise RestoreRefused(
                f"refusing to restore {source.name} into {dest.name}: {source.env} is less "
                f"important than {dest.env}; set allow_upward_restore: true on {dest.name} "
                "if this is intended"
            )

    def scheduled(self, schedule: str) -> tuple[Target, ...]:
        return tuple(t for t in self.targets if t.schedule == schedule)


def _shrink_policy(given: ShrinkAlarmModel | None, base: ShrinkPolicy) -> ShrinkPolicy:
    """`base` with the fields the file sets; a target's setting overrides the defaults' field by field."""
    if given is None:
        return base
    fields = {name: getattr(given, name) for name in given.model_fields_set}
    return ShrinkPolicy(threshold=fields.get("threshold", base.threshold), window=fields.get("window", base.window))


def _retention(given: RetentionModel | TargetRetentionModel | None, base: RetentionPolicy) -> RetentionPolicy:
    """`base` with the fields the file sets, field by field like the shrink alarm."""
    if given is None:
        return base
    fields = {name: getattr(given, name) for name in given.model_fields_set if getattr(given, name) is not None}
    return RetentionPolicy(
        daily=fields.get("daily", base.daily), weekly=fields.get("weekly", base.weekly),
        monthly=fields.get("monthly", base.monthly), yearly=fields.get("yearly", base.yearly),
    )


def _alerts(given: AlertsModel | None) -> AlertsConfig:
    if given is None:
        return AlertsConfig()
    return AlertsConfig(given.webhook, given.webhook_format, given.heartbeat_url, given.notify)


def _build(model: TargetsFileModel, path: str, base_dir: Path, document: Mapping[str, Any]) -> Registry:
    defaults = model.defaults
    ecs = None
    if defaults.ecs is not None:
        e = defaults.ecs
        ecs = EcsConfig(
            cluster=e.cluster,
            task_definition=e.task_definition,
            container=e.container,
            subnets=tuple(e.subnets),
            security_groups=tuple(e.security_groups),
            assign_public_ip=e.assign_public_ip,
            log_group=e.log_group,
            log_stream_prefix=e.log_stream_prefix,
            platform_version=e.platform_version,
            nonproduction_task_role_arn=e.nonproduction_task_role_arn,
            drill_task_role_arn=e.drill_task_role_arn,
        )
    storage = defaults.storage
    if storage.startswith("file://"):
        folder = Path(storage.removeprefix("file://"))
        storage = "file://" + str(folder if folder.is_absolute() else (base_dir / folder))
    protected = frozenset(name for name, env in model.environments.items() if env and env.protected)
    shrink_default = _shrink_policy(defaults.shrink_alarm, DEFAULT_SHRINK_POLICY)
    retention_default = _retention(defaults.retention, DEFAULT_RETENTION)
    targets = []
    for t in model.targets:
        db = DatabaseRef.default_ssm(t.identifier, t.env)
        if t.database:
            given = t.database
            db = DatabaseRef(
                host=given.host or db.host,
                port=str(given.port),
                name=given.name or db.name,
                user=given.user or db.user,
                # `password: null` means none (trust, certificates); left out means the SSM layout.
                password=given.password if "password" in given.model_fields_set else db.password,
                sslmode=given.sslmode,
            )
        targets.append(
            Target(
                identifier=t.identifier,
                env=t.env,
                schedule=t.schedule,
                protected=t.env in protected,
                ignore_privileges=t.ignore_privileges,
                keep_previous=defaults.keep_previous if t.keep_previous is None else t.keep_previous,
                allow_upward_restore=t.allow_upward_restore,
                storage=storage,
                region=defaults.region,
                storage_class=t.storage_class or defaults.storage_class,
                compression=parse_compression(t.compression or defaults.compression),
                executor=t.executor or defaults.executor or ("ecs" if ecs else "local"),
                ecs=ecs,
                database=db,
                lock_wait_timeout=parse_duration(t.lock_wait_timeout or defaults.lock_wait_timeout),
                shrink_alarm=_shrink_policy(t.shrink_alarm, shrink_default),
                retention=_retention(t.retention, retention_default),
            )
        )
    return Registry(
        path=path,
        environments=tuple(model.environments),
        protected=protected,
        targets=tuple(targets),
        document=document,
        alerts=_alerts(model.alerts),
    )


def _read_yaml(text: str, path: str) -> tuple[Any, list[str]]:
    """The document and its duplicate keys; TargetsInvalid if it is not YAML at all."""
    loader: UniqueKeyLoader | None = None
    try:
        # The loader checks the characters as it is created: inside the try too.
        loader = UniqueKeyLoader(text)
        return loader.get_single_data(), loader.duplicates
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        position = getattr(exc, "position", None)  # a character YAML does not allow
        if mark is not None:
            where = f"line {mark.line + 1}"
        elif isinstance(position, int):
            where = f"line {text.count(chr(10), 0, position) + 1}"
        else:
            where = "somewhere"
        reason = getattr(exc, "problem", None) or getattr(exc, "reason", None) or exc
        problem = f"{where}: not valid YAML ({' '.join(str(reason).split())})"
    except RecursionError:
        problem = "(top level): nested too deeply to be a targets file; check its brackets"
    finally:
        if loader is not None:
            loader.dispose()
    raise TargetsInvalid(path, [problem]) from None


def parse_registry(text: str, path: str = "targets.yaml", base_dir: Path | None = None) -> Registry:
    """Validate targets.yaml text; TargetsInvalid lists every problem with its place."""
    raw, duplicates = _read_yaml(text, path)
    if not isinstance(raw, dict):
        raise TargetsInvalid(path, [*duplicates, "(top level): must be a mapping with version, defaults, environments, targets"])
    cross = cross_problems(raw)
    try:
        model = TargetsFileModel.model_validate(raw)
    except ValidationError as exc:
        raise TargetsInvalid(path, duplicates + pydantic_problems(exc, raw) + cross) from exc
    if duplicates or cross:
        raise TargetsInvalid(path, duplicates + cross)
    return _build(model, path, base_dir or Path.cwd(), raw)


def _read_text(path: Path, origin: str = "") -> str:
    """The file's text, checked before it is parsed: a file, not too large, readable, UTF-8."""
    point = "point --targets (or DB_BACKUP_TARGETS) at"
    try:
        if path.is_dir():
            raise BadInput(f"targets file {path} is a folder; {point} the targets.yaml file inside it")
        size = path.stat().st_size
        if size > MAX_TARGETS_BYTES:
            raise BadInput(f"targets file {path} is {size:,} bytes, more than the 1 MiB a targets file may be; {point} targets.yaml")
        with path.open("rb") as handle:
            # Bounded even when stat() says nothing useful (a pipe, a device, a file still growing).
            data = handle.read(MAX_TARGETS_BYTES + 1)
    except PermissionError:
        raise BadInput(f"targets file {path} cannot be read (permission denied); "
                       f"make it readable by this user, e.g. chmod a+r {path}") from None
    except FileNotFoundError:
        came_from = f" ({origin})" if origin else ""
        raise BadInput(f"targets.yaml not found at {path.resolve()}{came_from}; create it (see targets.example.yaml / "
                       "docs/targets.md) or pass --targets PATH / DB_BACKUP_TARGETS") from None
    except OSError as exc:
        raise BadInput(f"targets file {path} cannot be read ({exc.strerror or exc}); {point} a readable targets.yaml") from None
    if len(data) > MAX_TARGETS_BYTES:
        raise BadInput(f"targets file {path} is more than the 1 MiB a targets file may be; {point} targets.yaml")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise BadInput(f"targets file {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8") from None


def load_registry(path: Path, origin: str = "") -> Registry:
    """Read and validate targets.yaml; BadInput or TargetsInvalid (exit 2) for any problem.

    `origin`, where the path came from (`from --targets x.yaml`), is named when the file is missing.
    """
    return parse_registry(_read_text(path, origin), str(path), path.resolve().parent)
