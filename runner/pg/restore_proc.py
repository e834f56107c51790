"""pg_restore's processes: streamed through a decompressor, or from a local copy of the archive."""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping
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
# A name is written as it is, quotes and dots included; a newline in it ends the line early (the rest comes as a
# line of its own), so the closing quote may be missing.
_PROCESSING = re.compile(r'processing data for table "(?P<name>.*?)"?$')
# With -j, the leader names an item by its dumpId and its bare name (no schema).
_ITEM = re.compile(r"(?P<what>launching|finished) item (?P<id>\d+) TABLE DATA (?P<tag>.*)$")


class TableWatch:
    """Reads pg_restore --verbose lines: which table it loads, and which it finished (a serial restore
    finishes a table when it moves on; with -j, pg_restore says `finished item`)."""

    def __init__(self, stage: Stage) -> None:
        self._stage = stage
        self._tables = stage.meter("tables loaded", unit="items", one="table loaded")
        self._parallel = False
        self._current: str | None = None
        # With -j: items launched whose worker has not yet said which schema, and the schema-qualified names said.
        self._launched: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._finished: set[int] = set()

    def __call__(self, line: str) -> bool:
        if not line.startswith(_VERBOSE):
            return False
        if line.startswith(("entering main parallel loop", "launching item")):
            self._parallel = True
        if item := _ITEM.match(line):
            self._item(int(item["id"]), item["tag"], launched=item["what"] == "launching")
        elif found := _PROCESSING.match(line):
            if self._parallel:
                self._name_launched(found["name"])
            else:
                self._end_current()
            self._current = found["name"]
            self._stage.doing(f"loading {self._current}")
        elif not self._parallel and self._current is not None:
            self._done(self._current)
        return True

    def _item(self, dump_id: int, tag: str, launched: bool) -> None:
        if launched:
            self._launched[dump_id] = tag
        elif dump_id not in self._finished:
            self._finished.add(dump_id)
            named = self._names.pop(dump_id, None)
            self._done(named if named is not None else self._launched.pop(dump_id, tag))

    def _name_launched(self, qualified: str) -> None:
        """A worker started on `schema.table`: the oldest launched item of that name (the longest, if dots make
        several fit) is its own. Two tables of one name in two schemas launched together may swap names until both
        finish; each is counted once either way."""
        fits = (dump_id for dump_id, tag in self._launched.items() if qualified.endswith(f".{tag}"))
        found = max(fits, key=lambda dump_id: len(self._launched[dump_id]), default=None)
        if found is not None:
            self._names[found] = qualified
            del self._launched[found]

    def _done(self, table: str) -> None:
        self._tables.add(1)
        self._stage.finished(table)
        if table == self._current:
            self._current = None
            self._stage.doing(None)

    def _end_current(self) -> None:
        if self._current is not None:
            self._done(self._current)

    def close(self, succeeded: bool = True) -> None:
        """pg_restore ended: if it succeeded, the table a serial restore was loading is done."""
        if succeeded and not self._parallel:
            self._end_current()
        self._stage.doing(None)


def restore_stream(
    conn: Connection, argv: list[str], chunks: Iterable[bytes], decompress: Codec | None,
    progress: Progress | None = None, size: int | None = None, session: Mapping[str, str] | None = None,
) -> str:
    """Feed chunks (`size` bytes, if known) into [zstd -d |] pg_restore; returns the sha256 of what was fed.

    `session`: server settings for pg_restore's sessions (bulk_load_settings)."""
    digest = hashlib.sha256()
    with quiet(progress).stage(f"restore into {conn.dbname}") as stage:
        fed = stage.meter("read", size)
        watch = TableWatch(stage)

        def hashed() -> Iterator[bytes]:
            for chunk in chunks:
                digest.update(chunk)
                fed.add(len(chunk))
                yield chunk

        with libpq_env(conn, session) as env, Pipeline() as pipe:
            first = restore = pipe.start("pg_restore", env, argv, stdin=subprocess.PIPE, info=watch)
            if decompress:
                first = pipe.start(decompress.name, compressor_env(), decompress.argv, stdin=subprocess.PIPE, into=restore)
            pipe.feed(first, hashed())  # a reader that stopped early says why in its exit code and message
            pipe.wait()
            failure = pipe.failure()
            watch.close(succeeded=failure is None)
            if failure:
                raise failure
    return digest.hexdigest()


def run_restore_file(
    conn: Connection, argv: list[str], progress: Progress | None = None, session: Mapping[str, str] | None = None,
) -> None:
    with quiet(progress).stage(f"restore into {conn.dbname}") as stage:
        watch = TableWatch(stage)
        with libpq_env(conn, session) as env, Pipeline() as pipe:
            pipe.start("pg_restore", env, argv, info=watch)
            pipe.wait()
            failure = pipe.failure()
            watch.close(succeeded=failure is None)
            if failure:
                raise failure
