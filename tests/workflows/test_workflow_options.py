"""runner.workflow_options: the dispatch dropdowns follow targets.yaml; nothing else changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from runner.errors import BadInput
from runner.targets import load_registry, parse_registry
from runner.workflow_options import INPUTS, desired_options, rewrite, sync

from .conftest import REPO, WORKFLOWS

REGISTRY = parse_registry("""version: 1
defaults: {storage: s3://bucket}
environments: {production: {protected: true}, staging: {}, beta: {}, unused: {}}
targets:
  - {identifier: zeta, env: production}
  - {identifier: alpha, env: staging}
  - {identifier: alpha, env: beta}
""")

WORKFLOW = """# a comment that must survive
name: Restore
on:
  push:
    branches: [main]
  workflow_dispatch:
    inputs:
      identifier:
        description: Database   # keep me
        type: choice
        options:
          - old
      from:
        type: choice
        default: production
        options: [production, dev]  # flow style stays flow style
      to:
        type: choice
        options:
        - dev
        - production
      backup:
        type: string
        default: latest
      env:
        description: not a choice; left alone
        type: string
jobs:
  x:
    runs-on: ubuntu-latest
    steps:
      - run: echo "options:"
"""


def test_desired_options_order() -> None:
    assert desired_options(REGISTRY) == {
        "identifier": ["alpha", "zeta"],
        "env": ["production", "staging", "beta"],
        "from": ["production", "staging", "beta"],
        "to": ["beta", "staging", "production"],  # least important first: never preselect production
    }


def test_rewrite_changes_only_the_options() -> None:
    new = rewrite(WORKFLOW, desired_options(REGISTRY))
    data = yaml.safe_load(new)
    inputs = data[True]["workflow_dispatch"]["inputs"]  # PyYAML reads `on` as True
    assert inputs["identifier"]["options"] == ["alpha", "zeta"]
    assert inputs["from"]["options"] == ["production", "staging", "beta"]
    assert inputs["to"]["options"] == ["beta", "staging", "production"]
    assert inputs["env"] == {"description": "not a choice; left alone", "type": "string"}
    assert "options: [production, staging, beta]  # flow style stays flow style" in new
    assert "        - beta\n        - staging\n" in new  # the existing item indentation is kept
    old_lines = [line for line in WORKFLOW.splitlines() if "- " not in line and "options" not in line]
    new_lines = [line for line in new.splitlines() if "- " not in line and "options" not in line]
    assert old_lines == new_lines  # every other line, comments included, byte for byte
    assert rewrite(new, desired_options(REGISTRY)) == new  # idempotent


def test_sync_check_reports_and_does_not_write(tmp_path: Path) -> None:
    (tmp_path / "restore.yml").write_text(WORKFLOW)
    (tmp_path / "other.yaml").write_text("on: {workflow_dispatch: {}}\njobs: {}\n")
    assert sync(REGISTRY, tmp_path, check=True) == ["restore.yml"]
    assert (tmp_path / "restore.yml").read_text() == WORKFLOW
    assert sync(REGISTRY, tmp_path, check=False) == ["restore.yml"]
    assert sync(REGISTRY, tmp_path, check=True) == []


def test_choice_without_options_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yml").write_text("on:\n  workflow_dispatch:\n    inputs:\n      to:\n        type: choice\n")
    with pytest.raises(BadInput, match="no options"):
        sync(REGISTRY, tmp_path, check=True)


def test_repository_workflows_match_targets_yaml() -> None:
    """Fails when targets.yaml and the dropdowns differ: run `db-backup workflows` to fix."""
    assert sync(load_registry(REPO / "targets.yaml"), WORKFLOWS, check=True) == []


def test_repository_workflows_follow_a_changed_targets_yaml(tmp_path: Path) -> None:
    shutil.copytree(WORKFLOWS, tmp_path / "workflows")
    text = (REPO / "targets.yaml").read_text() + "  - {identifier: newdb, env: beta, schedule: nightly}\n"
    (tmp_path / "targets.yaml").write_text(text)
    changed = sync(load_registry(tmp_path / "targets.yaml"), tmp_path / "workflows", check=False)
    assert changed == ["backup.yml", "backups.yml", "drill.yml", "restore.yml"]
    for name in changed:
        inputs = yaml.safe_load((tmp_path / "workflows" / name).read_text())[True]["workflow_dispatch"]["inputs"]
        assert "newdb" in inputs["identifier"]["options"]
        for spec in inputs.values():  # a default must stay one of the options
            if spec.get("type") == "choice" and "default" in spec:
                assert spec["default"] in spec["options"]

    # Choices that are not targets (what to show, restore or rollback) are left as they are.
    assert yaml.safe_load((tmp_path / "workflows" / "backups.yml").read_text())[True]["workflow_dispatch"][
        "inputs"]["what"]["options"] == ["list", "history", "status"]
    assert yaml.safe_load((tmp_path / "workflows" / "restore.yml").read_text())[True]["workflow_dispatch"][
        "inputs"]["action"]["options"] == ["restore", "rollback"]


def test_every_dropdown_of_identifiers_or_environments_is_generated() -> None:
    """A choice input listing identifiers or environments under another name would drift from targets.yaml."""
    registry = load_registry(REPO / "targets.yaml")
    names = {t.identifier for t in registry.targets} | set(registry.environments)
    for path in sorted(WORKFLOWS.glob("*.yml")):
        on = yaml.safe_load(path.read_text())[True]
        dispatch = on.get("workflow_dispatch") if isinstance(on, dict) else None
        inputs = (dispatch or {}).get("inputs") or {}
        for name, spec in inputs.items():
            if spec.get("type") == "choice" and names & set(spec["options"]):
                assert name in INPUTS, f"{path.name}: input {name} lists targets but `db-backup workflows` does not generate it"
