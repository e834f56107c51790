"""The measured rule that picks streaming or pg_restore -j for `restore_mode: auto`."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pytest

from runner import restore_mode
from runner.catalog import BackupEntry
from runner.manifest import Manifest
from runner.restore_mode import _worth_parallel
from runner.settings import Settings

WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def entry(size: int, raw: int | None, manifest: bool = True, compression: str = "zstd:3") -> BackupEntry:
    m = Manifest(
        identifier="a", env="b", id="2026-01-01_00-00-00", key="k", created_at=WHEN, duration_s=1.0, size_bytes=size,
        sha256="0" * 64, format="custom", compression=compression,
        compressed_by="zstd" if compression.startswith("zstd") else "pg_dump", pg_dump_version="15",
        server_version="15", database="d", tool_version="0", uncompressed_bytes=raw,
    )
    return BackupEntry("2026-01-01_00-00-00", "k", WHEN, size, m if manifest else None)


def test_auto_rule() -> None:
    settings = Settings()  # the defaults, as measured in bench/RESULTS.md (data offsets written)
    mb = 1 << 20
    assert _worth_parallel(entry(117 * mb, 519 * mb), settings)  # mixed data: -j2 13% faster than streaming
    assert _worth_parallel(entry(208 * mb, 600 * mb), settings)  # the reference data: -j2 2-5% faster
    assert not _worth_parallel(entry(4 * mb, 30 * mb), settings)  # small: within noise, no temp copy
    assert not _worth_parallel(entry(300 * mb, None), settings)  # zstd without a recorded size: unknown work
    # pg_dump's own gzip, like the old system's dumps once the offsets are written: by stored size.
    assert _worth_parallel(entry(118 * mb, None, compression="gzip:6"), settings)
    assert not _worth_parallel(entry(10 * mb, None, compression="gzip:6"), settings)
    assert not _worth_parallel(entry(100 * mb, 100 * mb, compression="none"), settings)  # by uncompressed size
    assert _worth_parallel(entry(300 * mb, 300 * mb, compression="none"), settings)
    assert _worth_parallel(entry(118 * mb, None, manifest=False), settings)  # old-system file dump, has offsets
    assert not _worth_parallel(entry(10 * mb, None, manifest=False), settings)
    assert not _worth_parallel(entry(126 * mb, 519 * mb), Settings(parallel_threshold_mb=768))


def test_parallel_needs_room_for_the_uncompressed_copy(tmp_path: object) -> None:
    from pathlib import Path

    from runner.restore_mode import _fits_on_disk

    assert _fits_on_disk(entry(1 << 20, 10 << 20), Path(str(tmp_path)))
    assert not _fits_on_disk(entry(1 << 20, 1 << 60), Path(str(tmp_path)))
    assert not _fits_on_disk(entry(1 << 58, None, manifest=False), Path(str(tmp_path)))
    # A gzip archive is copied as stored: it needs its own size, not 5x.
    free = shutil.disk_usage(str(tmp_path)).free
    assert _fits_on_disk(entry(free // 2, None, compression="gzip:6"), Path(str(tmp_path)))
    assert not _fits_on_disk(entry(free // 2, None, compression="zstd:3"), Path(str(tmp_path)))


def test_part_sizes_stay_flat_then_reach_far() -> None:
    from runner.stores.s3 import part_target

    base = 16 << 20
    assert {part_target(base, n) for n in range(5000)} == {base}
    assert part_target(base, 5000) == 2 * base
    total = sum(part_target(base, n) for n in range(10000))
    assert total > 390 << 30


def test_restore_jobs_follow_the_server_not_only_the_clients_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore_mode, "_cores", lambda: 1)  # a 1-vCPU Fargate task
    assert restore_mode.restore_jobs(Settings()) == 2
    assert restore_mode.restore_jobs(Settings(restore_jobs=1)) == 1  # the way to force one worker
    monkeypatch.setattr(restore_mode, "_cores", lambda: 8)
    assert restore_mode.restore_jobs(Settings()) == 8
    assert restore_mode.restore_jobs(Settings(restore_jobs=3)) == 3


def test_auto_streams_on_a_one_core_client(monkeypatch: pytest.MonkeyPatch) -> None:
    big = entry(208 << 20, 600 << 20)
    monkeypatch.setattr(restore_mode, "_cores", lambda: 1)
    assert not restore_mode._use_parallel(big, Settings(), restore_mode.restore_jobs(Settings()))
    assert restore_mode._use_parallel(big, Settings(restore_mode="parallel"), 2)  # forced: runs with -j2
    monkeypatch.setattr(restore_mode, "_cores", lambda: 2)
    assert restore_mode._use_parallel(big, Settings(), restore_mode.restore_jobs(Settings()))
    assert not restore_mode._use_parallel(big, Settings(restore_jobs=1), 1)
    assert not restore_mode._use_parallel(big, Settings(restore_mode="stream"), 2)
