"""The PostgreSQL client tools: where they are, their versions, and the environments they run in."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..credentials import Connection
from ..errors import BadInput

_LIBPQ_SECRETS = ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE")


def find_tool(name: str) -> str:
    bindir = os.environ.get("DB_BACKUP_PG_BINDIR")
    if bindir:
        candidate = Path(bindir) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise BadInput(f"{name} is not installed; install the PostgreSQL client tools (e.g. apt-get install postgresql-client)")
    return found


_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*(?:devel|(?:alpha|beta|rc)\d*)?)")


def tool_version(path: str) -> str:
    """`15.18` from `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`."""
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"}
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False, env=env).stdout
    return parse_tool_version(out)


def parse_tool_version(text: str) -> str:
    match = _VERSION.search(text)
    if match:
        return match.group(1)
    words = text.split()
    return words[-1] if words else "unknown"


def major(version: str) -> int:
    head = version.split(".", 1)[0].split(" ", 1)[0]
    return int(head) if head.isdigit() else 0


def _escape_passfile(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@dataclass(frozen=True)
class ToolEnv:
    """The environment of a libpq tool, and the descriptor of its in-memory passfile if any."""

    env: dict[str, str]
    fds: tuple[int, ...] = ()

    def spawn(self, argv: Iterable[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(argv), env=self.env, pass_fds=self.fds, **kwargs)  # type: ignore[call-overload, no-any-return]


def compressor_env() -> ToolEnv:
    """For zstd and gzip, which never connect: PATH only, so nothing that could hold a password
    (PGPASSWORD, the env:VAR a password came from, the passfile) reaches them."""
    return ToolEnv({"PATH": os.environ.get("PATH", "")})


def _passfile_line(user: str, password: str) -> bytes:
    return f"*:*:*:{_escape_passfile(user)}:{_escape_passfile(password)}\n".encode()


@contextlib.contextmanager
def _memory_passfile(user: str, password: str) -> Iterator[tuple[str, tuple[int, ...]]]:
    """A passfile that exists only in memory and dies with this process (and its children).

    A file on disk would outlive a kill -9 with the password in it. Linux's memfd has no path;
    each child reaches it as /dev/fd/N through the descriptor it inherits. Elsewhere (a macOS
    laptop) a 0600 file in a private directory is the fallback, removed on any exit but SIGKILL.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("db-backup-pgpass", os.MFD_CLOEXEC)  # only children given it in pass_fds see it
        try:
            os.fchmod(fd, 0o600)  # libpq ignores a passfile that group or others could read
            os.write(fd, _passfile_line(user, password))
            yield f"/dev/fd/{fd}", (fd,)
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="db-backup-") as private:
        passfile = Path(private) / "pgpass"
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(_passfile_line(user, password))
        yield str(passfile), ()


@contextlib.contextmanager
def libpq_env(conn: Connection, session: Mapping[str, str] | None = None) -> Iterator[ToolEnv]:
    """Environment for libpq tools: connection in PG* variables, the password in a private passfile;
    `session`: server settings for the tool's sessions (PGOPTIONS, after any the caller's environment has).

    Without a password of its own, db-backup lets the tools find one where the connection check
    (libpq inside this process) found it: PGPASSWORD, else the user's PGPASSFILE or ~/.pgpass.
    """
    # libpq reads an empty PGPASSWORD as none set.
    password = conn.password if conn.password is not None else (os.environ.get("PGPASSWORD") or None)
    # Children inherit nothing that holds the password (e.g. the env:VAR it was resolved from).
    env = {
        k: v for k, v in os.environ.items()
        if k not in _LIBPQ_SECRETS and not (password and password in v)
    }
    env.update(PGHOST=conn.host, PGPORT=str(conn.port), PGUSER=conn.user, PGDATABASE=conn.dbname,
               PGAPPNAME="db-backup", PGCONNECT_TIMEOUT="15")
    if conn.sslmode:
        env["PGSSLMODE"] = conn.sslmode
    if session:
        wanted = " ".join(f"-c {name}={value}" for name, value in session.items())
        env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} {wanted}".strip()
    if password is None:
        if "PGPASSFILE" in os.environ:
            env["PGPASSFILE"] = os.environ["PGPASSFILE"]  # a path, not a secret; unset, libpq reads ~/.pgpass
        yield ToolEnv(env)
        return
    # A passfile, not PGPASSWORD: other processes may read a process's environment.
    with _memory_passfile(conn.user, password) as (path, fds):
        env["PGPASSFILE"] = path
        yield ToolEnv(env, fds)
