"""One builder of targets.yaml files for tests: the defaults and targets vary, the environments do not."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

ENVIRONMENTS = ("production: {protected: true}", "beta: {}", "alpha: {}")


def write_targets_file(path: Path, defaults: Sequence[str], targets: Sequence[str]) -> Path:
    """`defaults` and `targets` are YAML lines as they stand under their key, without its indent."""
    lines = [
        "version: 1",
        "defaults:", *(f"  {line}" for line in defaults if line),
        "environments:", *(f"  {line}" for line in ENVIRONMENTS),
        "targets:", *(f"  {line}" for line in targets if line),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
