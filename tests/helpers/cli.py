"""The CLI run inside the test process, so a fault can be injected into it."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

import pytest

from runner import cli
from runner.signals import CANCEL_SIGNALS


@dataclass(frozen=True)
class CliRun:
    code: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err

    @property
    def err_lines(self) -> list[str]:
        return self.err.strip().splitlines()


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> CliRun:
    """cli.main(argv) here: its exit code and what it printed; signal handlers and logging put back."""
    handlers = {signum: signal.getsignal(signum) for signum in CANCEL_SIGNALS}
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    # A moto server in this process logs each request: not what the user of the CLI sees.
    werkzeug = logging.getLogger("werkzeug")
    was_disabled, werkzeug.disabled = werkzeug.disabled, True
    try:
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
    finally:
        werkzeug.disabled = was_disabled
        # cli.main points logging at this test's captured stderr, which closes after the test.
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    captured = capsys.readouterr()
    return CliRun(int(exited.value.code or 0), captured.out, captured.err)
