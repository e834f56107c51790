"""Writing to GitHub Actions from the action's scripts: workflow commands and the $GITHUB_* files.

Standard library only. The scripts run as `python ACTION_PATH/script.py`, which puts this folder
first on sys.path, so they import it as `gha`.
"""

from __future__ import annotations

import os


def command_data(text: str) -> str:
    """Text escaped for the message of a workflow command (::error::, ::warning::)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def append(variable: str, text: str) -> None:
    """Append to the file a $GITHUB_* variable names (GITHUB_OUTPUT, GITHUB_STEP_SUMMARY); outside Actions, nothing."""
    path = os.environ.get(variable)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
