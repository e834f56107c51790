"""The process's cancel policy: which signals cancel a run, the handler for them, and holding them."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import NoReturn

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
    """Hold the cancel signals during a step that must not be torn in half; they arrive right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(CANCEL_SIGNALS))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
