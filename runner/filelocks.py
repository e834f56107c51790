"""Leftovers of runs that died: a run flocks what it writes, so a free lock means no live run uses it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal


def remove_if_unlocked(lock: Path, remove: Callable[[], None] | None = None) -> Literal["removed", "gone", "live"]:
    """Remove `lock` (or, with `remove`, what it guards) if no process holds its flock; `live` if one does.

    The lock is taken before the check and held through the removal, and `lock` must still name the
    locked file: every run removes its own while holding the lock, so a free lock means no one's use,
    and the name cannot change hands in between. OSErrors other than a missing file are raised.
    """
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return "gone"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "live"
        held, named = os.fstat(fd), os.lstat(lock)
        if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
            return "gone"
        if remove is None:
            lock.unlink()
        else:
            remove()
        return "removed"
    except FileNotFoundError:
        return "gone"
    finally:
        os.close(fd)
