#!/usr/bin/env bash
# Demo on local defaults: a PostgreSQL cluster, a sample database, a real backup into ./demo/backups
# through the db-backup CLI, a restore into a second database, and a comparison. The cluster keeps
# running for the commands the demo suggests; `bash scripts/demo.sh stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "stop" ]; then
  if [ ! -x .venv/bin/python ]; then
    # Without the virtual environment no demo can have run.
    echo "no demo PostgreSQL cluster is running; nothing to stop"
    exit 0
  fi
  exec .venv/bin/python scripts/demo.py stop
fi
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
