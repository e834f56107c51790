"""One builder of targets.yaml files for tests: the defaults and targets vary, the environments do not."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from runner.targets import Registry, parse_registry

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


def folder_registry(store: Path, *more_targets: str) -> Registry:
    """app/production and app/beta, both nightly, backed up into the folder `store` (plus `more_targets` lines)."""
    lines = ["- {identifier: app, env: production, schedule: nightly}", "- {identifier: app, env: beta, schedule: nightly}",
             *more_targets]
    return parse_registry("\n".join([
        "version: 1", f'defaults: {{storage: "file://{store}"}}', "environments: {production: {protected: true}, beta: {}}",
        "targets:", *(f"  {line}" for line in lines),
    ]) + "\n")
