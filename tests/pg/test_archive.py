"""Data offsets written into real pg_dump archives: the same as pg_dump -f writes, and pg_restore -j uses them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runner import archive
from tests.conftest import PgCluster, fill_rich, fingerprint, offsets_in


@pytest.fixture
def archived_db(pg: PgCluster, dbname: str) -> str:
    """The rich schema plus the awkward cases: an empty table, control bytes, binary large objects."""
    fill_rich(pg, dbname)
    with pg.connect(dbname) as conn:
        conn.execute("CREATE TABLE public.empty_one (id int)")
        conn.execute("CREATE TABLE public.ctl (id int, body text)")
        conn.execute("INSERT INTO public.ctl SELECT g, chr(1) || repeat(chr(3), g % 5) || 'x' FROM generate_series(1, 300) g")
        # Large objects whose bytes look like a block's end marker followed by another block's header.
        conn.execute("SELECT lo_from_bytea(0, decode(repeat('0000000000010000000000', 3000), 'hex'))")
        conn.execute("SELECT lo_from_bytea(0, decode(repeat('ff00', 40000), 'hex'))")
    return dbname


def tool_env(pg: PgCluster) -> dict[str, str]:
    return {**os.environ, "PGHOST": pg.host, "PGPORT": str(pg.port), "PGUSER": pg.user, "PGPASSWORD": pg.password}


def dump(pg: PgCluster, dbname: str, path: Path, compress: int, piped: bool) -> Path:
    argv = [str(pg.bindir / "pg_dump"), "-Fc", f"--compress={compress}", "-d", dbname]
    if piped:  # what db-backup does: pg_dump's output is a pipe, so it cannot go back and write offsets
        with path.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=tool_env(pg))
            assert proc.stdout
            while chunk := proc.stdout.read(1 << 16):
                out.write(chunk)
            assert proc.wait(timeout=120) == 0
    else:
        subprocess.run([*argv, "-f", str(path)], env=tool_env(pg), check=True, timeout=120)
    return path


@pytest.mark.parametrize("compress", [0, 6])
def test_offsets_match_what_pg_dump_writes_to_a_file(pg: PgCluster, archived_db: str, tmp_path: Path, compress: int) -> None:
    piped = dump(pg, archived_db, tmp_path / "piped.dump", compress, piped=True)
    seekable = dump(pg, archived_db, tmp_path / "file.dump", compress, piped=False)
    before = offsets_in(piped)
    with_data = [i for i, (state, _) in before.items() if state != archive.NO_DATA]
    assert len(with_data) >= 5 and all(before[i][0] == archive.OFFSET_NOT_SET for i in with_data)

    assert archive.fill_offsets(piped) == len(with_data)

    assert offsets_in(piped) == offsets_in(seekable)
    # Byte for byte what pg_dump -f wrote, apart from the dump's creation time in the header.
    with seekable.open("rb") as f:
        toc = archive.read_toc(f)
    times_at = 11 + (1 if toc.version[:2] >= (1, 15) else 1 + toc.int_size)
    times_end = times_at + 7 * (1 + toc.int_size)
    ours, theirs = piped.read_bytes(), seekable.read_bytes()
    assert ours[:times_at] + ours[times_end:] == theirs[:times_at] + theirs[times_end:]


def test_pg_restore_j2_restores_everything_from_the_filled_archive(pg: PgCluster, archived_db: str, tmp_path: Path) -> None:
    path = dump(pg, archived_db, tmp_path / "piped.dump", 0, piped=True)
    assert archive.fill_offsets(path) > 0
    target = f"{archived_db}__j2"
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{target}"')
    try:
        subprocess.run([str(pg.bindir / "pg_restore"), "-j2", "-d", target, str(path)], env=tool_env(pg), check=True,
                       timeout=120, capture_output=True)
        assert fingerprint(pg, target) == fingerprint(pg, archived_db)
        query = "SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1"
        with pg.connect(target) as restored, pg.connect(archived_db) as original:
            assert restored.execute(query).fetchall() == original.execute(query).fetchall()
    finally:
        pg.drop(target)
