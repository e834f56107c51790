"""Child processes run as one pipeline: each one's stderr collected, and the first to fail named."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

from ..errors import JobFailed
from .tools import ToolEnv

log = logging.getLogger(__name__)

Redirect = int | IO[bytes]  # a file, or subprocess.PIPE or DEVNULL
# Told each stderr line without its `name: ` prefix; True when it is progress (e.g. pg_restore --verbose), never an error.
InfoLines = Callable[[str], bool]
_CONTEXT_PREFIXES = ("command was:", "context:", "detail:", "hint:", "query was:")


class Tail:
    """Collects what a process writes to stderr, in a thread, so the pipe never fills.

    Keeps the last lines, and the first error with the lines that explain it (`Command was:`,
    `CONTEXT:`): later errors are often consequences, e.g. `a worker process died unexpectedly`.
    """

    def __init__(self, stream: IO[bytes], name: str, keep: int = 20, info: InfoLines | None = None) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self.first_error: list[str] = []
        self._name = name
        self._info = info
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True, name=f"{name}-stderr")
        self._thread.start()

    def _run(self, stream: IO[bytes]) -> None:
        collecting = False
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            log.debug("%s: %s", self._name, line)
            prefixed = line.startswith(f"{self._name}: ")
            bare = line.split(": ", 1)[1] if prefixed else line
            if prefixed and self._info is not None and self._is_info(bare):
                # Kept out of `lines` too: the last line shown for a failure is the tool's complaint, not its chatter;
                # and `collecting` stays as it was, since another worker's chatter may come between an error and its context.
                continue
            self.lines.append(line)
            if not self.first_error and _is_error(line):
                self.first_error.append(line)
                collecting = True
            elif collecting and bare.lower().startswith(_CONTEXT_PREFIXES) and len(self.first_error) < 3:
                self.first_error.append(bare)
            else:
                collecting = False

    def _is_info(self, bare: str) -> bool:
        assert self._info is not None
        try:
            return self._info(bare)
        except Exception as exc:  # progress must never hide what the tool said
            log.debug("%s: progress line not understood (%s)", self._name, exc)
            return False

    def join(self) -> None:
        self._thread.join(timeout=30)

    def last_error(self) -> str:
        """The first error and its context in one line; else the last line written."""
        if self.first_error:
            return _clip("; ".join(self.first_error))
        return _clip(self.lines[-1]) if self.lines else "no message"

    def mentions(self, text: str) -> bool:
        return any(text in line for line in self.lines) or any(text in line for line in self.first_error)


def _is_error(line: str) -> bool:
    lowered = line.lower()
    return "error" in lowered or "fatal" in lowered or "no space left" in lowered


def _clip(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Step:
    """One started process of a pipeline, named as messages call it."""

    name: str
    proc: subprocess.Popen[bytes]
    tail: Tail

    @property
    def victim(self) -> bool:
        """Died because the process it wrote to had already quit: a consequence, not the cause."""
        return self.proc.returncode == -13 or self.tail.mentions("Broken pipe")


class Pipeline:
    """The processes of one job, in the order data flows through them; a `with` block stops them
    all if it ends with an exception (a cancel included), so none outlives the job."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        if exc_type is not None:
            self.stop()

    def start(
        self, name: str, env: ToolEnv, argv: Iterable[str], *,
        stdin: Redirect = subprocess.DEVNULL, stdout: Redirect = subprocess.DEVNULL, into: Step | None = None,
        info: InfoLines | None = None,
    ) -> Step:
        """Start a process; with `into`, it writes into that step's stdin and comes before it.

        `info` picks out the stderr lines that report progress: they are neither errors nor the message shown."""
        if into is not None:
            assert into.proc.stdin is not None
            stdout = into.proc.stdin
        proc = env.spawn(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
        if into is not None:
            assert into.proc.stdin is not None
            into.proc.stdin.close()  # the new process holds it now
        assert proc.stderr is not None
        step = Step(name, proc, Tail(proc.stderr, name, info=info))
        self.steps.insert(self.steps.index(into) if into is not None else len(self.steps), step)
        return step

    @staticmethod
    def feed(step: Step, chunks: Iterable[bytes]) -> bool:
        """Write `chunks` into the step's stdin, then close it; False if it stopped reading early
        (its exit code and message say why)."""
        sink = step.proc.stdin
        assert sink is not None
        try:
            for chunk in chunks:
                sink.write(chunk)
            sink.close()
        except BrokenPipeError:
            with contextlib.suppress(BrokenPipeError):
                sink.close()
            return False
        return True

    def wait(self, timeout: float | None = None) -> None:
        """Wait for each process to exit and for all it wrote to stderr."""
        for step in self.steps:
            step.proc.wait(timeout=timeout)
            step.tail.join()

    def failure(self) -> JobFailed | None:
        """The first step that failed on its own account, with its exit code and message."""
        failed = [step for step in self.steps if step.proc.returncode not in (0, None)]
        for step in failed:
            step.tail.join()
        # zstd -d killed by SIGPIPE only says that pg_restore stopped reading: pg_restore says why.
        cause = next((step for step in failed if not step.victim), failed[0] if failed else None)
        if cause is None:
            return None
        return JobFailed(f"{cause.name} failed (exit {cause.proc.returncode}): {cause.tail.last_error()}")

    def stop(self) -> None:
        """Kill every process still running, then wait (bounded) for each."""
        for step in self.steps:
            if step.proc.poll() is None:
                step.proc.kill()
        for step in self.steps:
            with contextlib.suppress(subprocess.TimeoutExpired):
                step.proc.wait(timeout=30)
            step.tail.join()
