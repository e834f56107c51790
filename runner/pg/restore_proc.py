"""pg_restore's processes: streamed through a decompressor, or from a local copy of the archive."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..compression import Codec
from ..credentials import Connection
from .pipeline import Pipeline
from .tools import compressor_env, libpq_env


def _conninfo_dbname(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


def pg_restore_argv(pg_restore: str, dbname: str, ignore_privileges: bool, jobs: int, path: Path | None) -> list[str]:
    argv = [pg_restore, "--no-password", "--exit-on-error", f"--dbname={_conninfo_dbname(dbname)}"]
    if ignore_privileges:
        argv += ["--no-owner", "--no-privileges"]
    if path is not None:
        if jobs > 1:
            argv.append(f"--jobs={jobs}")
        argv.append(str(path))
    return argv


def restore_stream(conn: Connection, argv: list[str], chunks: Iterable[bytes], decompress: Codec | None) -> str:
    """Feed chunks into [zstd -d |] pg_restore; returns the sha256 of what was fed."""
    digest = hashlib.sha256()

    def hashed() -> Iterator[bytes]:
        for chunk in chunks:
            digest.update(chunk)
            yield chunk

    with libpq_env(conn) as env, Pipeline() as pipe:
        first = restore = pipe.start("pg_restore", env, argv, stdin=subprocess.PIPE)
        if decompress:
            first = pipe.start(decompress.name, compressor_env(), decompress.argv, stdin=subprocess.PIPE, into=restore)
        pipe.feed(first, hashed())  # a reader that stopped early says why in its exit code and message
        pipe.wait()
        failure = pipe.failure()
        if failure:
            raise failure
    return digest.hexdigest()


def run_restore_file(conn: Connection, argv: list[str]) -> None:
    with libpq_env(conn) as env, Pipeline() as pipe:
        pipe.start("pg_restore", env, argv)
        pipe.wait()
        failure = pipe.failure()
        if failure:
            raise failure
