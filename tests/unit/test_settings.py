"""DB_BACKUP_* settings: a bad value is one line naming the variable and what it must be."""

from __future__ import annotations

import os

import pytest

from runner.errors import BadInput, ExitCode
from runner.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own DB_BACKUP_* variables must not decide what these tests see."""
    for name in [k for k in os.environ if k.upper().startswith("DB_BACKUP_")]:
        monkeypatch.delenv(name)


def refusal(monkeypatch: pytest.MonkeyPatch, **variables: str) -> str:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(BadInput) as raised:
        load_settings()
    assert raised.value.exit_code == ExitCode.BAD_INPUT
    # Not chained: pydantic's error would print every value in full under --verbose.
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_unset_variables_give_the_defaults() -> None:
    settings = load_settings()
    assert (settings.part_size_mb, settings.restore_mode, settings.swap_wait_s) == (16, "auto", 30.0)


def test_good_values_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_BACKUP_RESTORE_MODE", "parallel")
    monkeypatch.setenv("DB_BACKUP_SWAP_WAIT_S", "2.5")
    settings = load_settings()
    assert (settings.restore_mode, settings.swap_wait_s) == ("parallel", 2.5)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DB_BACKUP_PART_SIZE_MB", "abc", "DB_BACKUP_PART_SIZE_MB='abc' is not valid: it must be a whole number; fix or unset it"),
        ("DB_BACKUP_PART_SIZE_MB", "4", "DB_BACKUP_PART_SIZE_MB='4' is not valid: it must be at least 5; fix or unset it"),
        ("DB_BACKUP_PARALLEL_UPLOADS", "17", "DB_BACKUP_PARALLEL_UPLOADS='17' is not valid: it must be at most 16"),
        ("DB_BACKUP_RESTORE_MODE", "fast",
         "DB_BACKUP_RESTORE_MODE='fast' is not valid: it must be auto, stream or parallel; fix or unset it"),
        ("DB_BACKUP_RESTORE_JOBS", "-1", "DB_BACKUP_RESTORE_JOBS='-1' is not valid: it must be at least 0"),
        ("DB_BACKUP_PARALLEL_THRESHOLD_MB", "1.5", "DB_BACKUP_PARALLEL_THRESHOLD_MB='1.5' is not valid: it must be a whole number"),
        ("DB_BACKUP_SWAP_WAIT_S", "-1", "DB_BACKUP_SWAP_WAIT_S='-1' is not valid: it must be more than 0; fix or unset it"),
        ("DB_BACKUP_SWAP_WAIT_S", "inf", "DB_BACKUP_SWAP_WAIT_S='inf' is not valid: it must be a finite number"),
        ("DB_BACKUP_SWAP_WAIT_S", "", "DB_BACKUP_SWAP_WAIT_S='' is not valid: it must be a number"),
    ],
)
def test_a_bad_value_names_its_variable_and_the_rule(monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str) -> None:
    assert expected in refusal(monkeypatch, **{name: value})


def test_every_bad_variable_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    message = refusal(monkeypatch, DB_BACKUP_RESTORE_MODE="fast", DB_BACKUP_PART_SIZE_MB="abc")
    assert "DB_BACKUP_RESTORE_MODE='fast'" in message and "DB_BACKUP_PART_SIZE_MB='abc'" in message
    assert message.endswith("; fix or unset them")


def test_a_long_value_is_cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    value = "x" * 39 + "TAIL-NEVER-SHOWN" * 20
    message = refusal(monkeypatch, DB_BACKUP_RESTORE_MODE=value)
    assert f"DB_BACKUP_RESTORE_MODE='{value[:40]}'... is not valid" in message
    assert "NEVER" not in message
