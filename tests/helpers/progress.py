"""Progress lines faster than a user may set them, for a db-backup process a test starts (the CLI, a fake Fargate task)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.fast_progress.sitecustomize import FAST_INTERVAL

__all__ = ["FAST_INTERVAL", "fast_progress_env"]


def fast_progress_env() -> dict[str, str]:
    """Environment for the subprocess: its progress lines come every FAST_INTERVAL seconds."""
    return {"PYTHONPATH": str(Path(__file__).parent / "fast_progress")}
