"""Check a restore request against targets.yaml before any AWS call.

Run by the db-backup action for `check-restore` and `restore`: the target must exist in both
environments and the direction must be allowed. Protection is not checked here: in GitHub it is
the restore job's environment (required reviewers) that approves a protected destination.
Inputs come from the environment: IN_IDENTIFIER, IN_FROM, IN_TO, IN_BACKUP, DB_BACKUP_TARGETS.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from runner.errors import DbBackupError
from runner.restore import plan_restore
from runner.targets import load_registry


def _command_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _append(variable: str, text: str) -> None:
    path = os.environ.get(variable)
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)


def main() -> int:
    identifier = os.environ["IN_IDENTIFIER"]
    source, dest, backup = os.environ["IN_FROM"], os.environ["IN_TO"], os.environ["IN_BACKUP"]
    try:
        registry = load_registry(Path(os.environ.get("DB_BACKUP_TARGETS") or "targets.yaml"))
        plan = plan_restore(registry, identifier, source, dest, None, backup, confirm=dest)
    except DbBackupError as exc:
        print(f"::error title=Restore refused::{_command_data(str(exc))}")
        _append("GITHUB_STEP_SUMMARY", f"### db-backup: restore refused, nothing was started\n\n{exc}\n")
        return 2
    assert plan.dest is not None
    protected = plan.dest.protected
    print(f"restore request valid: {plan.source.name} backup {backup} -> {plan.dest.name}"
          + (" (protected: needs the environment's approval)" if protected else ""))
    _append("GITHUB_OUTPUT", f"protected={'true' if protected else 'false'}\n"
                             f"source={plan.source.name}\ndest={plan.dest.name}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
