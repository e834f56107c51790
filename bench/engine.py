"""The db-backup under test: its targets.yaml, its environment, and the CLI run as a child."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from .basics import BenchError, venv_python
from .measures import Sample, measured
from .s3 import S3Base
from .server import Server

ENV_NAME = "bench"
EMPTY, EMPTY_DB = "empty", "bench_empty"  # the fixed-cost steps' target and its database
FALLBACK_DEFAULT = "zstd:1"  # if the engine cannot be asked for its default

# Runs the db-backup console entry point and, at exit, writes the process's own peak RSS
# (VmHWM of /proc/self/status, KiB) to $BENCH_RSS_FILE. VmHWM belongs to the process's own
# address space, so its pg_dump, zstd and pg_restore children do not count. getrusage's
# ru_maxrss is NOT used: Python starts children with vfork+exec, and Linux carries the parent's
# high-water mark into the child's ru_maxrss at exec (the bench's own RSS, which holds moto's
# objects, would show up as db-backup's).
RSS_WRAPPER = """
import atexit, os, sys
def _report():
    with open("/proc/self/status") as status:
        hwm = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_RSS_FILE"], "w") as out:
        out.write(hwm)
atexit.register(_report)
sys.argv[0] = "db-backup"
from runner.cli import main
main()
"""


def ident(scale: int, compression: str) -> str:
    return f"s{scale}-" + compression.replace(":", "")


def _ask(code: str) -> str:
    """What the engine's interpreter prints, run outside the repository like the CLI children."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run([venv_python(), "-c", code], capture_output=True, text=True,
                              check=False, timeout=60, cwd=tempfile.gettempdir()).stdout.strip()
    return ""


def default_compression() -> str:
    """The compression a target gets when targets.yaml names none, asked from the engine."""
    return _ask("from runner.compression import parse_compression\n"
                "from runner.targets_schema import DefaultsModel\n"
                "print(parse_compression(DefaultsModel.model_fields['compression'].default))"
                ) or FALLBACK_DEFAULT


def runner_location() -> str:
    """Where the db-backup children import `runner` from (PYTHONPATH can point elsewhere)."""
    found = _ask("import runner; print(runner.__file__)")
    return str(Path(found).parent) if found else "unknown"


class Engine:
    """Runs `db-backup` as its users do, against the bench's server and S3 (or a local folder)."""

    def __init__(self, work: Path, server: Server, s3: S3Base, default: str,
                 compressions: Sequence[str]) -> None:
        self.work = work
        self.server = server
        self.s3 = s3
        self.default = default
        self.compressions = list(compressions)
        self.python = venv_python()
        self.targets_file = work / "targets.yaml"
        self.folder_targets_file = work / "targets-folder.yaml"

    def _target_lines(self, database: str, identifier: str, compression: str) -> list[str]:
        # The password is only ever an env: reference; its value reaches the child in the
        # environment (BENCH_PGPASSWORD, see env()), never in argv or this file.
        c = self.server
        password = '"env:BENCH_PGPASSWORD"' if c.password is not None else "null"
        return [
            f"  - identifier: {identifier}", f"    env: {ENV_NAME}", f"    compression: {compression}",
            "    database:", f"      host: {json.dumps(c.host)}", f"      port: {c.port}",
            f"      name: {database}", f"      user: {json.dumps(c.user)}",
            f"      password: {password}",
            *([f"      sslmode: {json.dumps(c.sslmode)}"] if c.sslmode else []),
        ]

    def write_targets(self, scales: Sequence[int]) -> None:
        """One target per compression and scale in S3, and the default one in a local folder."""
        head = ["version: 1", "defaults:", "  storage: {storage}", f"  region: {self.s3.region}",
                "environments:", f"  {ENV_NAME}: {{}}", "targets:"]
        s3 = [line.replace("{storage}", self.s3.storage_url()) for line in head]
        folder = [line.replace("{storage}", f"file://{self.work / 'folder-store'}") for line in head]
        for scale in scales:
            # The other scales back up uncompressed too (peak RSS), whatever --compressions lists.
            for compression in dict.fromkeys([*self.compressions, "none"]):
                s3 += self._target_lines(f"bench_s{scale}", ident(scale, compression), compression)
            s3 += self._target_lines(f"bench_s{scale}", ident(scale, "legacy"), "gzip:6")
            folder += self._target_lines(f"bench_s{scale}", ident(scale, self.default), self.default)
        for lines in (s3, folder):
            lines += self._target_lines(EMPTY_DB, EMPTY, self.default)
        self.targets_file.write_text("\n".join(s3) + "\n", encoding="utf-8")
        self.folder_targets_file.write_text("\n".join(folder) + "\n", encoding="utf-8")

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GITHUB_", "PG")) and k != "DB_BACKUP_TARGETS"}
        # With moto, os.environ holds its endpoint and fake credentials (Moto.start); with real
        # S3 it is the caller's own environment, passed through untouched.
        env.update(DB_BACKUP_PG_BINDIR=str(self.server.bindir),
                   DB_BACKUP_TARGETS=str(self.targets_file))
        if self.server.password is not None:
            env["BENCH_PGPASSWORD"] = self.server.password
        env.update(extra or {})
        return env

    def run(self, argv: list[str], extra_env: dict[str, str] | None = None,
            pin: int | None = None) -> tuple[Sample, str]:
        """Run the CLI (console entry point, wrapped to report its own VmHWM); its stdout.

        pin = a CPU to run it on (``taskset -c``): the CLI and every child it starts (download,
        zstd, pg_restore and its workers) inherit the affinity. taskset execs the interpreter, so
        VmHWM is still the db-backup process's own.
        """
        taskset = ["taskset", "-c", str(pin)] if pin is not None else []
        rss_file = self.work / f"rss-{uuid.uuid4().hex[:8]}"
        env = self.env(extra_env)
        env["BENCH_RSS_FILE"] = str(rss_file)
        # cwd: `python -c` puts the working directory first on sys.path; outside the repo,
        # PYTHONPATH (e.g. a scratch copy of runner/) is honoured.
        sample, proc = measured(lambda: subprocess.run(
            [*taskset, self.python, "-c", RSS_WRAPPER, *argv], env=env, capture_output=True,
            text=True, timeout=3600, check=False, cwd=self.work))
        if proc.returncode != 0:
            stderr = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise BenchError(f"db-backup {shlex.join(argv)} exited {proc.returncode}:\n{stderr}")
        rss = int(rss_file.read_text()) if rss_file.exists() else None
        rss_file.unlink(missing_ok=True)
        return dataclasses.replace(sample, rss_kib=rss), proc.stdout.strip()
