"""Check, before anyone is asked to approve a restore, that the backup it names can be restored.

Run by the db-backup action for `check-restore` with a (read-only) role: the backup id, or
`latest`, is resolved exactly as the restore will resolve it (complete, its manifest matching
its place and its dump, not damaged; `latest` is the newest such backup; a legacy dump without a
manifest passes with a warning, as the restore accepts it), reading only the bucket's listing and
the manifests. Nothing is downloaded. Inputs come from the environment:
IN_IDENTIFIER, IN_FROM, IN_BACKUP, DB_BACKUP_TARGETS.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from gha import append, command_data

from runner.aws import AwsClients
from runner.catalog import resolve_backup
from runner.clock import SystemClock
from runner.errors import DbBackupError, ExitCode
from runner.output import human_size
from runner.services import Services
from runner.settings import load_settings
from runner.targets import load_registry


class _Annotations(logging.Handler):
    """The catalog's warnings (a damaged backup skipped, a legacy fallback) as GitHub warnings."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"::warning title=db-backup::{command_data(record.getMessage())}", flush=True)


def main() -> int:
    identifier, source_env, requested = os.environ["IN_IDENTIFIER"], os.environ["IN_FROM"], os.environ["IN_BACKUP"]
    logging.getLogger("runner").addHandler(_Annotations(logging.WARNING))
    logging.getLogger("runner").setLevel(logging.WARNING)
    try:
        registry = load_registry(Path(os.environ.get("DB_BACKUP_TARGETS") or "targets.yaml"))
        source = registry.get(identifier, source_env)
        services = Services(settings=load_settings(), clock=SystemClock(), aws=AwsClients())
        entry = resolve_backup(services.store(source), identifier, source_env, requested)
    except DbBackupError as exc:
        if exc.exit_code == ExitCode.INFRA:
            # Access denied, storage unreachable: nothing is known about the backup itself.
            message = (f"{exc}; the backup could not be looked up, so nothing was started: run the Show backups "
                       "workflow for this target to see whether the read-only role can list its backups")
            print(f"::error title=Backup could not be looked up::{command_data(message)}")
            append("GITHUB_STEP_SUMMARY", f"### db-backup: backup could not be looked up, nothing was started\n\n{message}\n")
        else:
            print(f"::error title=Backup not restorable::{command_data(str(exc))}")
            append("GITHUB_STEP_SUMMARY", f"### db-backup: restore refused, nothing was started\n\n{exc}\n")
        return int(exc.exit_code)
    kind = "complete" if entry.complete else "legacy: no manifest, its sha256 cannot be checked"
    if not entry.complete:
        print(f"::warning title=db-backup::backup {entry.id} of {source.name} has no manifest (a legacy dump): "
              "the restore cannot check its sha256")
    when = entry.created_at.strftime("%Y-%m-%d %H:%M UTC")
    line = f"backup {entry.id} of {source.name} ({kind}, {human_size(entry.size_bytes)}, taken {when})"
    print(f"{line} is the one to restore" + (f" (requested: {requested})" if requested != entry.id else ""))
    append("GITHUB_OUTPUT", f"backup-id={entry.id}\n")
    append("GITHUB_STEP_SUMMARY", f"### Backup to restore\n\n- `{entry.id}` of {source.name}, requested as `{requested}`\n"
                                  f"- {kind}, {human_size(entry.size_bytes)}, taken {when}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
