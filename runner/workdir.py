"""Private work folders for restores' local copies, and removal of the ones dead runs left behind."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .filelocks import remove_if_unlocked

log = logging.getLogger(__name__)

PREFIX = "db-backup-restore-"
# Made and locked under this name, then renamed: a folder named PREFIX* is locked from birth.
STAGING = ".db-backup-staging-"
LOCK = ".in-use"
STAGING_MAX_AGE_S = 3600.0


@contextlib.contextmanager
def claim(parent: Path | None) -> Iterator[Path]:
    """A fresh folder under `parent` (default: the system temp), flock-ed for as long as it is used.

    The lock dies with the process, whatever ends it: a later run's `sweep` knows a folder with a
    free lock is a leftover (the gigabytes of a killed parallel restore's copy) and removes it.
    """
    base = parent or Path(tempfile.gettempdir())
    staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=base))
    fd = os.open(staging / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    folder = staging
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        folder = base / (PREFIX + staging.name.removeprefix(STAGING))
        staging.rename(folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def sweep(base: Path) -> list[Path]:
    """Remove this user's work folders under `base` that no live run holds; the ones removed."""
    removed: list[Path] = []
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith((PREFIX, STAGING)) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return removed
    for folder in candidates:
        try:
            info = folder.stat()
        except OSError:
            continue
        if info.st_uid != os.getuid():
            continue
        if folder.name.startswith(STAGING):
            # Empty but for an unlocked lock file; a live run renames it within microseconds.
            if time.time() - info.st_mtime > STAGING_MAX_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        try:
            outcome = remove_if_unlocked(folder / LOCK, functools.partial(shutil.rmtree, folder, ignore_errors=True))
        except OSError:
            continue  # no lock file it can take: not one of ours after all, leave it
        if outcome == "removed":
            removed.append(folder)
            log.info("removed %s, left by an interrupted restore", folder)
    return removed
