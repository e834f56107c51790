"""Every command's --help ends with examples a user can type as they are."""

from __future__ import annotations

import shlex

import pytest
import typer
from typer.core import TyperGroup

from runner import cli  # noqa: F401  (registers the commands and their examples)
from runner.cli_app import app
from runner.cli_help import EXAMPLES, registered_names
from tests.conftest import run_cli

COMMANDS = registered_names(app)


def test_every_registered_command_has_examples() -> None:
    assert len(COMMANDS) >= 18
    missing = [name for name in COMMANDS if not EXAMPLES.get(name)]
    assert missing == [], f"commands without examples in runner/cli_help.py: {missing}"
    assert all(2 <= len(EXAMPLES[name]) <= 4 for name in COMMANDS)


def test_examples_name_only_commands_that_exist() -> None:
    assert sorted(set(EXAMPLES) - set(COMMANDS)) == []


@pytest.mark.parametrize("name", COMMANDS)
def test_each_example_parses_as_that_command(name: str) -> None:
    """Options, arguments and choices of every example are accepted by the parser (nothing runs)."""
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    for example in EXAMPLES[name]:
        words = shlex.split(example)
        assert words[0] == "db-backup", example
        assert name in words, example
        with group.make_context("db-backup", words[1:]) as ctx:
            command = group.get_command(ctx, name)
            assert command is not None, example
            command.make_context(name, words[words.index(name) + 1:], parent=ctx).close()


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_the_examples_one_per_line(name: str) -> None:
    # Not a terminal, 80 columns: what a pipe, CI log or `| less` shows.
    result = run_cli(name, "--help", env={"COLUMNS": "80", "TERMINAL_WIDTH": "", "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert "Examples:" in lines
    after = lines[lines.index("Examples:") + 1:]
    for example in EXAMPLES[name]:
        assert example in after, (example, result.stdout)
