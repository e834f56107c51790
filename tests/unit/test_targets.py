"""targets.yaml validation: every rule, every problem reported with its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import remote
from runner.errors import ExitCode, RestoreRefused, TargetsInvalid, UnknownTarget
from runner.targets import load_registry, parse_registry
from tests.conftest import REPO, run_cli

GOOD = """
version: 1
defaults:
  storage: s3://agr-db-backups
  region: us-east-1
  ecs:
    cluster: db-backup
    task_definition: db-backup
    subnets: [subnet-0123456789abcdef0]
environments:
  production: {protected: true}
  beta: {}
  alpha: {}
targets:
  - identifier: curation
    env: production
    schedule: nightly
  - identifier: curation
    env: alpha
  - identifier: literature
    env: beta
    schedule: nightly
    ignore_privileges: true
    compression: gzip:6
    database:
      host: literature-beta.example.internal
      name: literature
      user: backup
      password: ssm:/literature/beta/db/backup/password
"""


def problems(text: str) -> list[str]:
    with pytest.raises(TargetsInvalid) as raised:
        parse_registry(text, "targets.yaml")
    assert raised.value.exit_code == ExitCode.BAD_INPUT
    return raised.value.problems


def test_a_good_file() -> None:
    registry = parse_registry(GOOD)
    assert registry.environments == ("production", "beta", "alpha")
    curation = registry.get("curation", "production")
    assert curation.protected and curation.executor == "ecs" and str(curation.compression) == "zstd:3"
    assert curation.database.password == "ssm:/curation/production/db/backup/password"
    assert curation.database.host == "ssm:/curation/production/db/backup/host"
    literature = registry.get("literature", "beta")
    assert literature.ignore_privileges and not literature.protected and str(literature.compression) == "gzip:6"
    assert literature.database.port == "5432" and literature.database.host == "literature-beta.example.internal"
    assert [t.name for t in registry.scheduled("nightly")] == ["curation/production", "literature/beta"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("identifier: curation\n    env: alpha", "identifier: Curation!\n    env: alpha"), "targets[1] (Curation!/alpha).identifier: must match"),
        (("env: alpha\n", "env: staging\n"), "targets[1] (curation/staging).env: environment 'staging' is not declared"),
        (("env: alpha\n", "env: production\n"), "targets[1] (curation/production): duplicate target"),
        (("password: ssm:/literature/beta/db/backup/password", "password: hunter2"),
         "targets[2] (literature/beta).database.password: a literal password is not allowed"),
        (("ignore_privileges: true", "ignore_privilege: true"), "targets[2] (literature/beta).ignore_privilege: unknown key"),
        (("  region: us-east-1", "  region: us-east-1\n  colour: blue"), "defaults.colour: unknown key"),
        (("compression: gzip:6", "compression: lz4"), "targets[2] (literature/beta).compression: unknown compression 'lz4'"),
        (("compression: gzip:6", "compression: zstd:99"), "zstd level must be a whole number from 1 to 19"),
        (("storage: s3://agr-db-backups", "storage: agr-db-backups"), "defaults.storage: storage must be s3://BUCKET[/PREFIX] or file://PATH"),
        (("version: 1", "version: 2"), "version: Input should be 1"),
        (("  beta: {}\n", "  Beta: {}\n"), "environments.Beta: name must match"),
        (("schedule: nightly\n  - identifier: curation", "schedule: hourly\n  - identifier: curation"), "targets[0] (curation/production).schedule"),
    ],
)
def test_each_rule_names_its_place(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in GOOD
    found = problems(GOOD.replace(old, new, 1))
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once() -> None:
    text = GOOD.replace("password: ssm:/literature/beta/db/backup/password", "password: hunter2").replace("ignore_privileges", "ignore_privilegez")
    assert len(problems(text)) == 2


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    assert problems("version: [1\n")[0].startswith("line ")
    with pytest.raises(TargetsInvalid) as raised:
        load_registry(tmp_path / "nope.yaml")
    assert "file not found" in raised.value.problems[0]


def test_direction_and_lookup() -> None:
    registry = parse_registry(GOOD.replace("  - identifier: literature", "  - identifier: curation\n    env: beta\n  - identifier: literature"))
    with pytest.raises(RestoreRefused, match="alpha is less important than production"):
        registry.check_direction(registry.get("curation", "alpha"), registry.get("curation", "production"))
    registry.check_direction(registry.get("curation", "production"), registry.get("curation", "alpha"))
    with pytest.raises(UnknownTarget, match="it has: alpha, beta, production"):
        registry.get("curation", "dev")


def test_validate_command_prints_each_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "targets.yaml"
    bad.write_text(GOOD.replace("env: alpha\n", "env: staging\n").replace("hunter", "x").replace(
        "password: ssm:/literature/beta/db/backup/password", "password: swordfish"))
    result = run_cli("--targets", str(bad), "validate")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"error: {bad} is not valid (2 problems); fix each place below:"
    assert any(line.startswith(f"  {bad}: targets[1] (curation/staging).env: environment 'staging'") for line in lines[1:])
    assert any(line.startswith(f"  {bad}: targets[2] (literature/beta).database.password: a literal password") for line in lines[1:])
    assert "swordfish" not in result.stderr


def test_the_repository_targets_file() -> None:
    result = run_cli("--targets", str(REPO / "targets.yaml"), "targets", "--json")
    assert result.returncode == 0, result.stderr
    import json

    rows = json.loads(result.stdout)
    assert {(r["identifier"], r["env"]) for r in rows} == {
        ("chipmunk", "dev"), ("chipmunk", "production"),
        ("curation", "alpha"), ("curation", "beta"), ("curation", "production"),
        ("mati", "alpha"), ("mati", "beta"), ("mati", "production"),
    }
    assert all(r["schedule"] == "nightly" for r in rows)
    assert {r["env"] for r in rows if r["protected"]} == {"production"}
    registry = load_registry(REPO / "targets.yaml")
    assert registry.environments == ("production", "beta", "alpha", "dev")
    matrix = run_cli("--targets", str(REPO / "targets.yaml"), "matrix", "--schedule", "nightly")
    assert len(json.loads(matrix.stdout)["include"]) == 8


def test_an_excerpt_carries_just_the_chosen_targets_with_their_defaults() -> None:
    # What the runner sends a Fargate task: the same definitions, cut down to the job's targets.
    registry = load_registry(REPO / "targets.yaml")
    source, dest = registry.get("curation", "production"), registry.get("curation", "beta")
    text = registry.excerpt(source, dest)
    sent = parse_registry(text, "sent")
    assert sorted(sent.targets, key=lambda t: t.env) == [dest, source]
    assert (sent.environments, sent.protected) == (registry.environments, registry.protected)
    assert len(text) < remote.MAX_TARGETS_JSON
