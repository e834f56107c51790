"""Row counts, tables and extensions read from real pg_dump archives, compressed by pg_dump or not."""

from __future__ import annotations

import io
import os
import subprocess
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from runner import archive_rows
from runner.archive_rows import read_contents, stored_contents
from runner.catalog import BackupEntry
from runner.errors import InfraError, JobFailed
from tests.conftest import PgCluster

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE SCHEMA "odd schema";
CREATE TABLE "odd schema"."rows with
newlines" (id int, body text);
INSERT INTO "odd schema"."rows with
newlines" SELECT g, E'line one\\nline two\\\\.\\n' || repeat('x', g) FROM generate_series(1, 3000) g;
CREATE TABLE empty (id int);
CREATE TABLE parent (id int);
CREATE TABLE child () INHERITS (parent);
INSERT INTO parent VALUES (1), (2);
INSERT INTO child VALUES (3);
CREATE MATERIALIZED VIEW counted AS SELECT count(*) FROM parent;
"""


def _dump(pg: PgCluster, dbname: str, compress: str) -> bytes:
    env = {**os.environ, "PGPASSWORD": pg.password}
    argv = [str(pg.bindir / "pg_dump"), "-Fc", f"--compress={compress}", "-h", pg.host, "-p", str(pg.port), "-U", pg.user, dbname]
    return subprocess.run(argv, capture_output=True, env=env, check=True, timeout=120).stdout


@pytest.fixture
def filled(pg: PgCluster, dbname: str) -> str:
    with pg.connect(dbname) as conn:
        conn.execute(SCHEMA)
    return dbname


@pytest.mark.parametrize("compress", ["0", "6"])
def test_counts_rows_tables_and_extensions(pg: PgCluster, filled: str, compress: str) -> None:
    contents = read_contents(io.BytesIO(_dump(pg, filled, compress)))
    assert contents.row_counts() == {"odd schema.rows with\nnewlines": 3000, "public.empty": 0, "public.parent": 2, "public.child": 1}
    assert sorted(contents.tables) == ["odd schema.rows with\nnewlines", "public.child", "public.empty", "public.parent"]
    assert contents.extensions == ("citext",)


def test_a_truncated_archive_is_refused(pg: PgCluster, filled: str) -> None:
    whole = _dump(pg, filled, "6")
    with pytest.raises(JobFailed, match="ends early"):
        read_contents(io.BytesIO(whole[: len(whole) * 2 // 3]))


def _int(value: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(4, "little")


def test_a_corrupt_string_length_is_refused_without_buffering_it() -> None:
    with pytest.raises(JobFailed, match="past any sane"):
        archive_rows._Stream(io.BytesIO(_int(2**31 - 1) + b"x" * 10)).string()
    with pytest.raises(JobFailed, match="ends early"):  # under the cap: read in pieces until the archive ends
        archive_rows._Stream(io.BytesIO(_int(200 << 20) + b"x" * 10)).string()


def test_a_corrupt_chunk_length_is_read_in_pieces_and_refused() -> None:
    s = archive_rows._Stream(io.BytesIO(_int(2**31 - 1) + b"a\nb\n" * 10))
    with pytest.raises(JobFailed, match="ends early"):
        archive_rows._count_block(s, "none")


def test_a_truncated_gzip_block_is_an_error_not_an_undercount() -> None:
    packed = zlib.compress(b"".join(f"{i}\tbody {i}\n".encode() for i in range(5000)) + b"\\.\n")
    whole = _int(len(packed)) + packed + _int(0)
    assert archive_rows._count_block(archive_rows._Stream(io.BytesIO(whole)), "gzip") == 5000
    cut = packed[: len(packed) // 2]
    with pytest.raises(JobFailed, match="ends before its zlib stream"):
        archive_rows._count_block(archive_rows._Stream(io.BytesIO(_int(len(cut)) + cut + _int(0))), "gzip")


class _FailingStore:
    """A store whose read breaks after the first chunk."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def uri(self, key: str) -> str:
        return f"mem://{key}"

    def read(self, key: str) -> Iterator[bytes]:
        yield self.data[:4096]
        raise InfraError("the store went away")


def test_a_store_failing_mid_read_is_the_reason_given(pg: PgCluster, filled: str) -> None:
    zstd = subprocess.run(["zstd", "-q", "-c"], input=_dump(pg, filled, "0"), capture_output=True, check=True, timeout=60).stdout
    entry = BackupEntry("2024-05-01_01-00-00", "x.dump", datetime(2024, 5, 1, 1, tzinfo=UTC), len(zstd))
    with pytest.raises(InfraError, match="went away"):
        stored_contents(_FailingStore(zstd), entry)  # type: ignore[arg-type]
