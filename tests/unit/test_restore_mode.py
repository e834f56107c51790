"""The measured rule that picks streaming or pg_restore -j for `restore_mode: auto`."""

from __future__ import annotations

from datetime import UTC, datetime

from runner.jobs import _worth_parallel
from runner.settings import Settings
from runner.storage import BackupEntry, Manifest

WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def entry(size: int, raw: int | None, manifest: bool = True) -> BackupEntry:
    m = Manifest(
        identifier="a", env="b", id="2026-01-01_00-00-00", key="k", created_at=WHEN, duration_s=1.0, size_bytes=size,
        sha256="0" * 64, format="custom", compression="zstd:3", compressed_by="zstd", pg_dump_version="15",
        server_version="15", database="d", tool_version="0", uncompressed_bytes=raw,
    )
    return BackupEntry("2026-01-01_00-00-00", "k", WHEN, size, m if manifest else None)


def test_auto_rule() -> None:
    settings = Settings(parallel_threshold_mb=768)
    mb = 1 << 20
    assert not _worth_parallel(entry(126 * mb, 519 * mb), settings)  # measured: streaming 6% faster
    assert _worth_parallel(entry(131 * mb, 912 * mb), settings)  # measured: -j2 13% faster
    assert not _worth_parallel(entry(300 * mb, None), settings)  # pg_dump-compressed: size unknown, no offsets
    assert _worth_parallel(entry(118 * mb, None, manifest=False), settings)  # old-system file dump, has offsets
    assert not _worth_parallel(entry(10 * mb, None, manifest=False), settings)
