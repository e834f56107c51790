"""One fake clock for every test that controls time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from runner.errors import Interrupted


class FakeClock:
    """Time moves only when someone sleeps; a cancel can be scheduled to arrive during a sleep."""

    def __init__(self, start: datetime = datetime(2024, 5, 1, 2, 0, tzinfo=UTC), cancel_at: float | None = None) -> None:
        self.start = start
        self.t = 0.0
        self.sleeps: list[float] = []
        self.cancel_at = cancel_at

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.t)

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.t += seconds
        if self.cancel_at is not None and self.t >= self.cancel_at:
            self.cancel_at = None
            raise Interrupted("cancelled by SIGTERM")
