"""pg_restore's processes: streamed through a decompressor, or from a local copy of the archive."""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..compression import Codec
from ..credentials import Connection
from ..progress import Progress, Stage, quiet
from .pipeline import Pipeline
from .tools import compressor_env, libpq_env


def _conninfo_dbname(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


def pg_restore_argv(pg_restore: str, dbname: str, ignore_privileges: bool, jobs: int, path: Path | None) -> list[str]:
    # --verbose: the tables as pg_restore loads them, for the progress display (TableWatch).
    argv = [pg_restore, "--no-password", "--exit-on-error", "--verbose", f"--dbname={_conninfo_dbname(dbname)}"]
    if ignore_privileges:
        argv += ["--no-owner", "--no-privileges"]
    if path is not None:
        if jobs > 1:
            argv.append(f"--jobs={jobs}")
        argv.append(str(path))
    return argv


# What pg_restore --verbose says (its pg_log_info messages), never an error or warning, which carry `error:`/`warning:`.
_VERBOSE = (
    "connecting to ", "creating ", "processing data for table ", "executing ", "disabling triggers for ",
    "enabling triggers for ", "setting owner and privileges for ", "processing item ", "entering ", "skipping item ",
    "launching item ", "finished item ", "finished main parallel loop", "implied data-only restore", "dropping ",
    "restoring large object", "restored ", "processing BLOBS", "processing LARGE OBJECTS", "transferring dependency ",
    "reducing dependencies for ", "dependency ", "no item ready",
)
_PROCESSING = re.compile(r'processing data for table "(?P<name>.+)"$')
_FINISHED = re.compile(r"finished item \d+ TABLE DATA (?P<table>.+)$")  # the table's name without its schema


class TableWatch:
    """Reads pg_restore --verbose lines: which table it loads, and which it finished (a serial restore
    finishes a table when it moves on; with -j, pg_restore says `finished item`)."""

    def __init__(self, stage: Stage) -> None:
        self._stage = stage
        self._tables = stage.meter("tables loaded", unit="items", one="table loaded")
        self._parallel = False
        self._current: str | None = None
        self._qualified: dict[str, str] = {}  # with -j: a table's name to the schema-qualified name its worker said

    def __call__(self, line: str) -> bool:
        if not line.startswith(_VERBOSE):
            return False
        if line.startswith(("entering main parallel loop", "launching item")):
            self._parallel = True
        if found := _FINISHED.match(line):
            self._done(self._qualified.pop(found["table"], found["table"]))
        elif found := _PROCESSING.match(line):
            self._qualified[found["name"].rsplit(".", 1)[-1]] = found["name"]
            if not self._parallel:
                self._end_current()
            self._current = found["name"]
            self._stage.doing(f"loading {self._current}")
        elif not self._parallel and self._current is not None:
            self._done(self._current)
        return True

    def _done(self, table: str) -> None:
        self._tables.add(1)
        self._stage.finished(table)
        if table == self._current:
            self._current = None
            self._stage.doing(None)

    def _end_current(self) -> None:
        if self._current is not None:
            self._done(self._current)

    def close(self) -> None:
        """pg_restore ended: the table a serial restore was loading is done."""
        if not self._parallel:
            self._end_current()
        self._stage.doing(None)


def restore_stream(
    conn: Connection, argv: list[str], chunks: Iterable[bytes], decompress: Codec | None,
    progress: Progress | None = None, size: int | None = None,
) -> str:
    """Feed chunks (`size` bytes, if known) into [zstd -d |] pg_restore; returns the sha256 of what was fed."""
    digest = hashlib.sha256()
    with quiet(progress).stage(f"restore into {conn.dbname}") as stage:
        fed = stage.meter("read", size)
        watch = TableWatch(stage)

        def hashed() -> Iterator[bytes]:
            for chunk in chunks:
                digest.update(chunk)
                fed.add(len(chunk))
                yield chunk

        with libpq_env(conn) as env, Pipeline() as pipe:
            first = restore = pipe.start("pg_restore", env, argv, stdin=subprocess.PIPE, info=watch)
            if decompress:
                first = pipe.start(decompress.name, compressor_env(), decompress.argv, stdin=subprocess.PIPE, into=restore)
            pipe.feed(first, hashed())  # a reader that stopped early says why in its exit code and message
            pipe.wait()
            watch.close()
            failure = pipe.failure()
            if failure:
                raise failure
    return digest.hexdigest()


def run_restore_file(conn: Connection, argv: list[str], progress: Progress | None = None) -> None:
    with quiet(progress).stage(f"restore into {conn.dbname}") as stage:
        watch = TableWatch(stage)
        with libpq_env(conn) as env, Pipeline() as pipe:
            pipe.start("pg_restore", env, argv, info=watch)
            pipe.wait()
            watch.close()
            failure = pipe.failure()
            if failure:
                raise failure
