"""PostgreSQL processes and administration: pg_dump/pg_restore pipelines and the safe swap."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO

import psycopg
from psycopg import sql

from .compression import Compression
from .credentials import Connection
from .errors import BadInput, JobFailed, RestoreRefused
from .humanize import human_duration
from .storage import ID_RE

log = logging.getLogger(__name__)

AdminConnection = psycopg.Connection[tuple[object, ...]]

CHUNK = 1 << 20
MAX_NAME_BYTES = 63
# Variables pg_dump also treats as lists: each element must be quoted on its own.
LIST_SETTINGS = frozenset(
    {"search_path", "temp_tablespaces", "session_preload_libraries", "shared_preload_libraries",
     "local_preload_libraries", "unix_socket_directories"}
)
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
def libpq_env(conn: Connection) -> Iterator[ToolEnv]:
    """Environment for libpq tools: connection in PG* variables, the password in a private passfile.

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
    if password is None:
        if "PGPASSFILE" in os.environ:
            env["PGPASSFILE"] = os.environ["PGPASSFILE"]  # a path, not a secret; unset, libpq reads ~/.pgpass
        yield ToolEnv(env)
        return
    # A passfile, not PGPASSWORD: other processes may read a process's environment.
    with _memory_passfile(conn.user, password) as (path, fds):
        env["PGPASSFILE"] = path
        yield ToolEnv(env, fds)


_CONTEXT_PREFIXES = ("command was:", "context:", "detail:", "hint:", "query was:")


class Tail:
    """Collects what a process writes to stderr, in a thread, so the pipe never fills.

    Keeps the last lines, and the first error with the lines that explain it (`Command was:`,
    `CONTEXT:`): later errors are often consequences, e.g. `a worker process died unexpectedly`.
    """

    def __init__(self, stream: IO[bytes], name: str, keep: int = 20) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self.first_error: list[str] = []
        self._name = name
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True, name=f"{name}-stderr")
        self._thread.start()

    def _run(self, stream: IO[bytes]) -> None:
        collecting = False
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            self.lines.append(line)
            log.debug("%s: %s", self._name, line)
            bare = line.split(": ", 1)[1] if line.startswith(f"{self._name}: ") else line
            if not self.first_error and _is_error(line):
                self.first_error.append(line)
                collecting = True
            elif collecting and bare.lower().startswith(_CONTEXT_PREFIXES) and len(self.first_error) < 3:
                self.first_error.append(bare)
            else:
                collecting = False

    def join(self) -> None:
        self._thread.join(timeout=30)

    def last_error(self) -> str:
        """The first error and its context in one line; else the last line written."""
        if self.first_error:
            return _clip("; ".join(self.first_error))
        return _clip(self.lines[-1]) if self.lines else "no message"

    def mentions(self, text: str) -> bool:
        return any(text in line for line in self.lines) or any(text in line for line in self.first_error)


def _is_error(line: str) -> bool:
    lowered = line.lower()
    return "error" in lowered or "fatal" in lowered or "no space left" in lowered


def _clip(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _conninfo_dbname(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


Step = tuple[str, subprocess.Popen[bytes], Tail]


def _victim(proc: subprocess.Popen[bytes], tail: Tail) -> bool:
    """Died because the process it wrote to had already quit: a consequence, not the cause."""
    return proc.returncode == -13 or tail.mentions("Broken pipe")


def _pipeline_failure(steps: list[Step]) -> JobFailed | None:
    failed = [(name, proc, tail) for name, proc, tail in steps if proc.returncode not in (0, None)]
    for _name, _proc, tail in failed:
        tail.join()
    # zstd -d killed by SIGPIPE only says that pg_restore stopped reading: pg_restore says why.
    cause = next((step for step in failed if not _victim(step[1], step[2])), failed[0] if failed else None)
    if cause is None:
        return None
    name, proc, tail = cause
    return JobFailed(f"{name} failed (exit {proc.returncode}): {tail.last_error()}")


def stop(steps: list[Step]) -> None:
    for _name, proc, _tail in steps:
        if proc.poll() is None:
            proc.kill()
    for _name, proc, tail in steps:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        tail.join()


@dataclass(frozen=True)
class DumpPlan:
    argv: tuple[str, ...]
    compressor: tuple[str, ...] | None
    compression: str
    compressed_by: str
    lock_wait: timedelta | None = None


def plan_dump(pg_dump: str, compression: Compression, lock_wait: timedelta | None = None) -> DumpPlan:
    """zstd always wraps pg_dump's uncompressed stream, whatever the client version.

    pg_dump 16+ could compress with zstd itself, but single-threaded, and its archives need
    pg_restore 16+: a laptop with older client tools could not restore the Fargate task's backups.
    """
    base: tuple[str, ...] = (pg_dump, "--format=custom", "--no-password")
    if lock_wait is not None:
        # Without it pg_dump waits forever for a table that a migration holds ACCESS EXCLUSIVE.
        base += (f"--lock-wait-timeout={max(1, int(lock_wait.total_seconds() * 1000))}",)
    if compression.method == "zstd":
        zstd = shutil.which("zstd")
        if not zstd:
            raise BadInput("compression zstd needs the zstd program; install it (apt-get install zstd) or set compression: gzip")
        return DumpPlan((*base, "--compress=0"), (zstd, f"-{compression.level}", "-T0", "-q", "-c"), str(compression), "zstd", lock_wait)
    level = compression.level if compression.method == "gzip" else 0
    return DumpPlan((*base, f"--compress={level}"), None, str(compression), "pg_dump", lock_wait)


_LOCKED_TABLE = re.compile(r"LOCK TABLE (.+?) IN \w+ \w+ MODE")


def _lock_timeout(plan: DumpPlan, tail: Tail) -> JobFailed | None:
    """pg_dump gave up waiting for a table's lock: name the table and what to do."""
    if plan.lock_wait is None:
        return None
    # pg_dump 15 waits under statement_timeout, newer ones under lock_timeout; either way the query named is the LOCK.
    table = next((m.group(1) for line in [*tail.first_error, *tail.lines] if (m := _LOCKED_TABLE.search(line))), None)
    if table is None or not (tail.mentions("statement timeout") or tail.mentions("lock timeout")):
        return None
    return JobFailed(
        f"pg_dump could not lock {table} within {human_duration(plan.lock_wait.total_seconds())} (lock_wait_timeout): "
        "another session holds a conflicting lock, e.g. a migration; find it in pg_locks and retry, "
        "or raise lock_wait_timeout in targets.yaml"
    )


class _Pump:
    """Moves pg_dump's output into the compressor and counts it; splice() avoids copying on Linux."""

    def __init__(self, source: IO[bytes], sink: IO[bytes]) -> None:
        self.count = 0
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, args=(source, sink), daemon=True, name="dump-pump")
        self._thread.start()

    def _run(self, source: IO[bytes], sink: IO[bytes]) -> None:
        src, dst = source.fileno(), sink.fileno()
        try:
            splice = getattr(os, "splice", None)
            while True:
                if splice is not None:
                    moved = splice(src, dst, CHUNK)
                else:
                    data = os.read(src, CHUNK)
                    moved = len(data)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(dst, view):]
                if moved == 0:
                    break
                self.count += moved
        except OSError as exc:  # reported by dump_stream: an early end here means a truncated dump
            self.error = exc
        finally:
            source.close()
            sink.close()

    def join(self) -> None:
        self._thread.join(timeout=300)

    def failure(self) -> JobFailed | None:
        if self._thread.is_alive():
            return JobFailed("moving pg_dump's output into zstd did not finish; the backup is incomplete and was not kept")
        if self.error is None:
            return None
        return JobFailed(f"moving pg_dump's output into zstd failed ({self.error}); the backup is incomplete and was not kept")


class DumpOutput:
    """The stored bytes, chunk by chunk; `raw_bytes` is pg_dump's own output size once done."""

    def __init__(self, out: IO[bytes], pump: _Pump | None) -> None:
        self._out = out
        self._pump = pump
        self.raw_bytes: int | None = None
        self._seen = 0

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self._out.read(CHUNK):
            self._seen += len(chunk)
            yield chunk

    def finish(self, uncompressed: bool) -> None:
        if self._pump is not None:
            self._pump.join()
            self.raw_bytes = self._pump.count
        elif uncompressed:
            self.raw_bytes = self._seen


@contextlib.contextmanager
def dump_stream(conn: Connection, plan: DumpPlan) -> Iterator[DumpOutput]:
    """Yield pg_dump's (optionally compressed) output; raise JobFailed if any step fails."""
    with libpq_env(conn) as env:
        steps: list[Step] = []
        dump = env.spawn(plan.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert dump.stdout is not None and dump.stderr is not None
        steps.append(("pg_dump", dump, Tail(dump.stderr, "pg_dump")))
        out: IO[bytes] = dump.stdout
        pump = None
        if plan.compressor:
            comp = compressor_env().spawn(plan.compressor, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert comp.stdin is not None and comp.stdout is not None and comp.stderr is not None
            steps.append(("zstd", comp, Tail(comp.stderr, "zstd")))
            pump = _Pump(dump.stdout, comp.stdin)
            out = comp.stdout
        output = DumpOutput(out, pump)
        try:
            yield output
            out.close()
            for _name, proc, tail in steps:
                proc.wait(timeout=300)
                tail.join()
            output.finish(uncompressed=plan.compressed_by == "pg_dump" and plan.compression == "none")
            # zstd ends cleanly on an early EOF, so a failed pump would otherwise store a truncated
            # dump. A broken pipe means the compressor died: its exit code and message say why.
            pump_failure = pump.failure() if pump is not None else None
            if pump is not None and pump_failure is not None and not isinstance(pump.error, BrokenPipeError):
                raise pump_failure
            failure = _pipeline_failure(steps) or pump_failure
            if failure:
                raise _lock_timeout(plan, steps[0][2]) or failure
        except BaseException:
            stop(steps)
            raise


def pg_restore_argv(pg_restore: str, dbname: str, ignore_privileges: bool, jobs: int, path: Path | None) -> list[str]:
    argv = [pg_restore, "--no-password", "--exit-on-error", f"--dbname={_conninfo_dbname(dbname)}"]
    if ignore_privileges:
        argv += ["--no-owner", "--no-privileges"]
    if path is not None:
        if jobs > 1:
            argv.append(f"--jobs={jobs}")
        argv.append(str(path))
    return argv


def restore_stream(conn: Connection, argv: list[str], chunks: Iterable[bytes], decompress: tuple[str, ...] | None) -> str:
    """Feed chunks into [zstd -d |] pg_restore; returns the sha256 of what was fed."""
    digest = hashlib.sha256()
    with libpq_env(conn) as env:
        steps: list[Step] = []
        restore = env.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert restore.stdin is not None and restore.stderr is not None
        steps.append(("pg_restore", restore, Tail(restore.stderr, "pg_restore")))
        sink = restore.stdin
        if decompress:
            dec = compressor_env().spawn(decompress, stdin=subprocess.PIPE, stdout=restore.stdin, stderr=subprocess.PIPE)
            restore.stdin.close()
            assert dec.stdin is not None and dec.stderr is not None
            steps.insert(0, ("zstd", dec, Tail(dec.stderr, "zstd")))
            sink = dec.stdin
        try:
            try:
                for chunk in chunks:
                    digest.update(chunk)
                    sink.write(chunk)
                sink.close()
            except BrokenPipeError:
                pass  # the reader stopped early; its exit code and message say why
            for _name, proc, tail in steps:
                proc.wait(timeout=None)
                tail.join()
        except BaseException:
            stop(steps)
            raise
        failure = _pipeline_failure(steps)
        if failure:
            raise failure
    return digest.hexdigest()


def run_restore_file(conn: Connection, argv: list[str]) -> None:
    with libpq_env(conn) as env:
        proc = env.spawn(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        tail = Tail(proc.stderr, "pg_restore")
        try:
            proc.wait()
            tail.join()
        except BaseException:
            stop([("pg_restore", proc, tail)])
            raise
        failure = _pipeline_failure([("pg_restore", proc, tail)])
        if failure:
            raise failure


# --- administration ---------------------------------------------------------------------------


def connect(conn: Connection) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(**conn.psycopg_kwargs(), autocommit=True)  # type: ignore[arg-type]
    except psycopg.OperationalError as exc:
        raise JobFailed(f"cannot connect to {conn.describe()}: {_pg_message(exc)}") from exc


def bound_statements(admin: AdminConnection, seconds: float) -> None:
    """No statement on this connection may wait longer than `seconds` (psycopg's cancel ends it)."""
    admin.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{max(1, int(seconds * 1000))}ms")))
    keep_when_idle(admin)


def keep_when_idle(db: AdminConnection) -> None:
    """This session holds a lock while it waits for the job: a server's idle_session_timeout must not end it."""
    if db.info.server_version >= 140000:  # the setting exists from PostgreSQL 14
        db.execute("SET idle_session_timeout = 0")


def _pg_message(exc: BaseException) -> str:
    """The server's or libpq's reason in one line, with its cause: `... failed: Connection refused`."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0].removeprefix("connection failed:").strip()
    # libpq names the address tried, then the cause; a hint such as "Is the server running" follows.
    text = re.sub(r"\bFATAL:\s+", "", text).strip()
    hints = [line for line in lines[1:] if not line.upper().startswith(("DETAIL:", "CONTEXT:"))]
    if hints and hints[0].startswith("Is the server running"):
        text += f" ({hints[0][0].lower()}{hints[0][1:].rstrip('?')}?)"
    return text


def server_version(db: AdminConnection) -> str:
    """`15.18` (a server may append its build, e.g. `15.18 (Debian 15.18-0+deb12u1)`)."""
    reported = db.info.parameter_status("server_version")
    return reported.split(" ", 1)[0] if reported else "unknown"


def derived_name(base: str, suffix: str) -> str:
    """`base + suffix`, shortened deterministically (prefix + hash) to fit 63 bytes."""
    name = base + suffix
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    room = MAX_NAME_BYTES - len(suffix.encode()) - len(digest) - 1
    prefix = base.encode()[:room].decode("utf-8", "ignore")
    return f"{prefix}_{digest}{suffix}"


@dataclass(frozen=True)
class Grant:
    """One entry of a database's ACL, as aclexplode() lists it; grantee None is PUBLIC."""

    grantor: str
    grantee: str | None
    privilege: str
    grantable: bool


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    owner: str
    encoding: str
    collate: str
    ctype: str
    connlimit: int
    settings: tuple[str, ...]
    # None is a NULL datacl (the built-in defaults, which a new database has too); () is "all revoked".
    acl: tuple[Grant, ...] | None = None
    role_settings: tuple[tuple[str, tuple[str, ...]], ...] = ()
    comment: str | None = None


def admin_connection(conn: Connection) -> Connection:
    """Administrative statements run from the maintenance database, never from the target."""
    return conn.with_db("template1" if conn.dbname == "postgres" else "postgres")


def database_info(admin: psycopg.Connection[tuple[object, ...]], name: str) -> DatabaseInfo | None:
    row = admin.execute(
        """SELECT d.datname, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate,
                  d.datctype, d.datconnlimit,
                  coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                            WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}'),
                  d.datacl IS NULL, shobj_description(d.oid, 'pg_database')
           FROM pg_database d WHERE d.datname = %s""",
        (name,),
    ).fetchone()
    if row is None:
        return None
    grants = admin.execute(
        """SELECT pg_get_userbyid(a.grantor), CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
                  a.privilege_type, a.is_grantable
           FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s
           ORDER BY 1, 2 NULLS FIRST, 3""",
        (name,),
    ).fetchall()
    role_rows = admin.execute(
        """SELECT r.rolname, s.setconfig FROM pg_db_role_setting s
           JOIN pg_database d ON d.oid = s.setdatabase JOIN pg_roles r ON r.oid = s.setrole
           WHERE d.datname = %s AND s.setrole <> 0 ORDER BY 1""",
        (name,),
    ).fetchall()
    acl = None if row[7] else tuple(
        Grant(str(g[0]), None if g[1] is None else str(g[1]), str(g[2]), bool(g[3])) for g in grants
    )
    return DatabaseInfo(
        str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), int(str(row[5])), tuple(row[6]),  # type: ignore[arg-type]
        acl=acl,
        role_settings=tuple((str(r[0]), tuple(r[1] or ())) for r in role_rows),  # type: ignore[arg-type]
        comment=None if row[8] is None else str(row[8]),
    )


def drop_database(admin: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_database(admin: psycopg.Connection[tuple[object, ...]], name: str, like: DatabaseInfo | None) -> None:
    query = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    if like is not None:
        query = sql.SQL("{} ENCODING {} LC_COLLATE {} LC_CTYPE {} OWNER {}").format(
            query, sql.Literal(like.encoding), sql.Literal(like.collate), sql.Literal(like.ctype), sql.Identifier(like.owner)
        )
    try:
        admin.execute(query)
    except psycopg.Error as exc:
        raise JobFailed(f"cannot create database {name}: {_pg_message(exc)}") from exc


_BLANKS = " \t\n\r\f\v"


def split_guc_list(value: str) -> list[str]:
    """The elements of a list setting as the server stored it: `"a,b", public` is ["a,b", "public"].

    For list settings the server keeps each element quoted like an identifier where needed and joins
    them with ", " (pg_dump's SplitGUCList reads them back the same way).
    """
    items: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in _BLANKS:
            i += 1
        if i < n and value[i] == '"':
            parts: list[str] = []
            i += 1
            while True:
                close = value.find('"', i)
                if close < 0:
                    raise ValueError(f"unterminated quote in {value!r}")
                parts.append(value[i:close])
                i = close + 1
                if i < n and value[i] == '"':  # a doubled quote is one quote character
                    parts.append('"')
                    i += 1
                    continue
                break
            items.append("".join(parts))
        else:
            start = i
            while i < n and value[i] != "," and value[i] not in _BLANKS:
                i += 1
            if i == start:
                raise ValueError(f"empty element in {value!r}")
            items.append(value[start:i])
        while i < n and value[i] in _BLANKS:
            i += 1
        if i == n:
            return items
        if value[i] != ",":
            raise ValueError(f"unexpected {value[i]!r} in {value!r}")
        i += 1


def _setting_statement(alter: sql.Composable, setting: str) -> sql.Composed:
    """`alter SET name TO value` that stores exactly the `name=value` entry it was read from."""
    key, _, value = setting.partition("=")
    rendered: sql.Composable
    if key in LIST_SETTINGS:
        # A single literal would become one element: "a,b", public must stay two, not three.
        try:
            items = split_guc_list(value)
        except ValueError as exc:
            raise JobFailed(f"cannot read the setting {key} = {value}: {exc}; the target is unchanged") from exc
        rendered = sql.SQL(", ").join(sql.Literal(item) for item in items)
    else:
        rendered = sql.Literal(value)
    return sql.SQL("{} SET {} TO {}").format(alter, sql.Identifier(key), rendered)


_DATABASE_PRIVILEGES = frozenset({"CREATE", "CONNECT", "TEMPORARY"})


def _grant(admin: psycopg.Connection[tuple[object, ...]], name: str, grant: Grant, owner: str) -> None:
    if grant.privilege not in _DATABASE_PRIVILEGES:
        raise JobFailed(f"cannot copy the privilege {grant.privilege} on database {name}: db-backup does not know it")
    statement = sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
        sql.SQL(grant.privilege), sql.Identifier(name),
        sql.SQL("PUBLIC") if grant.grantee is None else sql.Identifier(grant.grantee),
        sql.SQL(" WITH GRANT OPTION") if grant.grantable else sql.SQL(""),
    )
    if grant.grantor == owner:
        # A superuser's or the owner's (or an owner member's) GRANT is recorded as the owner's.
        admin.execute(statement)
        return
    # The server records the role that grants: re-grant as the original grantor, as pg_dump does.
    try:
        admin.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(grant.grantor)))
    except psycopg.Error as exc:
        # The privilege matters, not who is on record as granting it: refusing the restore for that would be worse.
        log.warning("cannot act as %s, who granted %s on %s to %s (%s); granting it as %s instead", grant.grantor,
                    grant.privilege, name, grant.grantee or "PUBLIC", _pg_message(exc), admin.info.user)
        admin.execute(statement)
        return
    try:
        admin.execute(statement)
    finally:
        admin.execute("RESET ROLE")


def _apply_acl(admin: psycopg.Connection[tuple[object, ...]], name: str, like: DatabaseInfo) -> None:
    if like.acl is None:
        return  # NULL: the built-in defaults, which the fresh database has as well
    admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC, {}").format(sql.Identifier(name), sql.Identifier(like.owner)))
    # A grantor needs the grant option first; the owner holds every one implicitly.
    holds = {(like.owner, p) for p in _DATABASE_PRIVILEGES}
    pending = list(like.acl)
    while pending:
        ready = [g for g in pending if (g.grantor, g.privilege) in holds] or pending[:1]
        for grant in ready:
            _grant(admin, name, grant, like.owner)
            if grant.grantable and grant.grantee is not None:
                holds.add((grant.grantee, grant.privilege))
            pending.remove(grant)
    copied = database_info(admin, name)
    if copied is None or sorted(copied.acl or (), key=repr) != sorted(like.acl, key=repr):
        log.warning("the access privileges of %s differ slightly on the restored database (who granted what); "
                    "check them with \\l %s", like.name, like.name)


def apply_settings(admin: psycopg.Connection[tuple[object, ...]], name: str, like: DatabaseInfo) -> None:
    """Carry the target's database-level state over to the restored database: it lives in shared
    catalogs keyed by the database, so it would stay behind with the old data.

    Connection limit, settings (for all roles and per role), access privileges and comment.
    """
    ident = sql.Identifier(name)
    try:
        # -2 marks a database an interrupted DROP left invalid; the restored one is valid, unlimited.
        limit = -1 if like.connlimit == -2 else like.connlimit
        admin.execute(sql.SQL("ALTER DATABASE {} WITH CONNECTION LIMIT {}").format(ident, sql.Literal(limit)))
        for setting in like.settings:
            admin.execute(_setting_statement(sql.SQL("ALTER DATABASE {}").format(ident), setting))
        for role, settings in like.role_settings:
            alter_role = sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), ident)
            for setting in settings:
                admin.execute(_setting_statement(alter_role, setting))
        _apply_acl(admin, name, like)
        if like.comment is not None:
            admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident, sql.Literal(like.comment)))
    except psycopg.Error as exc:
        raise JobFailed(
            f"cannot copy the settings, privileges or comment of {like.name} to the restored database: "
            f"{_pg_message(exc)}; the target is unchanged"
        ) from exc


@dataclass
class SwapState:
    """Whether the swap has committed: from then on the target holds the restored data, and a
    failure or cancel must not claim otherwise (nor drop the fresh database, which is the target)."""

    committed: bool = False
    kept_previous: bool = False


Checkpoint = Callable[[str], None]


def _no_checkpoint(_step: str) -> None:
    return None


class _SessionEnder:
    """Ends every session on the given databases, over and over, from a second connection.

    It runs while the swap's transaction waits in ALTER DATABASE ... RENAME: that statement holds
    the target's database lock, so no new session can start, and waits up to 5 s for the ones
    that exist to go; this thread makes them go.
    """

    def __init__(self, conn: Connection, names: tuple[str, ...]) -> None:
        self._conn = conn
        self._names = list(names)
        self._stop = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="swap-session-ender")

    def __enter__(self) -> _SessionEnder:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            with connect(self._conn) as db:
                while not self._stop.is_set():
                    pids = [int(str(r[0])) for r in db.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid() "
                        # Other roles' backend_type reads as NULL to a non-superuser: those are clients too.
                        "AND coalesce(backend_type, 'client backend') = 'client backend'", (self._names,),
                    ).fetchall()]
                    for pid in pids:
                        # One at a time: a session this user may not end (a superuser's, without
                        # pg_signal_backend) must not spare all the others.
                        try:
                            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
                        except psycopg.errors.InsufficientPrivilege as exc:
                            self.error = f"may not end session {pid}: {_pg_message(exc)}"
                    self._stop.wait(0.1)
        except (psycopg.Error, JobFailed) as exc:
            self.error = _pg_message(exc)


def _blockers(admin: AdminConnection, name: str) -> str:
    rows = admin.execute(
        "SELECT pid, usename, coalesce(nullif(application_name, ''), '-'), state FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid() ORDER BY backend_start LIMIT 5", (name,),
    ).fetchall()
    return ", ".join(f"pid {r[0]} ({r[1]}, {r[2]}, {r[3]})" for r in rows) or "sessions that have ended since"


def _rename(admin: AdminConnection, old: str, new: str) -> None:
    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


def swap_in(
    admin: AdminConnection, admin_conn: Connection, target: str, fresh: str, previous: str,
    wait_s: float, state: SwapState, checkpoint: Checkpoint = _no_checkpoint,
) -> bool:
    """Make `fresh` the database called `target`; the old one becomes `previous`. True if one was kept.

    Both renames happen in one transaction and nothing else is ever committed to the target (no
    ALLOW_CONNECTIONS false): killed at any instant, the server rolls the transaction back and the
    target is as it was, connectable, or the commit went through and it holds the new data.
    """
    if database_info(admin, target) is None:
        checkpoint("swap:create")
        try:
            _rename(admin, fresh, target)  # one statement: committed whole or not at all
        except psycopg.Error as exc:  # e.g. someone created the target meanwhile
            raise _swap_failed(target, exc) from exc
        state.committed = True
        return False
    try:
        drop_database(admin, previous)
    except psycopg.Error as exc:
        raise JobFailed(f"cannot drop the older {previous} to make room: {_pg_message(exc)}; the target is unchanged") from exc
    checkpoint("swap:dropped-previous")
    deadline = time.monotonic() + wait_s
    with _SessionEnder(admin_conn, (target, fresh)) as ender:
        while True:
            try:
                with admin.transaction():
                    admin.execute("SET LOCAL lock_timeout = '10s'")
                    # A client frozen mid-transaction (suspended, partitioned) must not keep the target locked.
                    admin.execute("SET LOCAL idle_in_transaction_session_timeout = '15s'")
                    _rename(admin, target, previous)
                    checkpoint("swap:renamed-target")
                    _rename(admin, fresh, target)
                    checkpoint("swap:before-commit")
                state.committed = state.kept_previous = True
                break
            except psycopg.errors.ObjectInUse as exc:
                if time.monotonic() >= deadline:
                    why = f"; {ender.error}" if ender.error else ""
                    raise JobFailed(
                        f"sessions on {target} did not end within {wait_s:.0f}s ({_blockers(admin, target)}{why}); "
                        "the target is unchanged and the restore was not applied"
                    ) from exc
                log.info("waiting for sessions on %s to end: %s", target, _blockers(admin, target))
            except psycopg.OperationalError as exc:
                if _committed(admin_conn, fresh, previous):
                    state.committed = state.kept_previous = True
                    break
                raise _swap_failed(target, exc) from exc
            except psycopg.Error as exc:
                raise _swap_failed(target, exc) from exc
            except KeyboardInterrupt:
                # A cancel while COMMIT was on its way: psycopg re-raises it after the commit went through.
                with contextlib.suppress(psycopg.Error, JobFailed):
                    if _committed(admin_conn, fresh, previous):
                        state.committed = state.kept_previous = True
                raise
        if ender.error:
            log.debug("ending sessions on %s: %s", target, ender.error)
    checkpoint("swap:committed")
    return True


def _swap_failed(target: str, exc: psycopg.Error) -> JobFailed:
    return JobFailed(f"swapping the restored database into {target} failed: {_pg_message(exc)}; the target is unchanged")


def _committed(admin_conn: Connection, fresh: str, previous: str) -> bool:
    """After a connection lost at COMMIT: did the renames go through? Asked over a new connection."""
    with connect(admin_conn) as db:
        names = {str(r[0]) for r in db.execute("SELECT datname FROM pg_database WHERE datname IN (%s, %s)", (fresh, previous))}
    return fresh not in names and previous in names


# --- one restore per target, live backups, and what crashed ones left ---------------------------


def _advisory_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def _try_lock(db: AdminConnection, key: int) -> bool:
    """A session advisory lock, taken at once or not at all: no wait to bound."""
    row = db.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


class UploadLocks:
    """Session advisory locks on the backed-up database, one per upload in progress.

    Storage cannot tell a live backup's unfinished upload from a dead one's; the database server
    can: a session's locks go when it ends, kill -9 included. All runs of a target lock in the
    same database, so they see each other's.
    """

    def __init__(self, db: AdminConnection) -> None:
        self._db = db

    @property
    def server_version(self) -> str:
        return server_version(self._db)

    def claim(self, name: str) -> bool:
        return _try_lock(self._db, _advisory_key(f"db-backup upload {name}"))

    def release(self, name: str) -> None:
        self._db.execute("SELECT pg_advisory_unlock(%s)", (_advisory_key(f"db-backup upload {name}"),))

    def abandoned(self, name: str) -> bool:
        """True when no live run holds `name` (checked by taking its lock for an instant)."""
        if not self.claim(name):
            return False
        self.release(name)
        return True


@contextlib.contextmanager
def upload_locks(conn: Connection) -> Iterator[UploadLocks]:
    with connect(conn) as db:
        keep_when_idle(db)
        yield UploadLocks(db)


def _lock_key(target: str) -> int:
    return _advisory_key(f"db-backup restore into {target}")


def lock_target(admin: AdminConnection, target: str) -> None:
    """Claim the right to restore into `target` for this session, or refuse at once.

    A session-level advisory lock: the server releases it when the session ends, however the
    process ended (a kill -9 included), so no stale lock is ever left to clean up.
    """
    key = _lock_key(target)
    if _try_lock(admin, key):
        return
    holder = admin.execute(
        """SELECT a.pid, a.usename, coalesce(host(a.client_addr), 'local socket'), a.backend_start
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid""",
        ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF),
    ).fetchone()
    who = (f"session {holder[0]} of {holder[1]} from {holder[2]}, running since "
           f"{holder[3]:%Y-%m-%d %H:%M:%S %Z}") if holder else "another session"
    raise RestoreRefused(f"another restore into {target} is running ({who}); wait for it to finish, then run again")


def restore_leftovers(admin: AdminConnection, target: str) -> list[str]:
    """Temporary databases of earlier restores into `target` (any backup id), by their exact names."""
    found = []
    for (name,) in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", ("%\\_\\_restore\\_%",)).fetchall():
        text = str(name)
        backup_id = text[text.rfind(RESTORE_INFIX) + len(RESTORE_INFIX):]
        # Only names db-backup makes: a database of the user's called `app__restore_notes` stays.
        if ID_RE.match(backup_id) and text == fresh_name(target, backup_id):
            found.append(text)
    return found


RESTORE_INFIX = "__restore_"


def fresh_name(target: str, backup_id: str) -> str:
    return derived_name(target, f"{RESTORE_INFIX}{backup_id}")


def check_can_create(admin: AdminConnection, conn: Connection) -> None:
    """The restore needs CREATE DATABASE: say so before downloading anything."""
    row = admin.execute("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()
    if not (row and row[0]):
        raise RestoreRefused(
            f"{conn.user} may not create databases on {conn.describe()}, and a restore builds the new data in a "
            f"fresh database; grant it (ALTER ROLE {conn.user} CREATEDB) or restore as a user who may"
        )


def try_drop_database(admin: psycopg.Connection[tuple[object, ...]], name: str) -> str | None:
    """Drop `name`; the server's reason if that failed, for callers whose own outcome matters more."""
    try:
        drop_database(admin, name)
    except psycopg.Error as exc:
        return _pg_message(exc)
    return None


def database_exists(admin: psycopg.Connection[tuple[object, ...]], name: str) -> bool | None:
    """None when the server cannot say (e.g. the connection is gone)."""
    try:
        return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    except psycopg.Error:
        return None
