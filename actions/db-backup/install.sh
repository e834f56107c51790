#!/usr/bin/env bash
# Install db-backup from this action's own checkout (two levels up) into a private virtual
# environment with pinned dependencies (requirements.txt next to this file).
#
# Test hook: when DB_BACKUP_PYTHON is set, that interpreter (which must already have db-backup
# installed, e.g. the project's .venv/bin/python) is used and nothing is installed, so the act
# tests run offline. Workflows never set it; see docs/workflows.md.
set -euo pipefail

echo "started-at=$(date -u +%s)" >> "$GITHUB_OUTPUT"
if [[ -n ${DB_BACKUP_PYTHON:-} ]]; then
  echo "::notice title=db-backup::test hook: using DB_BACKUP_PYTHON=$DB_BACKUP_PYTHON instead of installing db-backup"
  python=$DB_BACKUP_PYTHON
else
  venv="${RUNNER_TEMP:?}/db-backup-venv"
  if [[ ! -x $venv/bin/db-backup ]]; then
    python3 -m venv "$venv"
    pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input --require-virtualenv)
    "${pip[@]}" install --quiet --only-binary=:all: -r "$ACTION_PATH/requirements.txt"
    "${pip[@]}" install --quiet --no-deps --no-build-isolation "$ACTION_PATH/../.."
  fi
  python=$venv/bin/python
fi
"$python" -m runner.cli --help > /dev/null
echo "python=$python" >> "$GITHUB_OUTPUT"
if [[ $IN_COMMAND == setup ]]; then
  dirname -- "$python" >> "$GITHUB_PATH"
fi
