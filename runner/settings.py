"""Settings read from the environment (pydantic models fed the prefixed variables); created once by the CLI."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import BadInput

ENV_PREFIX = "DB_BACKUP_"
# Below a second the log floods; beyond an hour a line says nothing useful (and a huge wait overflows the timer).
PROGRESS_INTERVAL_RANGE = (1.0, 3600.0)


class _FromEnvironment(BaseModel):
    """A model whose fields default to the environment's `{prefix}{FIELD}` variables (names in any case);
    values passed in win. pydantic-settings does the same but costs a tenth of a second to import."""

    model_config = ConfigDict(extra="ignore")
    env_prefix: ClassVar[str]

    def __init__(self, **values: Any) -> None:
        prefix, fields = self.env_prefix, type(self).model_fields
        found = {key[len(prefix):].lower(): value for key, value in os.environ.items()
                 if key.upper().startswith(prefix) and key[len(prefix):].lower() in fields}
        super().__init__(**{**found, **values})


class Settings(_FromEnvironment):
    env_prefix: ClassVar[str] = ENV_PREFIX

    targets: Path = Path("targets.yaml")
    # Set by the runner in a Fargate task's environment: the job's targets (Registry.excerpt),
    # which then win over the image's targets.yaml.
    targets_json: str | None = None
    # S3 multipart part size: memory use is about (parallel_uploads + 1) parts.
    part_size_mb: int = Field(default=16, ge=5, le=512)
    parallel_uploads: int = Field(default=2, ge=1, le=16)
    # Restore strategy: "auto" downloads and runs pg_restore -j for large dumps, streams small ones.
    restore_mode: Literal["auto", "stream", "parallel"] = "auto"
    restore_jobs: int = Field(default=0, ge=0, le=64)  # 0 = available cores, at least 2 (restore_mode.restore_jobs)
    # auto: a db-backup dump whose uncompressed size reaches this restores with -j (bench/RESULTS.md).
    parallel_threshold_mb: int = Field(default=256, ge=0)
    work_dir: Path | None = None  # where a restore may put a seekable copy; default: system temp
    swap_wait_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    # Bound on each administrative statement of a restore (DROP DATABASE waits for every backend on
    # the server to answer a barrier, forever if one is stuck).
    admin_timeout_s: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    # pg_restore's sessions build indexes with at least this much maintenance_work_mem (MiB; never lowered,
    # 0 leaves the server's own): 256 MiB cut index builds by about a fifth against the default 64 MiB.
    restore_maintenance_mb: int = Field(default=256, ge=0, le=65536)
    # Seconds between two progress lines of a long step when stderr is not a terminal (CI, CloudWatch).
    progress_interval: float = Field(default=15.0, allow_inf_nan=False)
    # Fault tests only: comma-separated step names where a restore holds for 120 s, to be killed there.
    test_pause_at: str | None = None

    @field_validator("progress_interval")
    @classmethod
    def _interval_in_range(cls, value: float) -> float:
        low, high = PROGRESS_INTERVAL_RANGE
        if not low <= value <= high:
            # The whole range in one message, where ge/le would name only the bound that was crossed.
            raise ValueError(f"a number of seconds from {low:g} to {high:g}")
        return value


# Values are shown cut short: enough to spot a typo, never a whole pasted blob.
_SHOWN_CHARS = 40


def _shown(value: object) -> str:
    text = str(value)
    return repr(text) if len(text) <= _SHOWN_CHARS else repr(text[:_SHOWN_CHARS]) + "..."


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _rule(item: Mapping[str, Any]) -> str:
    """What the value must be, in words: `a whole number`, `at least 5`, `auto, stream or parallel`."""
    ctx = item.get("ctx") or {}
    words = {
        "int_parsing": "a whole number",
        "int_from_float": "a whole number",
        "float_parsing": "a number",
        "finite_number": "a finite number",
        "bool_parsing": "true or false",
        "greater_than_equal": f"at least {_number(ctx.get('ge'))}",
        "greater_than": f"more than {_number(ctx.get('gt'))}",
        "less_than_equal": f"at most {_number(ctx.get('le'))}",
        "less_than": f"less than {_number(ctx.get('lt'))}",
        "literal_error": str(ctx.get("expected", "")).replace("'", ""),
    }
    return words.get(item["type"], str(item["msg"]).removeprefix("Input should be ").removeprefix("Value error, "))


def load_settings() -> Settings:
    """Settings from the environment; BadInput naming each bad DB_BACKUP_* variable in one line."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            # loc[0] is the field; a union type may add the member it tried after it.
            f"{ENV_PREFIX}{str(item['loc'][0]).upper()}={_shown(item['input'])} "
            f"is not valid: it must be {_rule(item)}"
            for item in exc.errors()
        ]
        fix = "fix or unset it" if len(problems) == 1 else "fix or unset them"
        # Not chained: the ValidationError repeats every value in full under --verbose.
        raise BadInput("; ".join(problems) + f"; {fix}") from None


class GithubEnv(_FromEnvironment):
    """What GitHub Actions tells a step through its environment."""

    env_prefix: ClassVar[str] = "GITHUB_"

    actions: bool = False
    step_summary: Path | None = None
    output: Path | None = None
    server_url: str = "https://github.com"
    repository: str | None = None
    run_id: str | None = None
    run_attempt: str | None = None
    actor: str | None = None
    triggering_actor: str | None = None
