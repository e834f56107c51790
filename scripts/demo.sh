#!/usr/bin/env bash
# Demo on local defaults: a throwaway PostgreSQL cluster, a sample database, a real backup into
# ./demo/backups through the db-backup CLI, a restore into a second database, and a comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
