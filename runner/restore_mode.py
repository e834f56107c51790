"""How a restore loads the dump: streamed into one pg_restore, or copied locally for pg_restore -j."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .catalog import BackupEntry
from .settings import Settings

log = logging.getLogger(__name__)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


MIN_RESTORE_JOBS = 2


def restore_jobs(settings: Settings) -> int:
    """pg_restore -j when a restore runs in parallel: its workers mostly wait on the server.

    Measured (bench/RESULTS.md): pg_restore pinned to one core, the server free on two: -j2 took
    0.71x the time of -j1, so even a one-core client runs two.
    """
    return settings.restore_jobs or max(MIN_RESTORE_JOBS, _cores())


def _use_parallel(entry: BackupEntry, settings: Settings, jobs: int) -> bool:
    if settings.restore_mode != "auto":
        return settings.restore_mode == "parallel"
    # On one core the download, decompression and offsets run one after another before pg_restore
    # starts, while streaming overlaps them with the server's work: pinned to one core, db-backup's
    # parallel restore took 1.23x the time of its stream (bench/RESULTS.md).
    return _cores() > 1 and jobs > 1 and _worth_parallel(entry, settings)


LEGACY_PARALLEL_MIN_BYTES = 64 << 20


def _pg_dump_compressed(entry: BackupEntry) -> bool:
    """pg_dump compressed the archive itself (gzip): the local copy is the stored file as it is."""
    m = entry.manifest
    return m is not None and m.compressed_by == "pg_dump" and m.compression.startswith("gzip")


def _worth_parallel(entry: BackupEntry, settings: Settings) -> bool:
    """Measured (bench/RESULTS.md): -j pays off for big dumps, once each table's data can be sought.

    Old-system dumps (pg_dump's gzip, written to files with data offsets): -j2 beat -j1 already at
    120 MB, each worker decompressing its own tables. db-backup's gzip dumps are the same archives
    once their offsets are written (runner/archive.py), so the same rule applies. For zstd and
    uncompressed dumps the threshold is on the uncompressed size, which is the restore's work.
    """
    if entry.manifest is None or _pg_dump_compressed(entry):
        return entry.size_bytes >= LEGACY_PARALLEL_MIN_BYTES
    raw = entry.manifest.uncompressed_bytes
    return raw is not None and raw >= settings.parallel_threshold_mb << 20


def _fits_on_disk(entry: BackupEntry, work_dir: Path | None) -> bool:
    """Room for the local copy: the uncompressed archive, or for pg_dump's gzip the stored file.

    Without a manifest the container is unknown until the first bytes arrive: assume 5x.
    """
    if _pg_dump_compressed(entry):
        needed = entry.size_bytes
    else:
        raw = entry.manifest.uncompressed_bytes if entry.manifest else None
        needed = raw if raw is not None else entry.size_bytes * 5
    free = shutil.disk_usage(work_dir or tempfile.gettempdir()).free
    return needed + (256 << 20) <= free


@dataclass(frozen=True)
class Mode:
    parallel: bool
    jobs: int  # pg_restore -j when parallel

    @property
    def label(self) -> str:
        return f"parallel -j{self.jobs}" if self.parallel else "stream"


def choose_mode(entry: BackupEntry, settings: Settings) -> Mode:
    """Parallel when it pays off and the copy fits on the work folder's disk; else streamed."""
    jobs = restore_jobs(settings)
    parallel = _use_parallel(entry, settings, jobs)
    if parallel and not _fits_on_disk(entry, settings.work_dir):
        log.warning("not enough free disk for a parallel restore's copy of %s; streaming instead", entry.id)
        parallel = False
    return Mode(parallel, jobs)
