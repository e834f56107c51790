"""A throwaway PostgreSQL cluster on loopback: restore drills, the tests, the demo and the benchmarks.

initdb into a private temporary folder, a free port on 127.0.0.1, scram password auth over TCP;
stopped and deleted when the block ends (with the cancel signals held meanwhile), or, for the demo,
left running by start_cluster until stop_cluster. The password goes
to initdb in a file, never in an argv; the server gets a minimal environment, never this process's.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..credentials import Connection
from ..errors import BadInput, InfraError
from ..signals import deferred_signals

log = logging.getLogger(__name__)

INITDB_TIMEOUT_S = 120.0
START_WAIT_S = 60  # pg_ctl -t
REMOVE_ATTEMPTS = 10
STOP_WAIT_S = 30
_FIX = ("install the PostgreSQL server package of the client's major version (e.g. apt-get install postgresql-17) "
        "or set DB_BACKUP_PG_BINDIR to the bin folder that holds initdb and pg_ctl")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _has_server(folder: Path) -> bool:
    return (folder / "initdb").is_file() and (folder / "pg_ctl").is_file()


def _major_of(path: str) -> int:
    part = path.split("/")[4]
    return int(part) if part.isdigit() else 0


def pg_bindir() -> Path:
    """The server programs: DB_BACKUP_PG_BINDIR if it holds them, else the newest /usr/lib/postgresql/*/bin."""
    chosen = os.environ.get("DB_BACKUP_PG_BINDIR")
    if chosen and _has_server(Path(chosen)):
        return Path(chosen)
    found = sorted((p for p in glob.glob("/usr/lib/postgresql/*/bin") if _has_server(Path(p))), key=_major_of)
    if not found:
        where = f" (not in DB_BACKUP_PG_BINDIR={chosen} nor /usr/lib/postgresql/*/bin)" if chosen else " (not in /usr/lib/postgresql/*/bin)"
        raise BadInput(f"the PostgreSQL server programs initdb and pg_ctl are missing{where}, and a throwaway cluster needs them; {_FIX}")
    return Path(found[-1])


def _as_server_user(argv: list[str]) -> list[str]:
    # initdb and pg_ctl refuse to run as root: root runs them as postgres.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass(frozen=True)
class Cluster:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    bindir: Path
    datadir: Path

    def url(self, dbname: str = "postgres") -> str:
        """Without the password: libpq gets it from the caller."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def connection(self, dbname: str = "postgres") -> Connection:
        return Connection(self.host, self.port, dbname, self.user, self.password, sslmode="disable")


def server_env() -> dict[str, str]:
    """What initdb, pg_ctl and so the postmaster see: a restored dump's SQL runs there as superuser
    and could read its environment, so no credential of this process (AWS keys, tokens, env: passwords)."""
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"}
    for name in ("TZ", "TMPDIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _run(argv: list[str], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(_as_server_user(argv), capture_output=True, text=True, timeout=timeout, check=False,
                              env=server_env())
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"{what} did not finish within {timeout:.0f}s") from exc
    except FileNotFoundError as exc:
        raise BadInput(f"{what} cannot run: {exc.filename} is missing; {_FIX}") from exc


def _private_root(parent: Path | None) -> Path:
    root = Path(tempfile.mkdtemp(prefix="dbbackup-pg-", dir=parent))
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise BadInput("initdb refuses to run as root and there is no postgres user to run it as; "
                           "create one (useradd postgres) or run db-backup as an ordinary user") from exc
        shutil.chown(root, "postgres", "postgres")
    return root


def _initdb(bindir: Path, root: Path, pgdata: Path, password: str) -> None:
    pwfile = root / "pw"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    try:
        done = _run([str(bindir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth-local=trust",
                     "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8", "--locale=C"],
                    "initdb", INITDB_TIMEOUT_S)
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        # Under root it runs as postgres, which must be able to reach the folder.
        hint = f"; it ran as postgres, so every folder above {root} must be open to that user" if os.geteuid() == 0 else ""
        raise InfraError(f"initdb failed (exit {done.returncode}): {_tail(done.stderr)}{hint}")


def _start(bindir: Path, root: Path, pgdata: Path, port: int, extra_options: str) -> None:
    options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off "
               f"-c synchronous_commit=off -c max_connections=100 {extra_options}")
    started = _run([str(bindir / "pg_ctl"), "-D", str(pgdata), "-w", "-t", str(START_WAIT_S), "-l", str(root / "log"),
                    "-o", options, "start"], "pg_ctl start", START_WAIT_S + 30)
    if started.returncode != 0:
        log_file = root / "log"
        server_log = log_file.read_text(errors="replace") if log_file.exists() else ""
        raise InfraError(f"PostgreSQL did not start: {_tail(started.stderr)} {_tail(server_log)}".strip())


def _stop(bindir: Path, pgdata: Path) -> None:
    """Stop the server if it runs; if pg_ctl cannot within its wait, kill the postmaster."""
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return
    with contextlib.suppress(InfraError, BadInput):
        stopped = _run([str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "-t", str(STOP_WAIT_S), "stop"],
                       "pg_ctl stop", STOP_WAIT_S + 30)
        if stopped.returncode == 0:
            return
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pidfile.read_text().splitlines()[0])
        if not _is_postmaster_of(pid, pgdata):
            log.warning("pg_ctl stop failed and pid %d of %s is not its server; nothing killed", pid, pidfile)
            return
        log.warning("pg_ctl stop failed; killing the throwaway server (pid %d)", pid)
        os.kill(pid, signal.SIGKILL)  # its backends exit once the postmaster is gone


def _remove(root: Path) -> None:
    """Remove the cluster's folder; a backend still exiting after a kill may write into it once more."""
    for _attempt in range(REMOVE_ATTEMPTS):
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return
        time.sleep(0.5)
    log.warning("could not remove the throwaway cluster's folder %s; remove it by hand", root)


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    """Whether `pid` runs postgres on `pgdata`: a stale postmaster.pid may name a pid reused since."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    program = os.path.basename(argv[0].decode(errors="replace")) if argv else ""
    return program in ("postgres", "postmaster") and str(pgdata).encode() in argv


def _tail(text: str, limit: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def start_cluster(password: str, extra_options: str = "", bindir: Path | None = None, parent: Path | None = None) -> Cluster:
    """initdb + pg_ctl start with password auth over TCP, left running until stop_cluster; nothing stays if it fails."""
    bindir = bindir or pg_bindir()
    root = _private_root(parent)
    pgdata = root / "data"
    try:
        _initdb(bindir, root, pgdata, password)
        port = free_port()
        # A cancel mid-start would kill pg_ctl but not the server it is starting, which then writes
        # into the folder while it is being removed: the cancel waits the second or two a start takes.
        with deferred_signals():
            _start(bindir, root, pgdata, port, extra_options)
    except BaseException:
        # pg_ctl may have timed out, or a held cancel fired, after the server came up.
        stop_cluster(bindir, pgdata)
        raise
    return Cluster("127.0.0.1", port, "postgres", password, bindir, pgdata)


def stop_cluster(bindir: Path, datadir: Path) -> None:
    """Stop the server (pg_ctl stop -m immediate, bounded; a kill if that fails), then delete its folder."""
    # A second cancel (GitHub sends SIGINT, then SIGTERM) must not skip the kill or the rmtree.
    with deferred_signals():
        _stop(bindir, datadir)
        _remove(datadir.parent)


@contextlib.contextmanager
def throwaway_cluster(password: str, extra_options: str = "", bindir: Path | None = None,
                      parent: Path | None = None) -> Iterator[Cluster]:
    """start_cluster for the block: stopped and deleted on exit, whatever happens."""
    made = start_cluster(password, extra_options, bindir, parent)
    try:
        yield made
    finally:
        stop_cluster(made.bindir, made.datadir)
