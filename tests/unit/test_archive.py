"""Data offsets written into hand-built custom-format archives of every version pg_restore 15-17 reads.

The layout follows PostgreSQL's WriteHead/WriteToc/_StartData; tests/pg/test_archive.py checks the
same code against real pg_dump output (only version 1.14 exists on this machine).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner import archive
from tests.conftest import offsets_in


def w_int(value: int) -> bytes:
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(4, "little")


def w_str(text: str | None) -> bytes:
    if text is None:
        return w_int(-1)
    raw = text.encode()
    return w_int(len(raw)) + raw


@dataclass
class Built:
    data: bytes
    offsets: dict[int, int]  # dumpId -> where its block starts
    offset_fields: dict[int, int]  # dumpId -> where its offset flag byte is


def build(version: tuple[int, int, int], blocks: list[tuple[int, int, list[bytes]]], compression: int = 0,
          schema_only: tuple[int, ...] = (1, 2)) -> Built:
    """An archive as pg_dump writes it to a pipe: entries without data, then (dumpId, type, chunks) blocks."""
    head = b"PGDMP" + bytes(version) + bytes([4, 8, 1])
    head += bytes([compression]) if version[:2] >= (1, 15) else w_int(compression)
    head += b"".join(w_int(v) for v in (5, 4, 3, 2, 1, 126, 0)) + w_str("app") + w_str("15.4") + w_str("15.4")
    ids = [*schema_only, *(b[0] for b in blocks)]
    toc, fields = w_int(len(ids)), {}
    for dump_id in ids:
        has_data = dump_id not in schema_only
        desc = "TABLE" if not has_data else "TABLE DATA"
        toc += w_int(dump_id) + w_int(int(has_data)) + w_str("1259") + w_str(str(16000 + dump_id))
        toc += w_str(f"t{dump_id}") + w_str(desc) + w_int(2 if has_data else 1)
        toc += w_str("CREATE TABLE t (x text);" if not has_data else "") + w_str("") + w_str("COPY t (x) FROM stdin;\n")
        toc += w_str("public") + w_str("")
        if version[:2] >= (1, 14):
            toc += w_str("heap")
        if version[:2] >= (1, 16):
            toc += w_int(ord("r"))
        toc += w_str("app") + w_str("false") + (w_str("1") if has_data else b"") + w_str(None)  # dependencies
        fields[dump_id] = len(head) + len(toc)
        toc += bytes([archive.OFFSET_NOT_SET if has_data else archive.NO_DATA]) + bytes(8)
    data, offsets = b"", {}
    start = len(head) + len(toc)
    for dump_id, kind, chunks in blocks:
        offsets[dump_id] = start + len(data)
        data += bytes([kind]) + w_int(dump_id)
        if kind == archive.BLK_DATA:
            data += b"".join(w_int(len(c)) + c for c in chunks) + w_int(0)
        else:  # each chunk stands for one large object: its OID, its data, an end marker; then OID 0
            data += b"".join(w_int(900 + i) + w_int(len(c)) + c + w_int(0) for i, c in enumerate(chunks)) + w_int(0)
    return Built(head + toc + data, offsets, fields)


ROWS = [b"1\thello\n", b"2\t\\N\n", b"3\t\x01\x02 control bytes survive COPY text\n"]


@pytest.mark.parametrize("version", [(1, 12, 0), (1, 13, 0), (1, 14, 0), (1, 15, 0), (1, 16, 0)])
def test_offsets_are_written_where_pg_dump_would_have(tmp_path: Path, version: tuple[int, int, int]) -> None:
    built = build(version, [(3, archive.BLK_DATA, ROWS * 50), (4, archive.BLK_DATA, []), (5, archive.BLK_DATA, ROWS)])
    path = tmp_path / "a.dump"
    path.write_bytes(built.data)

    assert archive.fill_offsets(path) == 3

    found = offsets_in(path)
    assert {i: found[i] for i in built.offsets} == {i: (archive.OFFSET_SET, o) for i, o in built.offsets.items()}
    assert found[1] == found[2] == (archive.NO_DATA, 0)
    after = path.read_bytes()
    changed = [i for i, (a, b) in enumerate(zip(built.data, after, strict=True)) if a != b]
    assert changed and all(any(f <= i <= f + 8 for f in built.offset_fields.values()) for i in changed)


def test_a_row_of_exactly_16_mib_does_not_end_its_block(tmp_path: Path) -> None:
    # Its chunk header is 00 00 00 00 01: the longest NUL run a non-final chunk header can have.
    huge = b"x" * (1 << 24)
    built = build((1, 14, 0), [(3, archive.BLK_DATA, [ROWS[0], huge, ROWS[1]]), (4, archive.BLK_DATA, ROWS)])
    assert b"\0\0\0\0\x01" in built.data
    path = tmp_path / "a.dump"
    path.write_bytes(built.data)

    assert archive.fill_offsets(path) == 2
    assert offsets_in(path)[4] == (archive.OFFSET_SET, built.offsets[4])


def test_many_small_tables_and_one_bigger_than_the_search_window(tmp_path: Path) -> None:
    # 10 MiB of rows: the search window grows from 64 KiB to 8 MiB and the end marker lies beyond it.
    big = [b"%d\t%s\n" % (i, b"y" * 97) for i in range(100_000)]
    blocks = [(10 + i, archive.BLK_DATA, ROWS[: 1 + i % 3]) for i in range(300)]
    blocks.insert(150, (5, archive.BLK_DATA, big))
    built = build((1, 15, 0), blocks)
    path = tmp_path / "a.dump"
    path.write_bytes(built.data)

    assert archive.fill_offsets(path) == 301
    found = offsets_in(path)
    assert {i: found[i] for i in built.offsets} == {i: (archive.OFFSET_SET, o) for i, o in built.offsets.items()}


def test_large_objects_and_compressed_chunks_are_walked_not_searched(tmp_path: Path) -> None:
    # Binary bytes that look like an end marker followed by another block's header.
    decoy = b"\0\0\0\0\0" + bytes([archive.BLK_DATA]) + w_int(4) + b"\0" * 40
    built = build((1, 16, 0), [(3, archive.BLK_BLOBS, [decoy, b"\xff" * 100]), (4, archive.BLK_DATA, ROWS)])
    path = tmp_path / "blobs.dump"
    path.write_bytes(built.data)
    assert archive.fill_offsets(path) == 2
    assert offsets_in(path)[4] == (archive.OFFSET_SET, built.offsets[4])

    gz = build((1, 14, 0), [(3, archive.BLK_DATA, [decoy, decoy]), (4, archive.BLK_DATA, [decoy])], compression=6)
    path = tmp_path / "gzip.dump"
    path.write_bytes(gz.data)
    assert archive.fill_offsets(path) == 2
    assert offsets_in(path)[4] == (archive.OFFSET_SET, gz.offsets[4])


def test_archives_with_offsets_are_left_alone(tmp_path: Path) -> None:
    built = build((1, 14, 0), [(3, archive.BLK_DATA, ROWS)])
    path = tmp_path / "a.dump"
    path.write_bytes(built.data)
    archive.fill_offsets(path)
    once = path.read_bytes()
    assert archive.fill_offsets(path) == 0
    assert path.read_bytes() == once


@pytest.mark.parametrize("damage", ["truncated", "unknown version", "bad block type", "stray block", "not an archive"])
def test_anything_unexpected_leaves_the_file_unchanged(tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    built = build((1, 14, 0), [(3, archive.BLK_DATA, ROWS * 10), (4, archive.BLK_DATA, ROWS)])
    data = bytearray(built.data)
    if damage == "truncated":
        data = data[:-3]
    elif damage == "unknown version":
        data[6] = 17
    elif damage == "bad block type":
        data[built.offsets[4]] = 7
    elif damage == "stray block":
        data[built.offsets[4] + 2] = 99  # a block whose dumpId no TOC entry has
    else:
        data = bytearray(b"SELECT 1;\n" * 100)
    path = tmp_path / "a.dump"
    path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="runner.archive"):
        assert archive.fill_offsets(path) == 0

    assert path.read_bytes() == bytes(data)
    assert "data offsets not written" in caplog.text and "pg_restore -j will scan" in caplog.text


def _write_slowly(path: Path, data: bytes, pieces: int, scan: archive.OffsetScan | None, stop_at: int | None = None) -> None:
    """Write `data` in `pieces` appends with pauses (as a decompressor would), then tell the scan."""
    step = max(1, len(data) // pieces)
    with path.open("wb") as out:
        for start in range(0, len(data) if stop_at is None else stop_at, step):
            out.write(data[start:start + step] if stop_at is None else data[start:min(start + step, stop_at)])
            out.flush()
            time.sleep(0.002)
    if scan is not None:
        scan.writer_done()


@pytest.mark.parametrize("version", [(1, 14, 0), (1, 16, 0)])
def test_a_scan_that_follows_the_copy_finds_what_a_walk_of_the_whole_file_finds(tmp_path: Path, version: tuple[int, int, int]) -> None:
    big = [b"%d\t%s\n" % (i, b"z" * 50) for i in range(40_000)]
    blocks = [(10 + i, archive.BLK_DATA, ROWS[: 1 + i % 3]) for i in range(50)]
    blocks.insert(20, (5, archive.BLK_DATA, big))
    built = build(version, blocks)
    path = tmp_path / "a.dump"
    path.write_bytes(b"")
    scan = archive.OffsetScan(path)
    writer = threading.Thread(target=_write_slowly, args=(path, built.data, 200, scan))
    writer.start()
    writer.join(timeout=60)
    found = scan.result(timeout=60)

    assert isinstance(found, archive.Found)
    assert found.blocks == built.offsets  # every block, found while the file grew
    assert archive.fill_offsets(path, found) == 51
    on_disk = offsets_in(path)
    assert {i: on_disk[i] for i in built.offsets} == {i: (archive.OFFSET_SET, o) for i, o in built.offsets.items()}


def test_a_copy_that_stops_short_gives_no_offsets_and_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    built = build((1, 14, 0), [(3, archive.BLK_DATA, ROWS * 100), (4, archive.BLK_DATA, ROWS)])
    path = tmp_path / "a.dump"
    path.write_bytes(b"")
    scan = archive.OffsetScan(path)
    _write_slowly(path, built.data, 20, scan, stop_at=len(built.data) - 10)  # the download failed mid-way
    found = scan.result(timeout=30)

    assert isinstance(found, archive.ArchiveLayoutUnknown)
    with caplog.at_level(logging.WARNING, logger="runner.archive"):
        assert archive.fill_offsets(path, found) == 0
    assert "data offsets not written" in caplog.text


def test_a_writer_that_stalls_ends_the_scan_within_its_bound(tmp_path: Path) -> None:
    built = build((1, 14, 0), [(3, archive.BLK_DATA, ROWS * 100)])
    path = tmp_path / "a.dump"
    path.write_bytes(built.data[:200])  # then nothing more, and no word from the writer
    scan = archive.OffsetScan(path, stall_s=0.3)
    started = time.monotonic()
    scan._thread.join(timeout=10)

    assert not scan._thread.is_alive()
    assert time.monotonic() - started < 5
    assert isinstance(scan.result(timeout=1), archive.ArchiveLayoutUnknown)


def test_an_abandoned_copy_ends_the_scan_at_once_and_closes_the_file(tmp_path: Path) -> None:
    built = build((1, 14, 0), [(3, archive.BLK_DATA, ROWS * 100)])
    path = tmp_path / "a.dump"
    path.write_bytes(built.data[:200])  # the download failed here; the copy is deleted next
    scan = archive.OffsetScan(path, stall_s=300)
    time.sleep(0.05)
    started = time.monotonic()
    scan.abandon()
    scan._thread.join(timeout=10)

    assert not scan._thread.is_alive()
    assert time.monotonic() - started < 1
    found = scan.result(timeout=1)
    assert isinstance(found, archive.ArchiveLayoutUnknown) and "abandoned" in str(found)
