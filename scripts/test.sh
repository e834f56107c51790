#!/usr/bin/env bash
# The whole test suite: static checks, then pytest (real PostgreSQL, moto server, act).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check runner tests bench scripts actions
.venv/bin/mypy
.venv/bin/pytest -q -p no:cacheprovider "$@"
