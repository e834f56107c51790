#!/usr/bin/env python3
"""Benchmark of db-backup against the old system's way (issues 2 and 6). Not a test.

One run starts its own throwaway PostgreSQL cluster and an in-process moto S3 server (or, with
``--pg-url`` and ``--s3-bucket``, uses an existing server such as RDS and real S3), builds a
pgbench database plus a table of text at each requested scale (``--data issue``, the default:
random md5 hex, the data of the issue's reference table; ``--data mixed``: realistic, partly
compressible rows), and measures, in the same run and on the same data:

* backup: db-backup (the CLI as a subprocess) to S3 for each compression choice, versus the old
  way (``pg_dump -Fc`` with its default gzip to a file, then boto3 ``upload_file``), versus the
  pipeline floor (the slower of ``pg_dump -Fc`` to /dev/null with the same compression and
  uploading the finished dump file), plus the same backup into a local folder (no S3 emulator);
* restore: db-backup (stream and parallel modes, and an old dump as a legacy backup) versus plain
  ``pg_restore`` of the same dump, ``pg_restore -j1`` of the old way's dump, and a restore floor
  (``pg_restore -j1`` of an uncompressed dump file); ``pg_restore -j1`` and ``-j2`` of that file,
  and db-backup's stream and parallel restores, with the client pinned to one core (``taskset``)
  and the server free, as a 1-vCPU task restoring into a multi-core RDS server;
* whether ``pg_restore -j2`` works on a pipe-written archive (``pg_dump -Fc -Z0 | zstd``) after
  decompression to a file, and how long it takes versus streaming;
* peak RSS of the db-backup Python process itself (not its pg_dump/zstd/pg_restore children);
* CPU seconds of the tools and of the S3 emulator for every step.

Run ``.venv/bin/python bench/bench.py --help``; bench/README.md explains how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import json
import logging
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
BUCKET = "bench-bucket"
ENV_NAME = "bench"
PG_PASSWORD = "bench-pg-Secret-1"  # only for the throwaway cluster this script starts
COMPRESSIONS = ("zstd:1", "zstd:3", "gzip:1", "gzip:6", "none")
FALLBACK_DEFAULT = "zstd:1"  # if the engine cannot be asked for its default
RSS_LIMIT_MB = 150.0
CHECK_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "bench_docs")
DATA_PROFILES = ("issue", "mixed")  # how bench_docs is filled (--data); the first is the default
S3_PREFIX_ROOT = "db-backup-bench"  # --s3-bucket: everything goes under ROOT/<run-id>/ by default

# Runs the db-backup console entry point and, at exit, writes the process's own peak RSS
# (VmHWM of /proc/self/status, KiB) to $BENCH_RSS_FILE. VmHWM belongs to the process's own
# address space, so its pg_dump, zstd and pg_restore children do not count. getrusage's
# ru_maxrss is NOT used: Python starts children with vfork+exec, and Linux carries the parent's
# high-water mark into the child's ru_maxrss at exec (this script's own RSS, which holds moto's
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


class BenchError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mib(size: float) -> str:
    return f"{size / (1 << 20):,.1f} MB"


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def venv_python() -> str:
    candidate = REPO / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


# --- processes ---------------------------------------------------------------------------------


def run(argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 3600,
        stdout: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), env=env, stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} exited {proc.returncode}:\n{tail(proc.stderr)}")
    return proc


def run_pipeline(stages: Sequence[Sequence[str]], env: dict[str, str], sink: Any,
                 source: Any = subprocess.DEVNULL, timeout: float = 3600) -> None:
    """stage1 | stage2 | ... > sink, without a shell; raises if any stage fails."""
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        errs = [stack.enter_context(tempfile.TemporaryFile()) for _ in stages]
        upstream = source
        try:
            for index, (argv, err) in enumerate(zip(stages, errs, strict=True)):
                last = index == len(stages) - 1
                proc = subprocess.Popen(list(argv), stdin=upstream, stderr=err, env=env,
                                        stdout=sink if last else subprocess.PIPE)
                if procs and procs[-1].stdout is not None:
                    procs[-1].stdout.close()  # only the next stage holds the read end
                procs.append(proc)
                upstream = proc.stdout
            deadline = time.monotonic() + timeout
            for proc in procs:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            for argv, proc, err in zip(stages, procs, errs, strict=True):
                if proc.returncode != 0:
                    err.seek(0)
                    message = err.read().decode("utf-8", "replace")
                    raise BenchError(f"{shlex.join(argv)} exited {proc.returncode}:\n{tail(message)}")
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


# --- PostgreSQL ----------------------------------------------------------------------------------


def pg_bindir(given: str | None, server: bool = True) -> Path:
    """Where the PostgreSQL programs are: --pg-bindir, else the newest /usr/lib/postgresql/*/bin.

    server=True (the bench's own cluster) needs initdb/pg_ctl there. server=False (--pg-url) only
    needs the client tools (pg_dump, pg_restore, pgbench): a client-only install (e.g. Debian's
    postgresql-client-NN) has them in /usr/lib/postgresql/NN/bin too, and with nothing there the
    directory of pg_dump on PATH is used (Cluster.tool falls back to PATH for each tool).
    """
    if given:
        return Path(given)
    program = "pg_ctl" if server else "pg_dump"
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    if server:
        raise BenchError("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; pass --pg-bindir")
    on_path = shutil.which("pg_dump")
    if not on_path:
        raise BenchError("pg_dump is not installed (neither in /usr/lib/postgresql/*/bin nor on "
                         "PATH); install the PostgreSQL client tools or pass --pg-bindir")
    return Path(on_path).parent


def as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class Cluster:
    """A throwaway cluster: password (scram) auth over TCP on 127.0.0.1, fsync off."""

    external = False
    host = "127.0.0.1"
    user = "postgres"
    password: str | None = PG_PASSWORD
    sslmode: str | None = None

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dbbackup-bench-pg-"))
        self.data = self.root / "data"
        self.started = False

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        run(as_postgres([
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}",
            "--no-sync", "-E", "UTF8", "--locale=C",
        ]), timeout=180)
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c synchronous_commit=off -c max_wal_size=4GB "
            "-c max_connections=50"
        )
        run(as_postgres([
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-t", "120",
            "-l", str(self.root / "log"), "-o", options, "start",
        ]), timeout=180)
        self.started = True

    def stop(self) -> None:
        if self.started:
            subprocess.run(as_postgres([
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                "-t", "60", "stop",
            ]), capture_output=True, timeout=120, check=False)
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def describe(self) -> str:
        return (f"throwaway cluster started by the bench (initdb + pg_ctl, 127.0.0.1, "
                f"{self.bindir}; fsync=off full_page_writes=off synchronous_commit=off)")

    def url(self, dbname: str) -> str:
        """postgresql:// URL of a database on this server, without the password."""
        query = f"?sslmode={self.sslmode}" if self.sslmode else ""
        return f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/{dbname}{query}"

    def env(self, dbname: str = "postgres") -> dict[str, str]:
        env = dict(os.environ)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGDATABASE=dbname)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        return env

    def tool(self, name: str) -> str:
        candidate = self.bindir / name
        if candidate.exists() or not self.external:
            return str(candidate)
        found = shutil.which(name)  # a client-only install: the tool on PATH
        if not found:
            raise BenchError(f"{name} is not installed (not in {self.bindir} nor on PATH)")
        return found

    def connect(self, dbname: str = "postgres") -> Any:
        import psycopg

        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user,
                                  "dbname": dbname, "autocommit": True}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.sslmode:
            kwargs["sslmode"] = self.sslmode
        if self.external:
            kwargs["connect_timeout"] = 15
        return psycopg.connect(**kwargs)

    def execute(self, statement: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            cur = conn.execute(statement)
            return list(cur.fetchall()) if cur.description else []

    def create_db(self, name: str) -> None:
        self.drop_db(name)
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')

    def drop_db(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def counts(self, dbname: str) -> dict[str, int]:
        with self.connect(dbname) as conn:
            found = {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            result = {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                      for t in CHECK_TABLES if t in found}
            result["indexes"] = int(conn.execute(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = 'public'").fetchone()[0])
        return result

    def settle(self) -> None:
        """Before each timed step: no dirty buffers or pending writeback from the previous one."""
        self.execute("CHECKPOINT")
        os.sync()


@dataclass(frozen=True)
class PgTarget:
    """--pg-url, parsed; the password comes from PGPASSWORD or the password file, never the URL."""

    host: str
    port: int
    user: str
    dbname: str
    sslmode: str | None
    password: str | None = field(repr=False)
    password_from: str  # where the password came from, for the header (never the password)

    def url(self) -> str:
        query = f"?sslmode={self.sslmode}" if self.sslmode else ""
        return f"postgresql://{quote(self.user, safe='')}@{self.host}:{self.port}/{self.dbname}{query}"


def pgpass_lookup(host: str, port: int, dbname: str, user: str) -> tuple[str | None, str]:
    """The password libpq would take from PGPASSFILE or ~/.pgpass for this connection."""
    path = Path(os.environ.get("PGPASSFILE") or Path.home() / ".pgpass")
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None, ""
    if mode & 0o077:
        log(f"warning: {path} is readable by group or others; ignored, as libpq ignores it "
            "(chmod 0600 it)")
        return None, ""
    wanted = (host, str(port), dbname, user)
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields: list[str] = []
        current: list[str] = []
        escaped = False
        for char in line:
            if escaped:
                current.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == ":" and len(fields) < 4:
                fields.append("".join(current))
                current = []
            else:
                current.append(char)
        fields.append("".join(current))
        if len(fields) == 5 and all(f in ("*", w) for f, w in zip(fields[:4], wanted, strict=True)):
            return fields[4], str(path)
    return None, ""


def parse_pg_url(url: str) -> PgTarget:
    """postgresql://USER@HOST:PORT/DBNAME[?sslmode=...]; a password in it is refused."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    if parts.password is not None or "password" in query:
        raise BenchError("--pg-url must not contain a password (it would land in shell history "
                         "and in the printed command); put it in PGPASSWORD or ~/.pgpass")
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise BenchError("--pg-url must look like postgresql://USER@HOST:PORT/DBNAME")
    unknown = sorted(set(query) - {"sslmode"})
    if unknown:
        raise BenchError(f"--pg-url: unsupported parameter(s) {', '.join(unknown)}; only sslmode")
    try:
        port = parts.port or 5432
    except ValueError as exc:
        raise BenchError("--pg-url has an invalid port") from exc
    host = unquote(parts.hostname)
    user = (unquote(parts.username) if parts.username
            else os.environ.get("PGUSER") or os.environ.get("USER") or "postgres")
    dbname = unquote(parts.path.lstrip("/")) or "postgres"
    sslmode = query.get("sslmode", [""])[0] or os.environ.get("PGSSLMODE") or None
    password, source = os.environ.get("PGPASSWORD"), "PGPASSWORD"
    if password is None:
        password, source = pgpass_lookup(host, port, dbname, user)
    return PgTarget(host, port, user, dbname, sslmode, password,
                    source or "none found (PGPASSWORD unset, no matching password file entry)")


class ExternalServer(Cluster):
    """An existing server (--pg-url), e.g. RDS. Nothing of the server is started, stopped or
    configured: the bench creates its databases in it (it needs CREATEDB) and, at the end, also
    on an error, Ctrl-C or SIGTERM, drops exactly the databases it created. It refuses to start if
    one of those names already exists, so it never drops a database it did not create."""

    external = True

    def __init__(self, bindir: Path, target: PgTarget, planned: Sequence[str]) -> None:
        self.bindir = bindir
        self.target = target
        self.host, self.port, self.user = target.host, target.port, target.user
        self.password, self.sslmode = target.password, target.sslmode
        self.planned = list(dict.fromkeys(planned))
        self.owned: list[str] = []  # databases this run may create, dropped by stop()
        self.can_checkpoint = True
        self.version = ""
        self.started = False

    def describe(self) -> str:
        return (f"external server {self.target.url()} (password from {self.target.password_from}); "
                f"pg_ctl, runuser and the bench cluster's fsync=off settings: n/a (external "
                f"server); client tools from {self.bindir}")

    def start(self) -> None:
        import psycopg

        try:
            with self.connect(self.target.dbname) as conn:
                version, number, createdb = conn.execute(
                    "SELECT current_setting('server_version'), "
                    "current_setting('server_version_num')::int, rolcreatedb OR rolsuper "
                    "FROM pg_roles WHERE rolname = current_user").fetchone()
                existing = [r[0] for r in conn.execute(
                    "SELECT datname FROM pg_database WHERE datname = ANY(%s) ORDER BY 1",
                    (self.planned,))]
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BenchError(f"cannot connect to {self.target.url()}: {first}") from exc
        self.version = str(version)
        if not createdb:
            raise BenchError(f"user {self.user} may not create databases on {self.host}; the "
                             "bench needs CREATEDB (ALTER ROLE ... CREATEDB)")
        if existing:
            raise BenchError(f"database(s) {', '.join(existing)} already exist on {self.host}; "
                             "the bench creates and drops these names itself and will not touch "
                             "existing ones: drop them (left by a killed run?) or use another "
                             "server")
        out = subprocess.run([self.tool("pg_dump"), "--version"], capture_output=True, text=True,
                             check=False, timeout=30).stdout.split()
        client = int(out[-1].split(".")[0]) if out and out[-1].split(".")[0].isdigit() else 0
        if client and client < int(number) // 10000:
            raise BenchError(f"pg_dump {out[-1]} is older than the server ({self.version}); "
                             "install newer client tools or pass --pg-bindir")
        self.owned = list(self.planned)
        self.started = True

    def stop(self) -> None:
        """Drop every database this run created (IF EXISTS: some never were)."""
        if not self.started:
            return
        self.started = False
        failed = []
        for name in self.owned:
            try:
                self.drop_db(name)
            except Exception as exc:  # report every leftover, then go on
                failed.append(f"{name} ({str(exc).strip().splitlines()[0] if str(exc) else exc!r})")
        if failed:
            print(f"WARNING: could not drop on {self.host}: {'; '.join(failed)}; drop them by hand",
                  file=sys.stderr, flush=True)
        else:
            log(f"dropped the bench's databases on {self.host} (if they existed): "
                f"{', '.join(self.owned)}")

    def settle(self) -> None:
        """CHECKPOINT when the user may (superuser or pg_checkpoint); local writeback always."""
        import psycopg

        if self.can_checkpoint:
            try:
                self.execute("CHECKPOINT")
            except psycopg.errors.InsufficientPrivilege:
                self.can_checkpoint = False
                log(f"  CHECKPOINT before each step: n/a (user {self.user} lacks the privilege; "
                    "needs pg_checkpoint on PostgreSQL 15+)")
        os.sync()


# --- data ----------------------------------------------------------------------------------------


def vocabulary(size: int = 2000, seed: int = 20) -> list[str]:
    """A fixed vocabulary of pronounceable pseudo-words (deterministic), ~6.6 letters each."""
    rng = random.Random(seed)
    onsets = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v",
              "w", "z", "br", "ch", "cl", "dr", "gr", "pl", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ck"]
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.choice([1, 2, 2, 3])
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
        words.add(word + rng.choice(codas))
    ordered = sorted(words)
    rng.shuffle(ordered)
    return ordered


# --data issue: the data the issue's reference table was measured on ("pgbench scale 20 plus
# 3 million rows of random text"): 128 random hex characters per row. At scale 20 + 3,000,000
# rows it reproduces the issue's old-way numbers (gzip dump 238 MB vs 241 MB, uncompressed
# dump 629 MB vs 646 MB, pg_dump -Z0 to /dev/null 2.0 s vs 2.1 s).
ISSUE_TABLE = """
CREATE TABLE bench_docs (
    id bigint NOT NULL,
    body text NOT NULL
)"""
ISSUE_INSERT = """
INSERT INTO bench_docs
SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) g"""

# --data mixed: rows of realistic, partly compressible data: Zipf-ish words from a fixed
# vocabulary, numbers, md5 hex (incompressible-ish) in half the rows, timestamps and a small
# jsonb document. More compressible than `issue`, and dearer for the server to COPY out.
DOCS_TABLE = """
CREATE TABLE bench_docs (
    id bigint NOT NULL,
    created_at timestamptz NOT NULL,
    author text NOT NULL,
    title text NOT NULL,
    ref text,
    attrs jsonb NOT NULL
)"""
DOCS_INSERT = """
INSERT INTO bench_docs
SELECT g,
  timestamptz '2020-01-01' + g * interval '9 seconds' + random() * interval '1 hour',
  v.a[1 + (power(random(), 2) * (v.n - 1))::int],
  array_to_string(ARRAY(SELECT v.a[1 + (power(random(), 3) * (v.n - 1))::int]
                        FROM generate_series(1, 1 + g %% 4) WHERE g > 0), ' ')
    || CASE WHEN g %% 3 = 0 THEN ' ' || (random() * 10000)::int ELSE '' END,
  CASE WHEN random() < 0.5 THEN md5(g::text || random()::text) END,
  jsonb_build_object('s', (ARRAY['new', 'open', 'closed', 'archived'])[1 + g %% 4],
                     'n', (random() * 1000)::int)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) g,
     (SELECT %(words)s::text[] AS a, %(n)s::int AS n) v"""


def make_database(cluster: Cluster, dbname: str, scale: int, text_rows: int,
                  data: str) -> dict[str, Any]:
    """pgbench -i -s SCALE, plus bench_docs filled as the data profile `data` says."""
    if data not in DATA_PROFILES:
        raise BenchError(f"unknown data profile {data!r}; expected one of {DATA_PROFILES}")
    cluster.create_db(dbname)
    sample, _ = measured(lambda: run([cluster.tool("pgbench"), "-i", "-s", str(scale), "-q"],
                                     env=cluster.env(dbname), timeout=3600))
    log(f"  pgbench -i -s {scale}: {sample.wall:.1f}s")
    started = time.perf_counter()
    cluster.execute(ISSUE_TABLE if data == "issue" else DOCS_TABLE, dbname)
    if text_rows > 0:
        words = vocabulary() if data == "mixed" else []
        workers = max(1, min(4, os.cpu_count() or 1))
        bounds = [text_rows * i // workers for i in range(workers + 1)]
        errors: list[BaseException] = []

        def insert(part: int) -> None:
            params: dict[str, Any] = {"first": bounds[part] + 1, "last": bounds[part + 1]}
            if data == "mixed":
                params.update(words=words, n=len(words))
            try:
                with cluster.connect(dbname) as conn:
                    conn.execute("SELECT setseed(%s)", (0.42 + part / 100,))
                    conn.execute(ISSUE_INSERT if data == "issue" else DOCS_INSERT, params)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=insert, args=(p,)) for p in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
    cluster.execute("ALTER TABLE bench_docs ADD PRIMARY KEY (id)", dbname)
    cluster.execute("VACUUM ANALYZE bench_docs", dbname)
    log(f"  bench_docs ({text_rows:,} rows, {data} data): {time.perf_counter() - started:.1f}s")
    size = int(cluster.execute(f"SELECT pg_database_size('{dbname}')")[0][0])
    return {"size_bytes": size, "counts": cluster.counts(dbname)}


# --- S3 ------------------------------------------------------------------------------------------


class S3Base:
    """What the bench needs of S3: its keys all go under `root` in `bucket`."""

    emulated = True  # is there an emulator whose CPU the "cpu S3" column measures?
    label = "moto"
    bucket = BUCKET
    root = ""  # key prefix of everything this run writes ("" or "a/b/")
    region = "us-east-1"
    _client: Any = None

    def describe(self) -> str:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", region_name=self.region)
        return self._client

    def storage_url(self) -> str:
        """targets.yaml `storage:`, s3://BUCKET[/PREFIX] (the engine keys PREFIX/ID/ENV/...)."""
        return f"s3://{self.bucket}" + (f"/{self.root.rstrip('/')}" if self.root else "")

    def key(self, relative: str) -> str:
        return self.root + relative

    def objects(self, prefix: str) -> list[tuple[str, int]]:
        """(full key, size) under root + prefix."""
        found: list[tuple[str, int]] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.root + prefix):
            found.extend((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
        return sorted(found)

    def delete_prefix(self, prefix: str, keep: Sequence[str] = ()) -> None:
        for key, _size in self.objects(prefix):
            if key not in keep:
                self.client.delete_object(Bucket=self.bucket, Key=key)


class Moto(S3Base):
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._client: Any = None

    def describe(self) -> str:
        return f"moto S3 emulator in the bench process, s3://{BUCKET}"

    def start(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines
        self.server.start()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1",
                          AWS_ENDPOINT_URL=self.endpoint)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        self.client.create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.stop()


class RealS3(S3Base):
    """A real bucket (--s3-bucket): boto3's default credential chain and region, no endpoint
    override, and the environment left as it is (the db-backup children inherit it). Everything
    goes under a prefix that must be empty at the start, so everything under it at the end was
    written by this run: stop() deletes exactly that and aborts its multipart uploads."""

    emulated = False
    label = "S3"

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self.root = prefix.strip("/") + "/"
        self.region = ""
        self._client = None
        self.started = False

    def describe(self) -> str:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        inherited = f"; AWS_ENDPOINT_URL from the environment: {endpoint}" if endpoint else ""
        return (f"s3://{self.bucket}/{self.root} (boto3 default credentials and region, no "
                f"endpoint override{inherited}); cpu S3: n/a (no emulator to measure)")

    def uploads(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.root):
            found.extend((u["Key"], u["UploadId"]) for u in page.get("Uploads", []))
        return found

    def start(self) -> None:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        probe = boto3.client("s3", region_name=boto3.session.Session().region_name or "us-east-1")
        try:
            head = probe.head_bucket(Bucket=self.bucket)
            headers = head.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            self.region = (head.get("BucketRegion") or headers.get("x-amz-bucket-region")
                           or probe.meta.region_name)
            self._client = None
            present, pending = self.objects(""), self.uploads()
        except (BotoCoreError, ClientError) as exc:
            raise BenchError(f"cannot use s3://{self.bucket}/{self.root}: {exc}") from exc
        if present or pending:
            raise BenchError(f"s3://{self.bucket}/{self.root} is not empty ({len(present)} "
                             f"objects, {len(pending)} multipart uploads); the bench deletes "
                             "everything under its prefix at the end, so it needs an empty one: "
                             "choose another --s3-prefix")
        self.started = True

    def stop(self) -> None:
        """Delete what this run wrote (everything under the prefix) and abort its uploads."""
        if not self.started:
            return
        self.started = False
        where = f"s3://{self.bucket}/{self.root}"
        try:
            aborted = 0
            for key, upload_id in self.uploads():
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id)
                aborted += 1
            keys = [k for k, _size in self.objects("")]
            for start in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[start:start + 1000]]
                answer = self.client.delete_objects(Bucket=self.bucket,
                                                    Delete={"Objects": batch, "Quiet": True})
                if answer.get("Errors"):
                    error = answer["Errors"][0]
                    raise BenchError(f"{error.get('Key')}: {error.get('Code')} "
                                     f"{error.get('Message', '')}".strip())
            left, pending = self.objects(""), self.uploads()
        except Exception as exc:  # never hide the run's own error
            print(f"WARNING: cleaning up {where} failed: {exc}; delete it by hand",
                  file=sys.stderr, flush=True)
            return
        if left or pending:
            print(f"WARNING: {where} still holds {len(left)} objects and {len(pending)} "
                  "multipart uploads (written during the cleanup?); delete them by hand",
                  file=sys.stderr, flush=True)
        else:
            log(f"S3 cleanup: deleted {len(keys)} objects and aborted {aborted} multipart "
                f"uploads under {where}; nothing is left there")


def helper_upload(path: str, bucket: str, region: str, key: str) -> None:
    """The old system's upload: boto3 upload_file with its default transfer settings."""
    import boto3

    boto3.client("s3", region_name=region).upload_file(path, bucket, key)


def helper_download(bucket: str, region: str, key: str, path: str) -> None:
    import boto3

    boto3.client("s3", region_name=region).download_file(bucket, key, path)


# --- measurements --------------------------------------------------------------------------------


@dataclass
class Sample:
    """One timed run of a step."""

    wall: float
    cpu_tools: float  # CPU seconds of every child process reaped during the step (and theirs)
    cpu_s3: float  # CPU seconds of this process during the step: the in-process moto S3 server
    #                (with real S3, --s3-bucket, meaningless: reported as n/a)
    rss_kib: int | None = None  # peak RSS of the db-backup process (VmHWM), when it ran


def measured(action: Callable[[], Any]) -> tuple[Sample, Any]:
    """Wall time and CPU of a step. The PostgreSQL server's own CPU is not included."""
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = action()
    wall = time.perf_counter() - started
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s3 = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    cpu_tools = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    return Sample(wall, cpu_tools, cpu_s3), result


@dataclass
class Measure:
    name: str
    samples: list[Sample] = field(default_factory=list)
    size: int | None = None
    note: str = ""

    @property
    def times(self) -> list[float]:
        return [s.wall for s in self.samples]

    def pick(self, stat: str) -> Sample | None:
        """The reported run: the fastest (best) or the median one."""
        if not self.samples:
            return None
        ordered = sorted(self.samples, key=lambda s: s.wall)
        return ordered[0] if stat == "best" else ordered[(len(ordered) - 1) // 2]

    def value(self, stat: str) -> float:
        if not self.samples:
            return float("nan")
        return min(self.times) if stat == "best" else statistics.median(self.times)

    @property
    def rss_mb(self) -> float | None:
        peaks = [s.rss_kib for s in self.samples if s.rss_kib]
        return max(peaks) / 1024 if peaks else None

    def as_json(self, stat: str, s3_cpu: bool = True) -> dict[str, Any]:
        return {"name": self.name, "value": round(self.value(stat), 3), "size": self.size,
                "rss_mb": None if self.rss_mb is None else round(self.rss_mb, 1), "note": self.note,
                "samples": [{"wall": round(s.wall, 3), "cpu_tools": round(s.cpu_tools, 3),
                             "cpu_s3": round(s.cpu_s3, 3) if s3_cpu else None,
                             "rss_kib": s.rss_kib}
                            for s in self.samples]}


@dataclass
class Target:
    issue: str
    text: str
    value: float
    limit: float
    unit: str = "x"

    @property
    def ok(self) -> bool:
        return self.value <= self.limit if self.unit == "x" else self.value < self.limit

    def line(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        if self.unit == "x":
            return f"{verdict}  [{self.issue}] {self.text}: {self.value:.2f}x (<= {self.limit:.2f}x)"
        decimal = self.value * (1 << 20) / 1e6
        return (f"{verdict}  [{self.issue}] {self.text}: {self.value:.1f} MiB = {decimal:.1f} MB "
                f"(< {self.limit:.0f} MiB)")


def ident(scale: int, compression: str) -> str:
    return f"s{scale}-" + compression.replace(":", "")


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: Cluster, s3: S3Base, work: Path) -> None:
        self.args = args
        self.cluster = cluster
        self.s3 = s3
        self.work = work
        self.python = venv_python()
        self.targets_file = work / "targets.yaml"
        self.folder_targets_file = work / "targets-folder.yaml"
        self.results: dict[str, Any] = {"scales": {}}
        self.measures: dict[str, Measure] = {}
        self.cores = len(os.sched_getaffinity(0))
        self.pinned_skip = ""  # why the pinned-client restores were not measured, if they were not
        self.repeat = args.repeat
        self.default: str = args.default

    # -- plumbing --

    def _target_lines(self, scale: int, identifier: str, compression: str) -> list[str]:
        # The password is only ever an env: reference; its value reaches the child in the
        # environment (BENCH_PGPASSWORD, see db_backup_env), never in argv or this file.
        c = self.cluster
        password = '"env:BENCH_PGPASSWORD"' if c.password is not None else "null"
        return [
            f"  - identifier: {identifier}", f"    env: {ENV_NAME}", f"    compression: {compression}",
            "    database:", f"      host: {json.dumps(c.host)}", f"      port: {c.port}",
            f"      name: bench_s{scale}", f"      user: {json.dumps(c.user)}",
            f"      password: {password}",
            *([f"      sslmode: {json.dumps(c.sslmode)}"] if c.sslmode else []),
        ]

    def write_targets(self, scales: Sequence[int]) -> None:
        head = ["version: 1", "defaults:", "  storage: {storage}", f"  region: {self.s3.region}",
                "environments:", f"  {ENV_NAME}: {{}}", "targets:"]
        s3 = [line.replace("{storage}", self.s3.storage_url()) for line in head]
        folder = [line.replace("{storage}", f"file://{self.work / 'folder-store'}") for line in head]
        for scale in scales:
            for compression in self.args.compressions:
                s3 += self._target_lines(scale, ident(scale, compression), compression)
            s3 += self._target_lines(scale, ident(scale, "legacy"), "gzip:6")
            folder += self._target_lines(scale, ident(scale, self.default), self.default)
        self.targets_file.write_text("\n".join(s3) + "\n", encoding="utf-8")
        self.folder_targets_file.write_text("\n".join(folder) + "\n", encoding="utf-8")

    def db_backup_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GITHUB_", "PG")) and k != "DB_BACKUP_TARGETS"}
        # With moto, os.environ holds its endpoint and fake credentials (Moto.start); with real
        # S3 it is the caller's own environment, passed through untouched.
        env.update(DB_BACKUP_PG_BINDIR=str(self.cluster.bindir),
                   DB_BACKUP_TARGETS=str(self.targets_file))
        if self.cluster.password is not None:
            env["BENCH_PGPASSWORD"] = self.cluster.password
        env.update(extra or {})
        return env

    def db_backup(self, argv: list[str], extra_env: dict[str, str] | None = None,
                  pin: int | None = None) -> tuple[Sample, str]:
        """Run the CLI (console entry point, wrapped to report its own VmHWM).

        pin = a CPU to run it on (``taskset -c``): the CLI and every child it starts (download,
        zstd, pg_restore and its workers) inherit the affinity. taskset execs the interpreter, so
        VmHWM is still the db-backup process's own.
        """
        taskset = ["taskset", "-c", str(pin)] if pin is not None else []
        rss_file = self.work / f"rss-{uuid.uuid4().hex[:8]}"
        env = self.db_backup_env(extra_env)
        env["BENCH_RSS_FILE"] = str(rss_file)
        # cwd: `python -c` puts the working directory first on sys.path; outside the repo,
        # PYTHONPATH (e.g. a scratch copy of runner/) is honoured.
        sample, proc = measured(lambda: subprocess.run(
            [*taskset, self.python, "-c", RSS_WRAPPER, *argv], env=env, capture_output=True,
            text=True, timeout=3600, check=False, cwd=self.work))
        if proc.returncode != 0:
            raise BenchError(f"db-backup {shlex.join(argv)} exited {proc.returncode}:\n"
                             f"{tail(proc.stderr)}")
        sample.rss_kib = int(rss_file.read_text()) if rss_file.exists() else None
        rss_file.unlink(missing_ok=True)
        return sample, proc.stdout.strip()

    def helper(self, *argv: str) -> Sample:
        sample, _ = measured(lambda: run([self.python, str(Path(__file__).resolve()), *argv],
                                         env=self.db_backup_env(), timeout=3600))
        return sample

    def upload(self, path: Path, key: str) -> Sample:
        """The old way's upload_file of `path` to `key` (relative to the run's S3 prefix)."""
        return self.helper("_upload", str(path), self.s3.bucket, self.s3.region, self.s3.key(key))

    def download(self, key: str, path: Path) -> Sample:
        """download_file of a full key (as objects() and latest_key() return them)."""
        return self.helper("_download", self.s3.bucket, self.s3.region, key, str(path))

    def server_where(self, s3: bool = False) -> str:
        """Where the database server (and the S3 side) ran, for the pinned-restore notes."""
        server = "server external" if self.cluster.external else f"server on all {self.cores} cores"
        if not s3:
            return server
        if not self.s3.emulated:
            return f"{server}; real S3"
        if self.cluster.external:
            return f"server external; moto S3 on all {self.cores} cores"
        return f"server + S3 on all {self.cores} cores"

    def measure(self, key: str, name: str) -> Measure:
        self.measures[key] = self.measures.get(key) or Measure(name)
        return self.measures[key]

    def verify(self, dbname: str, expected: dict[str, int], what: str) -> None:
        got = self.cluster.counts(dbname)
        if got != expected:
            raise BenchError(f"{what}: restored database differs: {got} != {expected}")

    def dump_stages(self, compression: str) -> list[list[str]]:
        """What db-backup runs for a compression with this pg_dump (< 16: zstd is a pipe)."""
        pg_dump = [self.cluster.tool("pg_dump"), "--format=custom", "--no-password"]
        method, _, level = compression.partition(":")
        if method == "zstd":
            return [[*pg_dump, "--compress=0"], ["zstd", f"-{level}", "-T0", "-q", "-c"]]
        return [[*pg_dump, f"--compress={level or 0}"]]

    # -- backups --

    def old_way(self, scale: int, dbname: str) -> Path:
        """pg_dump -Fc (default compression: gzip level 6) to a file, then upload_file."""
        path = self.work / f"old-s{scale}.dump"
        dump = self.measure(f"s{scale}/old/dump", "old: pg_dump -Fc (gzip:6) -f FILE")
        upload = self.measure(f"s{scale}/old/upload", "old: boto3 upload_file(FILE)")
        total = self.measure(f"s{scale}/old", "old way: pg_dump -Fc to file + upload_file")
        for attempt in range(self.repeat):
            path.unlink(missing_ok=True)
            self.cluster.settle()
            d, _ = measured(lambda: run([self.cluster.tool("pg_dump"), "-Fc", "-f", str(path)],
                                        env=self.cluster.env(dbname)))
            u = self.upload(path, f"old-way/s{scale}/{attempt}.dump")
            dump.samples.append(d)
            upload.samples.append(u)
            total.samples.append(Sample(d.wall + u.wall, d.cpu_tools + u.cpu_tools,
                                        d.cpu_s3 + u.cpu_s3))
            self.s3.delete_prefix(f"old-way/s{scale}/")
            log(f"  old way: dump {d.wall:.1f}s + upload {u.wall:.1f}s = {d.wall + u.wall:.1f}s")
        total.size = dump.size = path.stat().st_size
        return path

    def backup(self, scale: int, compression: str, repeat: int) -> Measure:
        target = ident(scale, compression)
        m = self.measure(f"s{scale}/backup/{compression}", f"db-backup backup ({compression})")
        for _ in range(repeat):
            self.cluster.settle()
            sample, _out = self.db_backup(["backup", target, ENV_NAME])
            m.samples.append(sample)
            dumps = [(k, s) for k, s in self.s3.objects(f"{target}/") if k.endswith(".dump")]
            m.size = dumps[-1][1]
            # keep only the newest backup (and its manifest) in the in-memory S3
            self.s3.delete_prefix(f"{target}/", keep=[dumps[-1][0], dumps[-1][0] + ".json"])
            log(f"  db-backup {compression}: {sample.wall:.1f}s, {mib(m.size)}, "
                f"rss {(sample.rss_kib or 0) / 1024:.0f} MB, cpu tools {sample.cpu_tools:.1f}s "
                f"s3 {f'{sample.cpu_s3:.1f}s' if self.s3.emulated else 'n/a'}")
        return m

    def backup_to_folder(self, scale: int) -> None:
        """The default backup into a local folder: the engine without the S3 emulator."""
        m = self.measure(f"s{scale}/backup-folder/{self.default}",
                         f"db-backup backup ({self.default}) to a local folder")
        store = self.work / "folder-store"
        for _ in range(self.repeat):
            shutil.rmtree(store, ignore_errors=True)
            self.cluster.settle()
            sample, _out = self.db_backup(["--targets", str(self.folder_targets_file), "backup",
                                           ident(scale, self.default), ENV_NAME])
            m.samples.append(sample)
            m.size = sum(p.stat().st_size for p in store.rglob("*.dump"))
            log(f"  db-backup {self.default} to a folder: {sample.wall:.1f}s")
        shutil.rmtree(store, ignore_errors=True)

    def startup(self, scale: int) -> None:
        """Fixed cost of starting the CLI: interpreter, imports, targets.yaml (`db-backup targets`)."""
        m = self.measure(f"s{scale}/startup", "db-backup targets (start-up cost)")
        for _ in range(self.repeat):
            sample, _out = self.db_backup(["targets"])
            m.samples.append(sample)

    def latest_key(self, scale: int, compression: str) -> str:
        dumps = [k for k, _ in self.s3.objects(f"{ident(scale, compression)}/")
                 if k.endswith(".dump")]
        return dumps[-1]

    def floor(self, scale: int, dbname: str, compression: str) -> None:
        stages = self.dump_stages(compression)
        tools = " | ".join(s[0].rsplit("/", 1)[-1] for s in stages)
        dump = self.measure(f"s{scale}/floor-dump/{compression}",
                            f"floor: {tools} ({compression}) > /dev/null")
        upload = self.measure(f"s{scale}/floor-upload/{compression}",
                              f"floor: upload_file of the finished {compression} dump")
        local = self.work / f"floor-s{scale}.dump"
        self.download(self.latest_key(scale, compression), local)
        for attempt in range(self.repeat):
            self.cluster.settle()
            with open(os.devnull, "wb") as sink:
                d, _ = measured(lambda sink=sink: run_pipeline(stages, self.cluster.env(dbname),
                                                               sink))
            dump.samples.append(d)
            self.cluster.settle()
            u = self.upload(local, f"floor/s{scale}/{attempt}.dump")
            upload.samples.append(u)
            self.s3.delete_prefix(f"floor/s{scale}/")
            log(f"  floor {compression}: dump to /dev/null {d.wall:.1f}s, upload {u.wall:.1f}s")
        dump.size = upload.size = local.stat().st_size
        local.unlink(missing_ok=True)

    # -- restores --

    def restore_cli(self, scale: int, compression: str, mode: str, expected: dict[str, int],
                    key: str, label: str, repeat: int, pin: int | None = None) -> Measure:
        m = self.measure(key, label)
        dest = f"restored_s{scale}"
        url = self.cluster.url(dest)  # no password in it: PGPASSWORD in the child's environment
        extra = {"DB_BACKUP_RESTORE_MODE": mode}
        if self.cluster.password is not None:
            extra["PGPASSWORD"] = self.cluster.password
        for _ in range(repeat):
            self.cluster.drop_db(dest)
            self.cluster.settle()
            sample, out = self.db_backup(
                ["restore", ident(scale, compression), "--from", ENV_NAME, "--to-url", url], extra,
                pin=pin)
            m.samples.append(sample)
            # "... (125.7 MB, 9.6s, parallel -j2, sha256 verified)": the mode it chose
            details = out.rsplit("(", 1)[-1].split(",")
            m.note = details[2].strip() if len(details) > 2 else ""
            self.verify(dest, expected, label)
            self.cluster.drop_db(dest)
            log(f"  {label}: {sample.wall:.1f}s ({m.note}), rss "
                f"{(sample.rss_kib or 0) / 1024:.0f} MB")
        return m

    def restore_plain(self, key: str, label: str, dbname: str, expected: dict[str, int],
                      stages_for: Callable[[str], list[list[str]]], source: Path | None = None
                      ) -> Measure:
        """CREATE DATABASE + a pg_restore pipeline, timed together (like db-backup's restore)."""
        m = self.measure(key, label)
        for _ in range(self.repeat):
            self.cluster.drop_db(dbname)
            self.cluster.settle()

            def go() -> None:
                self.cluster.create_db(dbname)
                with contextlib.ExitStack() as stack:
                    src = stack.enter_context(open(source, "rb")) if source else subprocess.DEVNULL
                    run_pipeline(stages_for(dbname), self.cluster.env(dbname), subprocess.DEVNULL,
                                 source=src)

            sample, _ = measured(go)
            m.samples.append(sample)
            self.verify(dbname, expected, label)
            self.cluster.drop_db(dbname)
            log(f"  {label}: {sample.wall:.1f}s")
        return m

    def pg_restore(self, *extra: str, pin: int | None = None) -> Callable[[str], list[list[str]]]:
        """pg_restore as a one-stage pipeline; pin = a CPU to run it (and its workers) on."""
        taskset = ["taskset", "-c", str(pin)] if pin is not None else []

        def stages(dbname: str) -> list[list[str]]:
            return [[*taskset, self.cluster.tool("pg_restore"), "--no-password",
                     "--exit-on-error", f"--dbname={dbname}", *extra]]
        return stages

    def restore_pinned(self, scale: int, dbname: str, expected: dict[str, int],
                       seek: Path) -> None:
        """Restores with the client on one core, the server not.

        pg_restore -j1 and -j2 of the -f file, then db-backup's own restore of the default backup
        in stream and parallel mode. The production case: a 1-vCPU task restoring into a
        multi-core database server. taskset pins pg_restore (or the db-backup CLI), and every
        child and forked worker inherits the affinity; the PostgreSQL server and the in-process
        moto S3 server were started by this (unpinned) process, so they may use every core. The
        engine counts the cores it may run on, so its parallel mode still runs its minimum of
        pg_restore -j2 on the one core.
        """
        if not shutil.which("taskset"):
            self.pinned_skip = "taskset (util-linux) is not installed"
        elif self.cores < 2:
            self.pinned_skip = "this machine gives the benchmark only 1 core"
        if self.pinned_skip:
            log(f"  client pinned to 1 core: skipped: {self.pinned_skip}")
            self.results["scales"][str(scale)]["pinned_restore_skipped"] = self.pinned_skip
            return
        cpu = min(os.sched_getaffinity(0))  # CPU 0 unless a cpuset excludes it
        for jobs in (1, 2):
            m = self.restore_plain(f"s{scale}/restore/pinned-j{jobs}",
                                   f"client pinned to 1 core: pg_restore -j{jobs} of the -f file",
                                   dbname, expected,
                                   self.pg_restore(f"--jobs={jobs}", str(seek), pin=cpu))
            m.note = f"taskset -c {cpu}; {self.server_where()}"
        default = self.default
        for mode in ("stream", "parallel"):
            m = self.restore_cli(scale, default, mode, expected, f"s{scale}/restore/pinned-{mode}",
                                 f"db-backup restore {default} ({mode}), client pinned to 1 core",
                                 self.repeat, pin=cpu)
            # m.note is what db-backup reported ("stream", "parallel -j2")
            m.note = f"{m.note}; taskset -c {cpu}; {self.server_where(s3=True)}"

    # -- a whole scale --

    def scale(self, scale: int, full: bool) -> None:
        dbname = f"bench_s{scale}"
        log(f"scale {scale}: building {dbname} (pgbench -s {scale} + {self.args.text_rows:,} "
            f"text rows, --data {self.args.data})")
        info = make_database(self.cluster, dbname, scale, self.args.text_rows, self.args.data)
        expected = info["counts"]
        log(f"  database size {mib(info['size_bytes'])}, rows {expected}")
        self.results["scales"][str(scale)] = {"database": info, "full": full}
        # Warm-up (untimed), so every measurement sees the same warm page cache.
        raw = self.work / "raw-size.dump"
        run([self.cluster.tool("pg_dump"), "-Fc", "-Z0", "-f", str(raw)],
            env=self.cluster.env(dbname))
        info["raw_dump_bytes"] = raw.stat().st_size
        raw.unlink()
        log(f"  uncompressed custom dump: {mib(info['raw_dump_bytes'])}")
        default = self.default
        if full:
            self.startup(scale)
            old_dump = self.old_way(scale, dbname)
            for compression in self.args.compressions:
                self.backup(scale, compression, self.repeat)
                if compression in self.args.floors:
                    self.floor(scale, dbname, compression)
                if compression != default:
                    self.s3.delete_prefix(f"{ident(scale, compression)}/")
            self.backup_to_folder(scale)
            if not self.args.skip_restores:
                self.restores_full(scale, expected, old_dump)
            old_dump.unlink(missing_ok=True)
        else:
            # Other sizes: peak RSS of every command, and the two restore modes (one run each).
            for compression in (default, "none"):
                self.backup(scale, compression, 1)
            self.s3.delete_prefix(f"{ident(scale, 'none')}/")
            for mode in () if self.args.skip_restores else ("stream", "parallel", "auto"):
                self.restore_cli(scale, default, mode, expected, f"s{scale}/restore/{mode}",
                                 f"db-backup restore {default} ({mode})", self.args.repeat_other)
        self.s3.delete_prefix(f"{ident(scale, default)}/")
        self.cluster.drop_db(dbname)

    def restores_full(self, scale: int, expected: dict[str, int], old_dump: Path) -> None:
        default = self.default
        scratch = f"plain_s{scale}"
        self.restore_plain(f"s{scale}/restore/old-j1", "pg_restore -j1 of the old dump (gzip:6)",
                           scratch, expected, self.pg_restore("--jobs=1", str(old_dump)))
        for mode in ("stream", "parallel", "auto"):
            self.restore_cli(scale, default, mode, expected, f"s{scale}/restore/{mode}",
                             f"db-backup restore {default} ({mode})", self.repeat)
        # The same (pipe-written) zstd:1 dump restored by plain tools.
        zst = self.work / f"pipe-s{scale}.dump.zst"
        raw = self.work / f"pipe-s{scale}.dump"
        self.download(self.latest_key(scale, default), zst)
        self.restore_plain(f"s{scale}/restore/plain-stream",
                           f"zstd -dc | pg_restore (same {default} dump)", scratch, expected,
                           lambda db: [["zstd", "-d", "-q", "-c"], *self.pg_restore()(db)],
                           source=zst)
        dec = self.measure(f"s{scale}/decompress", f"zstd -d of the {default} dump to a file")
        for _ in range(self.repeat):
            raw.unlink(missing_ok=True)
            self.cluster.settle()
            sample, _ = measured(lambda: run(["zstd", "-d", "-q", "-f", str(zst), "-o", str(raw)]))
            dec.samples.append(sample)
        dec.size = raw.stat().st_size
        label = "pg_restore -j2 of that decompressed file (no data offsets)"
        j2 = self.measure(f"s{scale}/restore/pipe-j2", label)
        try:
            self.restore_plain(f"s{scale}/restore/pipe-j2", label, scratch, expected,
                               self.pg_restore("--jobs=2", str(raw)))
            j2.note = "works: exit 0, same rows"
        except BenchError as exc:
            j2.note = f"FAILS: {str(exc).splitlines()[-1]}"
            log(f"  pg_restore -j2 of the pipe-written archive failed: {exc}")
        raw.unlink(missing_ok=True)
        zst.unlink(missing_ok=True)
        # Floors: the same data as a seekable, uncompressed archive with data offsets.
        seek = self.work / f"seek-s{scale}.dump"
        run([self.cluster.tool("pg_dump"), "-Fc", "-Z0", "-f", str(seek)],
            env=self.cluster.env(f"bench_s{scale}"))
        self.restore_plain(f"s{scale}/restore/seek-j1",
                           "restore floor: pg_restore -j1 of a -Z0 dump file (no decompression)",
                           scratch, expected, self.pg_restore("--jobs=1", str(seek)))
        self.restore_plain(f"s{scale}/restore/seek-j2",
                           "pg_restore -j2 of a -Z0 dump file written with -f (has offsets)",
                           scratch, expected, self.pg_restore("--jobs=2", str(seek)))
        self.restore_pinned(scale, scratch, expected, seek)
        seek.unlink(missing_ok=True)
        if not self.args.skip_legacy:
            # The old dump, stored the old way (no manifest), restored through db-backup.
            legacy = ident(scale, "legacy")
            self.upload(old_dump, f"{legacy}/{ENV_NAME}/2020-01-01_00-00-00.dump")
            self.restore_cli(scale, "legacy", "auto", expected, f"s{scale}/restore/legacy",
                             "db-backup restore of the old dump (legacy, auto)", self.repeat)
            self.s3.delete_prefix(f"{legacy}/")


# --- report --------------------------------------------------------------------------------------


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for index, row in enumerate([header, *rows]):
        cells = [c.ljust(w) if i == 0 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and b == b and a == a else "-"


def fmt_t(m: Measure | None, stat: str) -> str:
    if m is None or not m.samples:
        return "-"
    shown = f"{m.value(stat):.2f}"
    if len(m.samples) > 1:
        shown += " [" + " ".join(f"{t:.1f}" for t in m.times) + "]"
    return shown


def fmt_cpu(m: Measure | None, stat: str, which: str) -> str:
    sample = m.pick(stat) if m else None
    return f"{getattr(sample, which):.1f}" if sample else "-"


def fmt_rss(m: Measure | None) -> str:
    return f"{m.rss_mb:.1f}" if m and m.rss_mb else "-"


def floor_of(ms: dict[str, Measure], p: str, compression: str, stat: str) -> float:
    fd = ms.get(f"{p}/floor-dump/{compression}")
    fu = ms.get(f"{p}/floor-upload/{compression}")
    return max(fd.value(stat), fu.value(stat)) if fd and fu else float("nan")


def report(bench: Bench, scales: list[int]) -> list[Target]:
    stat = bench.args.stat
    ms = bench.measures
    default = bench.default
    p = f"s{scales[0]}"
    print("\n" + "=" * 100)
    for scale in scales:
        info = bench.results["scales"][str(scale)]["database"]
        print(f"scale {scale} ({bench.args.data} data): database {mib(info['size_bytes'])} "
              f"(uncompressed custom dump {mib(info['raw_dump_bytes'])}); rows: "
              + ", ".join(f"{k} {v:,}" for k, v in info["counts"].items()))
    s3_text = ("cpu S3 = CPU s of the moto S3 emulator (same 2 cores)" if bench.s3.emulated
               else "cpu S3 = n/a (real S3: no emulator to measure)")
    server_text = ("the PostgreSQL server's CPU is in neither" if not bench.cluster.external
                   else "the PostgreSQL server's CPU (external server) is in neither")
    print(f"Times in seconds: the {stat} of {bench.repeat} run(s) at scale {scales[0]}, all runs in "
          f"[brackets]; other scales: backups once, restores {bench.args.repeat_other}x.\nSizes in MiB. cpu tools = CPU s of the command and "
          f"its children (pg_dump, zstd, ...); {s3_text};\n{server_text}. RSS = peak (VmHWM) "
          "of the db-backup process itself, in MiB.")

    def cpu_s3(m: Measure | None) -> str:
        return fmt_cpu(m, stat, "cpu_s3") if bench.s3.emulated else "n/a"

    old = ms[f"{p}/old"]
    old_t, old_size = old.value(stat), old.size or 0
    print(f"\nBACKUP at scale {scales[0]}: old way = pg_dump -Fc (gzip:6) to a file "
          f"{fmt_t(ms[p + '/old/dump'], stat)}s + upload_file {fmt_t(ms[p + '/old/upload'], stat)}s")
    rows = [["old way (gzip:6, file + upload_file)", fmt_t(old, stat), "1.00x", mib(old_size),
             "1.00x", "-", "-", fmt_cpu(old, stat, "cpu_tools"), cpu_s3(old), "-"]]
    for compression in bench.args.compressions:
        m = ms.get(f"{p}/backup/{compression}")
        if m is None:
            continue
        floor = floor_of(ms, p, compression, stat)
        label = f"db-backup {compression}" + (" (default)" if compression == default else "")
        rows.append([label, fmt_t(m, stat), ratio(m.value(stat), old_t), mib(m.size or 0),
                     ratio(m.size or 0, old_size), f"{floor:.2f}" if floor == floor else "-",
                     ratio(m.value(stat), floor), fmt_cpu(m, stat, "cpu_tools"),
                     cpu_s3(m), fmt_rss(m)])
    print(table(rows, ["backup", "time", "t/old", "size", "size/old", "floor", "t/floor",
                       "cpu tools", "cpu S3", "RSS"]))
    print("  floor = max(pipeline > /dev/null, upload_file of the finished dump), measured for: "
          + ", ".join(bench.args.floors))

    print(f"\nWHERE THE DEFAULT ({default}) BACKUP'S TIME GOES at scale {scales[0]}")
    parts = [
        (f"{p}/startup", "db-backup start-up (`db-backup targets`: interpreter, imports)"),
        (f"{p}/floor-dump/{default}", f"floor 1: {ms[f'{p}/floor-dump/{default}'].name[7:]}"
         if f"{p}/floor-dump/{default}" in ms else ""),
        (f"{p}/floor-upload/{default}",
         f"floor 2: upload_file of the finished dump to {bench.s3.label}"),
        (f"{p}/backup-folder/{default}", "db-backup to a local folder (no S3 "
         + ("emulator)" if bench.s3.emulated else "upload)")),
        (f"{p}/backup/{default}", "db-backup to S3" + (" (moto)" if bench.s3.emulated else "")),
    ]
    floor = floor_of(ms, p, default, stat)
    drows = [[label, fmt_t(ms.get(k), stat), ratio(ms[k].value(stat), floor) if k in ms else "-",
              fmt_cpu(ms.get(k), stat, "cpu_tools"), cpu_s3(ms.get(k))]
             for k, label in parts if k in ms]
    print(table(drows, ["step", "time", "t/floor", "cpu tools", "cpu S3"]))

    restore_report(bench, scales)
    rss_report(bench, scales)
    return check_targets(bench, scales, floor)


def restore_report(bench: Bench, scales: list[int]) -> None:
    stat = bench.args.stat
    ms = bench.measures
    p = f"s{scales[0]}"
    if f"{p}/restore/old-j1" not in ms:
        return
    print(f"\nRESTORE at scale {scales[0]} (each into a fresh database, CREATE DATABASE included; "
          "rows checked after each)")
    old_r = ms[f"{p}/restore/old-j1"].value(stat)
    plain_stream = ms.get(f"{p}/restore/plain-stream")
    dec = ms.get(f"{p}/decompress")
    j2 = ms.get(f"{p}/restore/pipe-j2")
    plain_parallel = dec.value(stat) + j2.value(stat) if dec and j2 and j2.samples else float("nan")
    rrows = []
    for key in ("old-j1", "stream", "parallel", "auto", "legacy", "plain-stream", "pipe-j2",
                "seek-j1", "seek-j2", "pinned-j1", "pinned-j2", "pinned-stream",
                "pinned-parallel"):
        m = ms.get(f"{p}/restore/{key}")
        if m is None or not m.samples:
            continue
        same = {"stream": plain_stream.value(stat) if plain_stream else float("nan"),
                "parallel": plain_parallel, "legacy": old_r}.get(key, float("nan"))
        rrows.append([m.name, fmt_t(m, stat), ratio(m.value(stat), old_r),
                      ratio(m.value(stat), same), fmt_cpu(m, stat, "cpu_tools"), fmt_rss(m),
                      m.note])
    if dec:
        rrows.append([dec.name, fmt_t(dec, stat), "-", "-", fmt_cpu(dec, stat, "cpu_tools"), "-",
                      f"{mib(dec.size or 0)} file"])
    print(table(rrows, ["restore", "time", "t/old -j1", "t/plain", "cpu tools", "RSS", "note"]))
    print("  t/plain = db-backup vs plain tools on the same dump: stream vs `zstd -dc | pg_restore`;"
          " parallel vs `zstd -d` + `pg_restore -j2`;\n  legacy vs `pg_restore -j1` of the same "
          "file. note = the mode db-backup used (auto applies the engine's own rule)")


def rss_report(bench: Bench, scales: list[int]) -> None:
    stat = bench.args.stat
    ms = bench.measures
    default = bench.default
    print("\nPEAK RSS of the db-backup process (VmHWM, MiB)")
    rss_rows = []
    for scale in scales:
        for key, m in ms.items():
            if key.startswith(f"s{scale}/") and m.rss_mb:
                rss_rows.append([f"scale {scale}", m.name, fmt_t(m, stat), fmt_rss(m)])
    print(table(rss_rows, ["scale", "command", "time", "peak RSS"]))

    mode_rows = []
    for scale in scales:
        s = ms.get(f"s{scale}/restore/stream")
        par = ms.get(f"s{scale}/restore/parallel")
        auto = ms.get(f"s{scale}/restore/auto")
        b = ms.get(f"s{scale}/backup/{default}")
        raw = bench.results["scales"][str(scale)]["database"]["raw_dump_bytes"]
        if s and par and b:
            mode_rows.append([f"scale {scale}", mib(b.size or 0), mib(raw), fmt_t(s, stat),
                              fmt_t(par, stat), ratio(par.value(stat), s.value(stat)),
                              fmt_t(auto, stat), auto.note if auto else "-"])
    if mode_rows:
        print(f"\nRESTORE MODES across sizes (db-backup, {default} backups)")
        print(table(mode_rows, ["scale", "stored", "uncompressed", "stream", "parallel -j",
                                "par/stream", "auto", "auto picked"]))


def check_targets(bench: Bench, scales: list[int], floor: float) -> list[Target]:
    stat = bench.args.stat
    ms = bench.measures
    default = bench.default
    p = f"s{scales[0]}"
    old = ms[f"{p}/old"]
    old_t, old_size = old.value(stat), old.size or 0
    new = ms[f"{p}/backup/{default}"]
    new_t = new.value(stat)
    targets = [Target("issue 2", f"default ({default}) backup time vs old way", new_t / old_t, 0.85)]
    if floor == floor:
        targets.append(Target("issue 2", f"default backup time vs pipeline floor ({floor:.2f}s)",
                              new_t / floor, 1.15))
    targets.append(Target("issue 6", f"default ({default}) backup time vs old way", new_t / old_t,
                          0.25))
    targets.append(Target("issue 6", f"default ({default}) backup size vs old way",
                          (new.size or 0) / old_size, 1.0))
    old_r = ms[f"{p}/restore/old-j1"].value(stat) if f"{p}/restore/old-j1" in ms else 0.0
    for mode in ("stream", "parallel", "auto"):
        m = ms.get(f"{p}/restore/{mode}")
        if m and m.samples and old_r:
            picked = f" = {m.note}" if mode == "auto" else ""
            targets.append(Target("issue 6", f"restore of a default backup ({mode}{picked}) vs "
                                  "pg_restore -j1 of the old dump", m.value(stat) / old_r, 0.8))
    for scale in scales:
        peaks = [m.rss_mb for k, m in ms.items() if k.startswith(f"s{scale}/") and m.rss_mb]
        db_mb = bench.results["scales"][str(scale)]["database"]["size_bytes"] / (1 << 20)
        if peaks:
            targets.append(Target("issues 2+6", f"peak RSS of db-backup, all commands, scale {scale} "
                                  f"({db_mb:,.0f} MiB database)", max(peaks), RSS_LIMIT_MB,
                                  unit="MB"))
    print("\nTARGETS")
    for t in targets:
        print(t.line())
    recommend(bench, scales)
    return targets


def recommend(bench: Bench, scales: list[int]) -> None:
    stat = bench.args.stat
    ms = bench.measures
    p = f"s{scales[0]}"
    j2, dec = ms.get(f"{p}/restore/pipe-j2"), ms.get(f"{p}/decompress")
    ps, seek = ms.get(f"{p}/restore/plain-stream"), ms.get(f"{p}/restore/seek-j2")
    if j2 and dec and ps:
        print("\nPG_RESTORE -j2 ON A PIPE-WRITTEN ARCHIVE (pg_dump -Fc -Z0 | zstd: no data offsets)")
        if j2.samples:
            total = dec.value(stat) + j2.value(stat)
            print(f"  {j2.note}. zstd -d to a file {dec.value(stat):.2f}s + pg_restore -j2 "
                  f"{j2.value(stat):.2f}s = {total:.2f}s, versus streaming "
                  f"(zstd -dc | pg_restore) {ps.value(stat):.2f}s: {ratio(total, ps.value(stat))}")
            if seek and seek.samples:
                print(f"  the same data with data offsets (pg_dump -f FILE): pg_restore -j2 "
                      f"{seek.value(stat):.2f}s; missing offsets cost "
                      f"{ratio(j2.value(stat), seek.value(stat))}")
        else:
            print(f"  {j2.note}")
        pin1, pin2 = ms.get(f"{p}/restore/pinned-j1"), ms.get(f"{p}/restore/pinned-j2")
        seek1 = ms.get(f"{p}/restore/seek-j1")
        if pin1 and pin2 and pin1.samples and pin2.samples:
            free = (f" (client unpinned: -j2 {seek.value(stat):.2f}s vs -j1 "
                    f"{seek1.value(stat):.2f}s = {ratio(seek.value(stat), seek1.value(stat))})"
                    if seek and seek1 and seek.samples and seek1.samples else "")
            server = ("server external" if bench.cluster.external
                      else f"server free on all {bench.cores} cores")
            print(f"  client on 1 core ({server}): pg_restore -j2 "
                  f"{pin2.value(stat):.2f}s vs -j1 {pin1.value(stat):.2f}s = "
                  f"{ratio(pin2.value(stat), pin1.value(stat))}{free}")
        ds, dp = ms.get(f"{p}/restore/pinned-stream"), ms.get(f"{p}/restore/pinned-parallel")
        us, up = ms.get(f"{p}/restore/stream"), ms.get(f"{p}/restore/parallel")
        if ds and dp and ds.samples and dp.samples:
            free = (f" (client unpinned: parallel {up.value(stat):.2f}s vs stream "
                    f"{us.value(stat):.2f}s = {ratio(up.value(stat), us.value(stat))})"
                    if us and up and us.samples and up.samples else "")
            used = dp.note.split(";")[0].strip() or "parallel"  # e.g. "parallel -j2"
            print(f"  db-backup on 1 core: {used} {dp.value(stat):.2f}s vs stream "
                  f"{ds.value(stat):.2f}s = {ratio(dp.value(stat), ds.value(stat))}{free}")
        if bench.pinned_skip:
            print(f"  client on 1 core: not measured: {bench.pinned_skip}")
    rows = []
    auto_picks: dict[int, str] = {}
    for scale in scales:
        s, par = ms.get(f"s{scale}/restore/stream"), ms.get(f"s{scale}/restore/parallel")
        b = ms.get(f"s{scale}/backup/{bench.default}")
        if s and par and b and s.samples and par.samples:
            rows.append((scale, b.size or 0, s.value(stat), par.value(stat)))
            auto = ms.get(f"s{scale}/restore/auto")
            if auto and auto.samples:
                auto_picks[scale] = auto.note
    if rows:
        print("\nRESTORE MODE DATA (db-backup, both modes, same backup)")
    for scale, size, st, pa in rows:
        faster = "parallel" if pa < st else "stream"
        raw = bench.results["scales"][str(scale)]["database"]["raw_dump_bytes"]
        print(f"  scale {scale}: {mib(size)} stored, {mib(raw)} uncompressed: stream {st:.2f}s, "
              f"parallel -j{bench.cores} {pa:.2f}s: {faster} faster by "
              f"{abs(st - pa) / max(st, pa):.0%}; auto picked {auto_picks.get(scale, '-')}")
    if rows:
        wins = [pa < st * 0.95 for _scale, _size, st, pa in rows]
        losses = [pa > st * 1.05 for _scale, _size, st, pa in rows]
        if all(wins):
            verdict = "parallel is >5% faster at every measured size: keep auto"
        elif any(losses):
            verdict = "parallel is >5% slower somewhere: prefer stream at those sizes"
        else:
            verdict = "within +-5% at every measured size: the mode hardly matters here"
        where = ("external database server" if bench.cluster.external
                 else "database server on the same cores")
        print(f"  {verdict} ({bench.cores} cores, {where}).")


# --- main ----------------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / (1 << 20):.0f} GB RAM"
    cores = len(os.sched_getaffinity(0))
    return f"{cores} cores ({cpu}){mem}, {platform.system()} {platform.release()}"


def versions(bindir: Path) -> str:
    out = []
    for argv in ([str(bindir / "pg_dump"), "--version"], ["zstd", "--version"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out.append(subprocess.run(argv, capture_output=True, text=True, check=False,
                                      timeout=30).stdout.strip().strip("*").strip())
    with contextlib.suppress(Exception):
        import boto3
        import moto

        out.append(f"boto3 {boto3.__version__}, moto {moto.__version__}, "
                   f"Python {platform.python_version()}")
    return "; ".join(out)


def engine_default_compression() -> str:
    """The compression a target gets when targets.yaml names none, asked from the engine."""
    code = ("from runner.compression import parse_compression\n"
            "from runner.targets import DefaultsModel\n"
            "print(parse_compression(DefaultsModel.model_fields['compression'].default))")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([venv_python(), "-c", code], capture_output=True, text=True,
                             check=False, timeout=60, cwd=tempfile.gettempdir()).stdout.strip()
        if out:
            return out
    return FALLBACK_DEFAULT


def runner_location() -> str:
    """Where the db-backup children import `runner` from (PYTHONPATH can point elsewhere)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([venv_python(), "-c", "import runner; print(runner.__file__)"],
                             capture_output=True, text=True, check=False, timeout=60,
                             cwd=tempfile.gettempdir()).stdout
        return str(Path(out.strip()).parent) if out.strip() else "unknown"
    return "unknown"


def git_head() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "runner"],
                               capture_output=True, text=True, check=False,
                               timeout=10).stdout.strip()
        return head + (" + uncommitted runner/ changes" if dirty else "")
    return "unknown"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="db-backup versus the old system's way: backup, restore, peak RSS "
                    "(issues 2 and 6). See bench/README.md.")
    parser.add_argument("--scales", default="20", help="pgbench scales, comma-separated. The first "
                        "gets the full benchmark; the others show peak RSS and the "
                        "restore modes at another size. Default 20; e.g. 20,60")
    parser.add_argument("--scale", type=int, help="shorthand for --scales N")
    parser.add_argument("--text-rows", type=int, default=3_000_000,
                        help="rows of text (bench_docs, see --data) at every scale; default "
                             "3,000,000, as in the issue's reference table")
    parser.add_argument("--data", choices=DATA_PROFILES, default=DATA_PROFILES[0],
                        help="how bench_docs is filled: 'issue' (default) = id + 128 random hex "
                             "characters per row, the data of the issue's reference table "
                             "(pgbench scale 20 + 3 M rows of random text); 'mixed' = words, "
                             "timestamptz, jsonb and md5 in half the rows: more compressible, "
                             "dearer for the server to COPY")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each timed step at the first scale (default 1)")
    parser.add_argument("--repeat-other", type=int, default=1,
                        help="runs of each restore mode at the other scales (default 1; backups "
                             "there run once, for peak RSS)")
    parser.add_argument("--stat", choices=("best", "median"), default="best",
                        help="which of the repeated runs is reported (default best)")
    parser.add_argument("--compressions", default=",".join(COMPRESSIONS),
                        help=f"db-backup compressions to measure (default {','.join(COMPRESSIONS)})")
    parser.add_argument("--floors", default="default",
                        help="compressions whose pipeline floor is measured: a list, 'default' "
                             "(the engine's default compression) or 'all'; default: default")
    parser.add_argument("--skip-restores", action="store_true",
                        help="backups (and their peak RSS) only; no restore measurements")
    parser.add_argument("--skip-legacy", action="store_true",
                        help="skip restoring the old dump through db-backup")
    parser.add_argument("--pg-bindir", help="PostgreSQL bin directory (default: the newest "
                        "/usr/lib/postgresql/*/bin; with --pg-url client tools suffice, and "
                        "PATH is used if none are there)")
    parser.add_argument("--pg-url", help="use this existing server (e.g. RDS) instead of starting "
                        "a cluster: postgresql://USER@HOST:PORT/DBNAME[?sslmode=require]. The "
                        "password comes from PGPASSWORD or ~/.pgpass, never the URL. The user "
                        "needs CREATEDB; the bench creates bench_sN, restored_sN and plain_sN "
                        "and drops them at the end")
    parser.add_argument("--s3-bucket", help="use this real S3 bucket (boto3's default "
                        "credentials and region, no endpoint override) instead of moto")
    parser.add_argument("--s3-prefix", help="with --s3-bucket: key prefix for everything the "
                        f"bench writes; must be empty; default {S3_PREFIX_ROOT}/<run-id>/. "
                        "Deleted at the end")
    parser.add_argument("--workdir", help="where dump files go (default: a new temp dir)")
    parser.add_argument("--json", dest="json_out", help="also write every number to this file")
    args = parser.parse_args(argv)
    args.scales = [args.scale] if args.scale else [int(s) for s in args.scales.split(",") if s]
    args.compressions = [c.strip() for c in args.compressions.split(",") if c.strip()]
    if args.repeat < 1 or args.repeat_other < 1 or not args.scales:
        parser.error("--repeat must be >= 1 and --scales must name at least one scale")
    if args.s3_prefix is not None and not args.s3_bucket:
        parser.error("--s3-prefix needs --s3-bucket")
    if args.s3_bucket:
        run_id = f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        prefix = f"{S3_PREFIX_ROOT}/{run_id}" if args.s3_prefix is None else args.s3_prefix
        args.s3_prefix = prefix.strip("/")
        if not args.s3_prefix:
            parser.error("--s3-prefix must not be empty: the bench deletes everything under it")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(f"interrupted by {signal.Signals(signum).name}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["_upload"]:
        helper_upload(*argv[1:5])
        return 0
    if argv[:1] == ["_download"]:
        helper_download(*argv[1:5])
        return 0
    args = parse_args(argv)
    pg_target = parse_pg_url(args.pg_url) if args.pg_url else None  # refuses a password first
    args.default = engine_default_compression()
    if args.default not in args.compressions:
        args.compressions.insert(0, args.default)
    floors = args.compressions if args.floors == "all" else args.floors.split(",")
    floors = [args.default if c.strip() == "default" else c.strip() for c in floors]
    args.floors = [c for c in args.compressions if c in floors]
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    for tool in ("zstd", "runuser" if os.geteuid() == 0 and pg_target is None else "true"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} is not installed")
    started = time.perf_counter()
    bindir = pg_bindir(args.pg_bindir, server=pg_target is None)
    # The databases the bench creates: with --pg-url, exactly these are dropped at the end.
    planned = [f"{kind}_s{scale}" for scale in args.scales
               for kind in ("bench", "restored", "plain")]
    cluster = (Cluster(bindir) if pg_target is None
               else ExternalServer(bindir, pg_target, planned))
    s3: S3Base = RealS3(args.s3_bucket, args.s3_prefix) if args.s3_bucket else Moto()
    print("db-backup benchmark (issues 2 and 6)")
    print(f"date:     {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC")
    print(f"command:  {shlex.join(['.venv/bin/python', *sys.argv])}")
    print(f"machine:  {machine()}")
    print(f"versions: {versions(bindir)}")
    tuning = {k: v for k, v in os.environ.items() if k.startswith("DB_BACKUP_")}
    print(f"engine:   runner imported from {runner_location()} (repo git {git_head()}); "
          f"default compression {args.default}; DB_BACKUP_* set: {tuning or 'none'}")
    print(f"data:     --data {args.data}, pgbench scales {','.join(map(str, args.scales))} + "
          f"{args.text_rows:,} bench_docs rows each")
    print(f"server:   {cluster.describe()}")
    print(f"s3:       {s3.describe()}")
    print(flush=True)
    work = Path(tempfile.mkdtemp(prefix="dbbackup-bench-", dir=args.workdir))
    code = 1
    try:
        cluster.start()
        s3.start()
        if isinstance(cluster, ExternalServer):
            where = (f"external server {cluster.host}:{cluster.port} (PostgreSQL "
                     f"{cluster.version}; will drop {', '.join(cluster.owned)})")
        else:
            where = f"cluster on 127.0.0.1:{cluster.port} ({cluster.root})"
        if isinstance(s3, Moto):
            log(f"{where}, moto S3 on {s3.endpoint}")
        else:
            log(f"{where}, S3 {s3.storage_url()}/ (bucket region {s3.region})")
        bench = Bench(args, cluster, s3, work)
        bench.write_targets(args.scales)
        for index, scale in enumerate(args.scales):
            bench.scale(scale, full=index == 0)
        targets = report(bench, args.scales)
        print(f"\ntotal benchmark time {time.perf_counter() - started:.0f}s")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({
                "args": vars(args), "results": bench.results,
                "setup": {"server": cluster.describe(), "s3": s3.describe()},
                "measures": {k: m.as_json(args.stat, s3.emulated)
                             for k, m in bench.measures.items()},
                "targets": [{"issue": t.issue, "text": t.text, "value": t.value,
                             "limit": t.limit, "ok": t.ok} for t in targets],
            }, indent=2, default=str))
        code = 0 if all(t.ok for t in targets) else 3
    finally:
        s3.stop()  # moto: stopped; real S3: what this run wrote deleted, its uploads aborted
        cluster.stop()  # own cluster: stopped and deleted; --pg-url: the bench's databases dropped
        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
