"""Progress of the long steps of a job (dump, download, pg_restore): a live line on a terminal, else a log line every interval.

The data path only adds to plain counters (one writing thread each, no lock); a display thread reads them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal, TextIO

from .clock import Clock, SystemClock
from .output import human_duration, human_size
from .settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)

Unit = Literal["bytes", "items"]
_RECENT_SHOWN = 3


class Meter:
    """One count of a stage (bytes read, tables loaded); `add` is called by a single thread."""

    def __init__(self, label: str, total: int | None, unit: Unit, estimate: bool, probe: Callable[[], int] | None,
                 one: str | None = None) -> None:
        self.label = label
        self.one = one or label  # the label after a count of 1: `1 table loaded`
        self.total = total if total and total > 0 else None
        self.unit = unit
        self.estimate = estimate  # the total is a guess (the last backup, the database's size): shown with ~
        self.done = 0
        self._probe = probe

    def add(self, count: int) -> None:
        self.done += count

    def value(self) -> int:
        """The count so far; a probe (a file's size) reads it where nothing on the data path counts."""
        if self._probe is None:
            return self.done
        try:
            return self._probe()
        except OSError:
            return self.done

    def words(self, final: bool = False) -> str:
        """`read 1.2 GiB of ~3.0 GiB (40%)`; `final`: the count alone (`read 3.1 GiB`), no share of a total."""
        value = self.value()
        if self.unit == "items":
            # A closing line keeps `3 of 4 tables` only where the total is known and was not reached.
            total = None if final and (self.estimate or self.total == value) else self.total
            label = self.one if (total or value) == 1 else self.label
            return f"{value} of {total} {label}" if total else f"{value} {label}"
        text = f"{self.label} {human_size(value)}"
        if self.total and not final:
            approx = "~" if self.estimate else ""
            text += f" of {approx}{human_size(self.total)} ({min(value * 100 // self.total, 100)}%)"
        return text


class Stage:
    """The counters of one long stage, and the line that shows them."""

    def __init__(self, title: str, clock: Clock) -> None:
        self.title = title
        self._clock = clock
        self._started = clock.monotonic()
        self._meters: list[Meter] = []
        self._doing: str | None = None
        # Items done since the last line: appended by one thread, drained by the log lines; a live display only peeks.
        self._finished: deque[str] = deque(maxlen=1000)

    def meter(self, label: str, total: int | None = None, *, unit: Unit = "bytes", estimate: bool = False,
              probe: Callable[[], int] | None = None, one: str | None = None) -> Meter:
        """A new count shown in the line, in the order made; the first byte count gives the rate and the ETA."""
        made = Meter(label, total, unit, estimate, probe, one)
        self._meters.append(made)
        return made

    def doing(self, text: str | None) -> None:
        """What the stage works on now (`loading public.orders`)."""
        self._doing = text

    def finished(self, item: str) -> None:
        """An item done (a table loaded): named in the next line."""
        self._finished.append(item)

    def elapsed(self) -> float:
        return max(self._clock.monotonic() - self._started, 0.0)

    def line(self, drain: bool = True) -> str:
        """`backup app/prod: read 1.2 GiB of ~3.0 GiB (40%), stored 310.0 MiB, 41.0 MiB/s, 30.0s elapsed, about 45.0s left`."""
        elapsed = self.elapsed()
        parts = [meter.words() for meter in self._meters]
        parts += self._rate(elapsed)
        parts.append(f"{human_duration(elapsed)} elapsed")
        if (eta := self._eta(elapsed)) is not None:
            parts.append(f"about {human_duration(eta)} left")
        parts += self._recent(drain)
        if self._doing:
            parts.append(self._doing)
        return f"{self.title}: " + ", ".join(parts)

    def totals(self) -> str:
        """A succeeded stage's closing line: `backup of app/prod finished: read 3.1 GiB, stored 800.0 MiB, 41.0 MiB/s, 1m 17s in all`.

        Counts only: a share of an estimate or a time left would be a guess about a stage that is over.
        """
        elapsed = self.elapsed()
        parts = [meter.words(final=True) for meter in self._meters]
        parts += self._rate(elapsed)
        parts.append(f"{human_duration(elapsed)} in all")
        parts += self._recent(drain=True)
        return f"{self.title} finished: " + ", ".join(parts)

    def _rate(self, elapsed: float) -> list[str]:
        """The average rate of the first byte count, when there is one."""
        measured = next((m for m in self._meters if m.unit == "bytes"), None)
        rate = measured.value() / elapsed if measured is not None and elapsed > 0 else 0.0
        return [f"{human_size(int(rate))}/s"] if rate > 0 else []

    def _recent(self, drain: bool) -> list[str]:
        """The items finished since the last line; `drain` forgets them once named."""
        if not self._finished:
            return []
        names = list(self._finished)
        more = ""
        if drain:
            for _ in names:
                self._finished.popleft()
            more = f" and {len(names) - _RECENT_SHOWN} more" if len(names) > _RECENT_SHOWN else ""
        return ["done: " + ", ".join(names[-_RECENT_SHOWN:]) + more]

    def _eta(self, elapsed: float) -> float | None:
        """Time left at the average rate so far, from the first count with a known total."""
        meter = next((m for m in self._meters if m.total), None)
        if meter is None or meter.total is None or elapsed <= 0:
            return None
        value = meter.value()
        if not 0 < value < meter.total:
            return None
        return (meter.total - value) * elapsed / value


class _Display:
    def start(self) -> None: ...

    def stop(self, ok: bool) -> None: ...


class _Lines(_Display):
    """A log line every `interval` seconds, from a daemon thread that ends with the stage."""

    def __init__(self, stage: Stage, interval: float) -> None:
        self._stage = stage
        self._interval = interval
        self._stop = threading.Event()
        self._shown = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="progress")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        # An Event, not the clock's sleep: the stage's end stops the wait at once.
        while not self._stop.wait(self._interval):
            self._show()

    def _show(self, closing: bool = False) -> None:
        try:
            log.info("%s", self._stage.totals() if closing else self._stage.line())
            self._shown += 1
        except Exception as exc:  # a display must never end the job
            log.debug("progress line failed: %s", exc)

    def stop(self, ok: bool) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if ok and self._shown:
            self._show(closing=True)  # a stage long enough to have shown lines ends with its totals


class _Live(_Display):
    """A live line on a terminal (rich); log lines written meanwhile go above it."""

    def __init__(self, stage: Stage, console: Console | None) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        self._stage = stage
        self._console = console or Console(file=sys.stderr)
        self._error: str | None = None  # why the line could not be made, logged once the display is gone
        self._live = Live(console=self._console, transient=True, refresh_per_second=4, redirect_stdout=False,
                          redirect_stderr=True, get_renderable=lambda: Text(self._text(), no_wrap=True, overflow="ellipsis"))
        self._handlers: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []

    def _text(self) -> str:
        # rich calls this from its refresh thread and from stop(): an error here would end the display, or the job.
        # No logging here: a log line goes through rich's console, which is drawing this very line.
        try:
            return self._stage.line(drain=False)
        except Exception as exc:
            self._error = self._error or f"{type(exc).__name__}: {exc}"
            return f"{self._stage.title}: working (no progress figures)"

    def start(self) -> None:
        real = sys.stderr
        self._live.start()
        # logging keeps the stream it was given: point it at the proxy rich put in sys.stderr, so lines
        # go above the live display instead of being overwritten by it.
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is real and sys.stderr is not real:
                self._handlers.append((handler, real))
                handler.setStream(sys.stderr)

    def stop(self, ok: bool) -> None:
        try:
            self._live.stop()
        finally:
            for handler, stream in self._handlers:
                handler.setStream(stream)
        if self._error:
            log.debug("progress line failed: %s", self._error)


class Progress:
    """Makes the display of each long stage of a job: live on a terminal, else a log line every interval."""

    def __init__(self, clock: Clock, interval: float, mode: Literal["live", "lines", "off"], console: Console | None = None) -> None:
        self._clock = clock
        self._interval = interval
        self._mode = mode
        self._console = console

    @classmethod
    def of(cls, settings: Settings, clock: Clock, stream: TextIO | None = None) -> Progress:
        """Live when the log goes to a terminal; plain lines every DB_BACKUP_PROGRESS_INTERVAL seconds otherwise."""
        out = stream or sys.stderr
        live = bool(getattr(out, "isatty", lambda: False)())
        return cls(clock, settings.progress_interval, "live" if live else "lines")

    @classmethod
    def off(cls, clock: Clock) -> Progress:
        """Counts but shows nothing (a caller that did not ask for progress)."""
        return cls(clock, 0.0, "off")

    @contextlib.contextmanager
    def stage(self, title: str) -> Iterator[Stage]:
        """A display for the `with` block; its thread ends with the block, an exception included."""
        stage = Stage(title, self._clock)
        display: _Display
        if self._mode == "live":
            display = _Live(stage, self._console)
        elif self._mode == "lines":
            display = _Lines(stage, self._interval)
        else:
            display = _Display()
        display.start()
        ok = False
        try:
            yield stage
            ok = True
        finally:
            display.stop(ok)


def quiet(progress: Progress | None, clock: Clock | None = None) -> Progress:
    """`progress`, or one that shows nothing."""
    if progress is not None:
        return progress
    return Progress.off(clock or SystemClock())
