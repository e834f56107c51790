"""Settings read from the environment (pydantic-settings); created once by the CLI."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DB_BACKUP_", extra="ignore")

    targets: Path = Path("targets.yaml")
    # Set by the runner in a Fargate task's environment: the job's targets (Registry.excerpt),
    # which then win over the image's targets.yaml.
    targets_json: str | None = None
    # S3 multipart part size: memory use is about (parallel_uploads + 1) parts.
    part_size_mb: int = Field(default=16, ge=5, le=512)
    parallel_uploads: int = Field(default=2, ge=1, le=16)
    # Restore strategy: "auto" downloads and runs pg_restore -j for large dumps, streams small ones.
    restore_mode: str = Field(default="auto", pattern="^(auto|stream|parallel)$")
    restore_jobs: int = Field(default=0, ge=0, le=64)  # 0 = available cores, at least 2 (jobs.restore_jobs)
    # auto: a db-backup dump whose uncompressed size reaches this restores with -j (bench/RESULTS.md).
    parallel_threshold_mb: int = Field(default=256, ge=0)
    work_dir: Path | None = None  # where a restore may put a seekable copy; default: system temp
    swap_wait_s: float = Field(default=30.0, gt=0)


class GithubEnv(BaseSettings):
    """What GitHub Actions tells a step through its environment."""

    model_config = SettingsConfigDict(env_prefix="GITHUB_", extra="ignore")

    actions: bool = False
    step_summary: Path | None = None
    output: Path | None = None
    server_url: str = "https://github.com"
    repository: str | None = None
    run_id: str | None = None
    run_attempt: str | None = None
    actor: str | None = None
    triggering_actor: str | None = None
