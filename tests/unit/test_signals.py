"""Cancel signals held during a step that must not be torn in half."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from runner.errors import Interrupted
from runner.signals import CANCEL_SIGNALS, deferred_signals, on_signal


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


def test_a_signal_landing_while_handlers_are_put_back_leaves_none_on_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = {signum: signal.getsignal(signum) for signum in CANCEL_SIGNALS}
    for signum in CANCEL_SIGNALS:
        signal.signal(signum, on_signal)
    real_signal = signal.signal
    calls = 0

    def landing(signum: int, handler: Any) -> Any:
        nonlocal calls
        calls += 1
        result = real_signal(signum, handler)
        if calls == len(CANCEL_SIGNALS) + 1:  # right after the first handler came back
            raise Interrupted("cancelled by SIGINT")
        return result

    monkeypatch.setattr(signal, "signal", landing)
    try:
        with pytest.raises(Interrupted, match="cancelled by SIGINT"), deferred_signals():
            pass
        assert {signum: signal.getsignal(signum) for signum in CANCEL_SIGNALS} == dict.fromkeys(CANCEL_SIGNALS, on_signal)
    finally:
        monkeypatch.undo()
        for signum, handler in saved.items():
            signal.signal(signum, handler)
