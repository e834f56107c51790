#!/usr/bin/env bash
# Install what db-backup's demo and tests need on a fresh Debian machine with Python 3.11 or newer:
# PostgreSQL server and client, zstd, and a virtual environment with the pinned packages.
# Each step is announced on one line before it runs.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "bootstrap: $*"; }

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql postgresql-contrib)
command -v pg_dump >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
if [ "${#need_apt[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  say "apt-get update (package lists)"
  $SUDO apt-get update -qq
  say "apt-get install ${need_apt[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian starts a default cluster on install; the tests run their own.
  say "stopping the default PostgreSQL service the install started (the demo and tests run their own)"
  $SUDO service postgresql stop >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/python ]; then
  say "creating the virtual environment .venv (python3 -m venv)"
  python3 -m venv .venv
fi
say "pip install -r requirements-dev.txt into .venv (already installed packages are kept)"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
say "pip install -e . (db-backup itself, editable) into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
