"""The process's cancel policy: which signals cancel a run, the handler for them, and holding them."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn

from .errors import Interrupted

# GitHub cancels with SIGINT then SIGTERM (some runners SIGHUP), ECS stops a task with SIGTERM.
CANCEL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def on_signal(signum: int, _frame: FrameType | None) -> NoReturn:
    """Turn a cancel signal into Interrupted, which names it."""
    raise Interrupted(f"cancelled by {signal.Signals(signum).name}")


def install() -> None:
    """Make every cancel signal raise Interrupted in the main thread."""
    for signum in CANCEL_SIGNALS:
        signal.signal(signum, on_signal)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold the cancel signals during a step that must not be torn in half; the first arrives right after.

    Held by handlers that only take note, not by the thread's signal mask: any other thread (an
    HTTP pool, a log reader) would take a masked signal in the main thread's place, and Python
    would run the handler in the main thread all the same.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, _frame: FrameType | None) -> None:
        held.append(signum)

    previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
    try:
        for signum in CANCEL_SIGNALS:
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, hold)
    except BaseException:
        _put_back(previous)  # a signal that landed before all were held still cancels
        raise
    try:
        yield
    finally:
        _put_back(previous)
        if held:
            signal.raise_signal(held[0])  # to the handler it had before, whatever that is


def _put_back(previous: dict[int, Callable[[int, FrameType | None], Any] | int | None]) -> None:
    """Restore every handler even when a signal lands meanwhile (its cancel is raised afterwards)."""
    remaining = list(previous.items())
    pending: BaseException | None = None
    while remaining:
        try:
            while remaining:
                signum, handler = remaining[0]
                signal.signal(signum, handler)
                remaining.pop(0)
        except (Interrupted, KeyboardInterrupt) as exc:
            pending = pending or exc
    if pending is not None:
        raise pending
