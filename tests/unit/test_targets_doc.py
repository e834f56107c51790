"""docs/targets.md and targets.example.yaml against the models that validate targets.yaml."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from runner import targets_doc
from runner.targets import load_registry
from runner.targets_schema import DefaultsModel, EcsModel, TargetModel, TargetsFileModel
from tests.conftest import REPO
from tests.helpers.targets import write_targets_file

DOC = REPO / "docs" / "targets.md"
EXAMPLE = REPO / "targets.example.yaml"
MODELS = list(targets_doc.sections())


def test_the_reference_in_docs_is_the_one_the_models_give() -> None:
    block = targets_doc.generated_block(DOC.read_text(encoding="utf-8"))
    assert block, f"{DOC} has lost the markers of its generated block"
    assert block == targets_doc.render(), "docs/targets.md is out of date: run .venv/bin/python -m runner.targets_doc --write"
    assert targets_doc.main(["--check"]) == 0


def test_every_field_of_every_model_has_a_description_and_an_example() -> None:
    assert targets_doc.undocumented() == []


def test_every_model_and_field_has_its_place_in_the_reference() -> None:
    text = targets_doc.render()
    names = {model.__name__ for model in MODELS}
    assert {"TargetsFileModel", "DefaultsModel", "EcsModel", "ShrinkAlarmModel", "RetentionModel", "EnvironmentModel",
            "TargetModel", "DatabaseModel", "TargetRetentionModel", "AlertsModel"} <= names
    for model in MODELS:
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"{model.__name__}.{name}"
    for heading in ("### `defaults.ecs`", "### `defaults.shrink_alarm` / `targets[].shrink_alarm`", "### `targets[].database`",
                    "### `environments.NAME`", "### `alerts`"):
        assert heading in text
    assert "| `subnets` | list of text (at least 1 item) | **required** |" in text
    assert "| `daily` | integer (from 1 to 3650) | `7` |" in text
    assert "| `threshold` | number (from 0 to below 1) | `0.5` |" in text
    assert "| `compression` | text | `zstd:3` |" in text


def _row_line(text: str, section: str, key: str) -> str:
    part = text.split(f"### {section}\n", 1)[1].split("\n### ", 1)[0]
    return next(line for line in part.splitlines() if line.startswith(f"| `{key}` |"))


def _row(text: str, section: str, key: str) -> list[str]:
    """The cells (type, default) of `key`'s row in the section titled `section`."""
    return [cell.strip() for cell in _row_line(text, section, key).split(" | ")[1:3]]


def test_the_shrink_alarm_reads_with_its_words_and_its_defaults(tmp_path: Path) -> None:
    text = targets_doc.render()
    mapping = "mapping ([`defaults.shrink_alarm`](#defaults-shrink-alarm)) or `off` or `on`"
    assert _row(text, "`defaults`", "shrink_alarm") == [mapping, "`{threshold: 0.5, window: 7}`"]
    assert _row(text, "`targets[]`", "shrink_alarm") == [mapping, "unset"]
    assert _row(text, "`defaults`", "retention")[1] == "`{daily: 7, weekly: 5, monthly: 12, yearly: 0}`"
    assert _row(text, "`defaults`", "ecs")[1] == "unset"  # required keys inside: no default to show
    assert _row(text, "(top level)", "alerts")[1] == "unset"  # outside `defaults`, unset means none
    # What the reference shows is what a file that leaves them out gets, and the words it lists are accepted.
    path = write_targets_file(tmp_path / "targets.yaml", [f'storage: "file://{tmp_path}"'],
                              ["- {identifier: app, env: production}", "- {identifier: app, env: beta, shrink_alarm: off}",
                               "- {identifier: other, env: production, shrink_alarm: on}"])
    registry = load_registry(path)
    left_out = registry.get("app", "production")
    assert (left_out.shrink_alarm.threshold, left_out.shrink_alarm.window) == (0.5, 7)
    assert left_out.retention.describe() == "daily 7, weekly 5, monthly 12, yearly 0"
    assert registry.get("app", "beta").shrink_alarm.threshold == 0
    assert registry.get("other", "production").shrink_alarm == left_out.shrink_alarm


def test_retention_says_which_tiers_zero_turns_off() -> None:
    text = targets_doc.render()
    assert "turns the tier off" not in text
    assert _row(text, "`defaults.retention`", "daily")[0] == "integer (from 1 to 3650)"
    def file(retention: dict[str, int]) -> dict[str, Any]:
        return {"version": 1, "defaults": {"storage": "file://x", "retention": retention}, "environments": {"production": {}}}

    for tier in ("weekly", "monthly", "yearly"):
        assert _row(text, "`defaults.retention`", tier)[0].startswith("integer (from 0 to ")
        assert "`0`: no backup becomes " + tier in _row_line(text, "`defaults.retention`", tier)
        TargetsFileModel.model_validate(file({tier: 0}))
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        TargetsFileModel.model_validate(file({"daily": 0}))


class _ColourTarget(TargetModel):
    colour: str | None = None


class _FileWithColours(TargetsFileModel):
    targets: list[_ColourTarget] = Field(default_factory=list, description="Targets with colours.", examples=[[]])


def test_a_field_added_without_docs_is_named_and_the_reference_no_longer_matches() -> None:
    # What happens when someone adds a key to a model and forgets its description: the check names it,
    # and the generated reference differs from docs/targets.md until it is regenerated.
    assert targets_doc.undocumented(_FileWithColours) == ["_ColourTarget.colour: no description", "_ColourTarget.colour: no example"]
    rendered = targets_doc.render(_FileWithColours)
    assert "| `colour` | text | unset |  |  |" in rendered
    assert rendered != targets_doc.generated_block(DOC.read_text(encoding="utf-8"))


def _minimal(model: type[BaseModel]) -> dict[str, Any]:
    return {name: info.examples[0] for name, info in model.model_fields.items() if info.is_required() and info.examples}


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_example_in_the_reference_is_valid(model: type[BaseModel]) -> None:
    for name, info in model.model_fields.items():
        assert info.examples, f"{model.__name__}.{name}"
        model.model_validate({**_minimal(model), name: info.examples[0]})


def test_write_replaces_only_the_generated_block() -> None:
    document = f"# Title\n\nprose above\n\n{targets_doc.BEGIN}\nstale\n{targets_doc.END}\n\nprose below\n"
    written = targets_doc.replace_block(document, targets_doc.render())
    assert written.startswith("# Title\n\nprose above\n\n") and written.endswith("\nprose below\n")
    assert targets_doc.generated_block(written) == targets_doc.render()
    assert targets_doc.replace_block(written, targets_doc.render()) == written
    with pytest.raises(ValueError, match="markers"):
        targets_doc.replace_block("no markers", targets_doc.render())


# --- targets.example.yaml ------------------------------------------------------------------------


def test_the_example_file_is_valid_and_means_what_its_comments_say() -> None:
    registry = load_registry(EXAMPLE)
    assert registry.environments == ("production", "beta", "alpha")
    assert registry.protected == frozenset({"production"})
    assert registry.alerts.webhook == "env:DB_BACKUP_WEBHOOK_URL" and registry.alerts.notify == "failures"
    usual = registry.get("curation", "production")
    assert usual.database.password == "ssm:/curation/production/db/backup/password" and usual.database.port == "5432"
    assert usual.executor == "ecs" and usual.ecs is not None and usual.ecs.subnets == ("subnet-0123456789abcdef0", "subnet-0123456789abcdef1")
    assert usual.ecs.container is None and usual.lock_wait_timeout == timedelta(minutes=5)
    beta = registry.get("curation", "beta")
    assert not beta.keep_previous and beta.allow_upward_restore and beta.shrink_alarm.window == 14
    registry.check_direction(registry.get("curation", "alpha"), beta)
    literature = registry.get("literature", "production")
    assert (str(literature.compression), literature.storage_class, literature.lock_wait_timeout) == ("zstd:1", "STANDARD_IA", timedelta(minutes=15))
    assert (literature.database.port, literature.database.sslmode, literature.retention.monthly) == ("5433", "verify-full", 24)
    local = registry.get("literature", "beta")
    assert local.executor == "local" and local.database.password == "env:LITERATURE_BETA_PASSWORD"
    assert local.database.name == "ssm:/literature/beta/db/backup/name"


def _keys_used(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in _keys_used(item)}
    if isinstance(value, list):
        return {key for item in value for key in _keys_used(item)}
    return set()


def test_the_example_file_mentions_every_key_of_every_model() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for model in MODELS:
        for name in model.model_fields:
            assert re.search(rf"(?m)^[ #-]*(- )?{name}:|[{{,] ?{name}:", text), f"{model.__name__}.{name} is not in {EXAMPLE.name}"
    # Everything but the settings best left out is used for real, not only in a comment.
    used = _keys_used(load_registry(EXAMPLE).document)
    left_out = {"container", "log_group", "log_stream_prefix"}
    for model in MODELS:
        missing = set(model.model_fields) - used - (left_out if model is EcsModel else set())
        assert not missing, f"{model.__name__}: {sorted(missing)}"
    assert set(DefaultsModel.model_fields) <= used
