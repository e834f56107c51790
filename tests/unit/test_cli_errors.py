"""The CLI's one place that turns errors into an exit code and one line on stderr."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(("argv", "line"), [
    (["backup", "--nope"], "error: No such option: --nope; see `db-backup backup --help`"),
    (["frobnicate"], "error: No such command 'frobnicate'; see `db-backup --help`"),
    (["backup", "app"], "error: Missing argument 'env'; see `db-backup backup --help`"),
    (["list", "app", "production", "--limit", "many"],
     "error: Invalid value for '--limit': Input should be a valid integer, unable to parse string as an integer; "
     "see `db-backup list --help`"),
])
def test_usage_errors_are_bad_input_in_one_line(argv: list[str], line: str, tmp_path: Path) -> None:
    result = run_cli(*argv, env={"DB_BACKUP_TARGETS": str(tmp_path / "absent.yaml")})
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [line]


def test_no_arguments_shows_the_help() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "Usage: db-backup" in result.stdout and "restore" in result.stdout
    assert result.stderr == ""
