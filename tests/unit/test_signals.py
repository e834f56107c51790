"""Cancel signals held during a step that must not be torn in half."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from runner.errors import Interrupted
from runner.signals import deferred_signals, on_signal


def test_a_signal_held_while_another_thread_runs_arrives_after_the_step() -> None:
    # Another live thread would take a signal the main thread masks: holding must not depend on masks.
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, args=(30,), daemon=True)
    other.start()
    previous = signal.signal(signal.SIGTERM, on_signal)
    finished_step = False
    try:
        with pytest.raises(Interrupted, match="cancelled by SIGTERM"), deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline:  # time for the signal to land, were it not held
                time.sleep(0.01)
            finished_step = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        other.join(timeout=5)
    assert finished_step


def test_handlers_are_put_back_when_nothing_arrived() -> None:
    previous = signal.signal(signal.SIGINT, on_signal)
    try:
        with deferred_signals():
            pass
        assert signal.getsignal(signal.SIGINT) is on_signal
    finally:
        signal.signal(signal.SIGINT, previous)
