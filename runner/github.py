"""GitHub Actions workflow commands: masks, outputs, annotations, step summaries."""

from __future__ import annotations

import sys
from typing import TextIO


def add_mask(secret: str, out: TextIO | None = None) -> None:
    """Ask GitHub to hide a secret in the job log; only ever called on a GitHub runner."""
    stream = out or sys.stdout
    for line in secret.splitlines() or [secret]:
        if line:
            stream.write(f"::add-mask::{line}\n")
    stream.flush()
