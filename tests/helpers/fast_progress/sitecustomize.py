"""A test hook: with this folder on PYTHONPATH, a db-backup process shows a progress line every FAST_INTERVAL seconds.

DB_BACKUP_PROGRESS_INTERVAL cannot go below a second; Python imports this module at start-up (site.py) in the
db-backup process a test starts, and only there. Tests read FAST_INTERVAL and the folder from tests/helpers/progress.py.
"""

from __future__ import annotations

FAST_INTERVAL = 0.1


def _install() -> None:
    from runner.clock import Clock
    from runner.progress import Progress

    def fast(cls: type[Progress], settings: object, clock: Clock, stream: object = None) -> Progress:
        return cls(clock, FAST_INTERVAL, "lines")  # a test's stderr is a pipe, never a terminal

    Progress.of = classmethod(fast)  # type: ignore[assignment, method-assign]


if __name__ == "sitecustomize":  # Python's start-up, not a test importing FAST_INTERVAL
    _install()
