"""Check a request against targets.yaml before any approval or AWS call.

Run by the db-backup action for every command that names a target. GitHub's dispatch form
cannot make the environment choices depend on the identifier chosen, so an identifier/env
pair that targets.yaml does not have is refused here, naming the environments it does have.
A restore must also go in an allowed direction; a rollback of a target with keep_previous: false
passes with a warning, as `db-backup rollback` gives. Protection is not checked here: in GitHub it
is the destination job's environment (required reviewers) that approves a protected one.
Inputs come from the environment: IN_COMMAND, IN_IDENTIFIER, IN_ENV, IN_FROM, IN_TO, IN_BACKUP,
DB_BACKUP_TARGETS.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gha import append, command_data

from runner.errors import DbBackupError
from runner.restore import plan_restore
from runner.targets import Registry, Target, load_registry

RESTORES = ("restore", "check-restore")
ROLLBACKS = ("rollback", "check-rollback")


class Refused(Exception):
    """The request names something targets.yaml does not have."""


def target(registry: Registry, identifier: str, env: str) -> Target:
    """The target, or Refused in the words a user of the dispatch form needs."""
    for candidate in registry.targets:
        if (candidate.identifier, candidate.env) == (identifier, env):
            return candidate
    has = {t.env for t in registry.targets if t.identifier == identifier}
    if not has:
        known = sorted({t.identifier for t in registry.targets})
        raise Refused(f"unknown identifier {identifier}; targets.yaml has: {', '.join(known)}")
    envs = [e for e in registry.environments if e in has]
    raise Refused(f"{identifier} has no environment {env}; it has: {', '.join(envs)}")


def check(registry: Registry, command: str) -> dict[str, str]:
    """The step's outputs for a valid request; Refused or a DbBackupError for one that is not."""
    identifier = os.environ.get("IN_IDENTIFIER", "")
    if command in RESTORES:
        source_env, dest_env, backup = os.environ["IN_FROM"], os.environ["IN_TO"], os.environ["IN_BACKUP"]
        source, dest = target(registry, identifier, source_env), target(registry, identifier, dest_env)
        plan_restore(registry, identifier, source_env, dest_env, None, backup, confirm=dest_env)
        print(f"restore request valid: {source.name} backup {backup} -> {dest.name}"
              + (" (protected: needs the environment's approval)" if dest.protected else ""))
        return {"protected": str(dest.protected).lower(), "source": source.name, "dest": dest.name}
    if command in ROLLBACKS:
        dest = target(registry, identifier, os.environ["IN_TO"])
        print(f"rollback request valid: {dest.name}"
              + (" (protected: needs the environment's approval)" if dest.protected else ""))
        if not dest.keep_previous:
            # A warning, as `db-backup rollback` gives, not a refusal: this job cannot see the
            # database, and a __previous may be there (kept before keep_previous was turned off,
            # or left by a restore whose drop failed); without one the rollback itself refuses.
            warning = (f"{dest.name} has keep_previous: false: its restores drop the database they replace, so there may be "
                       "no __previous to swap back (the rollback then fails, changing nothing); if there is one, the rollback "
                       "keeps the data it replaces as __previous anyway, so that it can be undone: drop it by hand once not needed")
            print(f"::warning title=db-backup::{command_data(warning)}")
            append("GITHUB_STEP_SUMMARY", f"### db-backup: rollback of {dest.name}\n\n- Warning: {warning}\n")
        return {"protected": str(dest.protected).lower(), "dest": dest.name}
    chosen = target(registry, identifier, os.environ.get("IN_ENV", ""))
    print(f"target valid: {chosen.name}")
    return {"protected": str(chosen.protected).lower(), "dest": chosen.name}


def main() -> int:
    command = os.environ.get("IN_COMMAND", "")
    try:
        registry = load_registry(Path(os.environ.get("DB_BACKUP_TARGETS") or "targets.yaml"))
        outputs = check(registry, command)
    except (Refused, DbBackupError) as exc:
        what = "Restore" if command in RESTORES else "Rollback" if command in ROLLBACKS else "Request"
        print(f"::error title={what} refused::{command_data(str(exc))}")
        append("GITHUB_STEP_SUMMARY", f"### db-backup: {what.lower()} refused, nothing was started\n\n{exc}\n")
        return 2
    append("GITHUB_OUTPUT", "".join(f"{name}={value}\n" for name, value in outputs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
