"""A throwaway PostgreSQL cluster on loopback for the demo, the tests and the benchmarks."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries are missing: run scripts/bootstrap.sh (apt-get install postgresql)")
    return Path(found[-1]).parent


def _as_postgres(argv: list[str]) -> list[str]:
    # initdb and pg_ctl refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass(frozen=True)
class Cluster:
    host: str
    port: int
    user: str
    password: str
    bindir: Path
    datadir: Path

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"


@contextmanager
def throwaway_cluster(password: str, extra_options: str = "", bindir: Path | None = None) -> Iterator[Cluster]:
    """initdb + pg_ctl start with password auth over TCP; stopped and deleted on exit."""
    bindir = bindir or pg_bindir()
    root = Path(tempfile.mkdtemp(prefix="dbbackup-pg-"))
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(pwfile, "postgres", "postgres")
    port = free_port()
    pgdata = root / "data"
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth-local=trust",
                      "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8", "--locale=C"]),
        check=True, capture_output=True, timeout=120,
    )
    pwfile.unlink()
    options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off "
               f"-c synchronous_commit=off -c max_connections=100 {extra_options}")
    started = subprocess.run(
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "-l", str(root / "log"),
                      "-o", options, "start"]),
        capture_output=True, timeout=90, check=False,
    )
    if started.returncode != 0:
        log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr.decode(errors='replace')} {log[-2000:]}")
    try:
        yield Cluster("127.0.0.1", port, "postgres", password, bindir, pgdata)
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "-t", "60", "stop"]),
            capture_output=True, timeout=90, check=False,
        )
        shutil.rmtree(root, ignore_errors=True)
