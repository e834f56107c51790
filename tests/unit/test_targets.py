"""targets.yaml validation: every rule, every problem reported with its place."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from pathlib import Path

import pytest

from runner.ecs.request import MAX_TARGETS_JSON
from runner.errors import BadInput, ExitCode, RestoreRefused, TargetsInvalid, UnknownTarget
from runner.targets import Target, load_registry, parse_registry
from runner.targets_schema import MAX_TARGETS_BYTES
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
    with pytest.raises(BadInput) as raised:
        load_registry(tmp_path / "nope.yaml")
    assert not isinstance(raised.value, TargetsInvalid)
    assert str(raised.value) == (f"targets.yaml not found at {tmp_path / 'nope.yaml'}; create it (see targets.example.yaml / "
                                 "docs/targets.md) or pass --targets PATH / DB_BACKUP_TARGETS")


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
    assert len(text) < MAX_TARGETS_JSON


# --- keys given twice, the file itself, lock_wait_timeout ----------------------------------------


def _line(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line number of the n-th line that contains `needle`."""
    found = [number for number, line in enumerate(text.splitlines(), 1) if needle in line]
    return found[occurrence - 1]


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("      name: literature\n", "      name: literature\n      name: curation\n", "name"),
        ("    env: beta\n", "    env: beta\n    env: production\n", "env"),
        ("targets:\n", "defaults:\n  storage: s3://somewhere-else\ntargets:\n", "defaults"),
        ("  beta: {}\n", "  beta: {protected: false, protected: true}\n", "protected"),
    ],
    ids=["database-name", "target-env", "defaults", "flow-mapping"],
)
def test_a_key_given_twice_is_named_with_its_line(old: str, new: str, key: str) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    inserted = [n for n, line in enumerate(new.splitlines()) if f"{key}:" in line][-1]
    second = text[: text.index(new)].count("\n") + 1 + inserted
    found = problems(text)
    assert any(p.startswith(f"line {second}: duplicate key '{key}'") and p.endswith("remove one of them") for p in found), found


def test_every_key_given_twice_is_reported_in_file_order() -> None:
    text = GOOD.replace("  region: us-east-1\n", "  region: us-east-1\n  region: eu-west-1\n").replace(
        "    ignore_privileges: true\n", "    ignore_privileges: true\n    ignore_privileges: false\n")
    found = problems(text)
    assert [p.split(":")[0] for p in found] == [f"line {_line(text, 'region:', 2)}", f"line {_line(text, 'ignore_privileges:', 2)}"]


def test_a_merged_key_overridden_on_purpose_is_not_a_duplicate() -> None:
    text = GOOD.replace("    database:\n", "    database: &literature\n") + (
        "  - identifier: literature\n    env: alpha\n    database:\n      <<: *literature\n      name: literature_alpha\n")
    database = parse_registry(text).get("literature", "alpha").database
    assert (database.name, database.host) == ("literature_alpha", "literature-beta.example.internal")


def test_a_file_that_is_not_utf8_names_the_byte_and_line(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_bytes(GOOD.replace("region: us-east-1", "region: us-east-1 # caf\xe9").encode("latin-1"))
    with pytest.raises(BadInput, match=r"is not UTF-8 text \(byte 0xe9 on line 5\); save it as UTF-8") as raised:
        load_registry(path)
    assert raised.value.exit_code == ExitCode.BAD_INPUT


def test_a_folder_is_not_a_targets_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=re.escape(f"targets file {tmp_path} is a folder; point --targets")):
        load_registry(tmp_path)


def test_a_huge_file_is_refused_by_its_size_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    with path.open("wb") as handle:
        handle.truncate(8 * 1024**3)  # sparse: 8 GiB that would take a long time (and the memory) to read
    started = time.monotonic()
    with pytest.raises(BadInput, match="8,589,934,592 bytes, more than the 1 MiB a targets file may be"):
        load_registry(path)
    assert time.monotonic() - started < 5


def test_a_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_bytes(GOOD.encode() + b"#" * (MAX_TARGETS_BYTES - len(GOOD.encode())))
    assert load_registry(path).environments == ("production", "beta", "alpha")


def test_a_character_yaml_forbids_names_its_line() -> None:
    assert problems(GOOD.replace("  alpha: {}\n", "  alpha: {}\x07\n")) == [
        f"line {_line(GOOD, 'alpha: {}')}: not valid YAML (special characters are not allowed)"]


def test_lock_wait_timeout_defaults_to_five_minutes_and_is_set_per_target() -> None:
    registry = parse_registry(GOOD)
    assert {t.lock_wait_timeout for t in registry.targets} == {timedelta(minutes=5)}
    text = GOOD.replace("  region: us-east-1\n", "  region: us-east-1\n  lock_wait_timeout: 30s\n").replace(
        "    compression: gzip:6\n", "    compression: gzip:6\n    lock_wait_timeout: 1.5h\n")
    registry = parse_registry(text)
    assert registry.get("curation", "production").lock_wait_timeout == timedelta(seconds=30)
    assert registry.get("literature", "beta").lock_wait_timeout == timedelta(minutes=90)
    assert parse_registry(text.replace("30s", "24h")).get("curation", "alpha").lock_wait_timeout == timedelta(hours=24)


def test_a_target_built_without_lock_wait_timeout_gets_the_default() -> None:
    built = parse_registry(GOOD).get("curation", "production")
    fields = {name: getattr(built, name) for name in built.__dataclass_fields__ if name != "lock_wait_timeout"}
    assert Target(**fields).lock_wait_timeout == timedelta(minutes=5)


@pytest.mark.parametrize(
    ("where", "value", "expected"),
    [
        ("defaults", "0s", "defaults.lock_wait_timeout: '0s' is out of range; write from 1s to 24h"),
        ("defaults", "0.5s", "defaults.lock_wait_timeout: '0.5s' is out of range"),
        ("target", "25h", "targets[2] (literature/beta).lock_wait_timeout: '25h' is out of range; write from 1s to 24h, e.g. 5m"),
        ("target", "2d", "targets[2] (literature/beta).lock_wait_timeout: '2d' is out of range"),
        ("target", "5 minutes", "targets[2] (literature/beta).lock_wait_timeout: '5 minutes' is not a duration; write e.g. 30s, 5m or 2h"),
        ("target", "-5m", "'-5m' is not a duration"),
        ("target", "300", "targets[2] (literature/beta).lock_wait_timeout: 300 has no unit; write a duration such as 30s, 5m or 2h"),
        ("defaults", "1:30", "defaults.lock_wait_timeout: 90 has no unit"),  # YAML 1.1 reads 1:30 as 90
    ],
)
def test_a_bad_lock_wait_timeout_is_named_with_its_place(where: str, value: str, expected: str) -> None:
    if where == "defaults":
        text = GOOD.replace("  region: us-east-1\n", f"  region: us-east-1\n  lock_wait_timeout: {value}\n")
    else:
        text = GOOD.replace("    compression: gzip:6\n", f"    compression: gzip:6\n    lock_wait_timeout: {value}\n")
    found = problems(text)
    assert any(expected in p for p in found), found


def test_every_cli_module_shares_one_duration_parser() -> None:
    from runner import cli_checks, cli_jobs, durations

    assert cli_jobs.parse_duration is cli_checks.parse_duration is durations.parse_duration
    assert durations.parse_duration("90m") == timedelta(minutes=90)
    with pytest.raises(BadInput, match=re.escape("duration '90 m' is not valid; write e.g. 90m, 26h or 2d")):
        durations.parse_duration("90 m")
    with pytest.raises(BadInput, match="is too long"):
        durations.parse_duration("99999999999999d")
