"""Child processes run as one pipeline: each one's stderr collected, and the first to fail named."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
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
# Told each message on stderr without its `name: ` prefix (or a line that lost it); True when it is progress
# (e.g. pg_restore --verbose), never an error.
InfoLines = Callable[[str], bool]
# Linux pipes hold 64 KiB by default: a dump crossing one wakes its reader and writer every 64 KiB.
PIPE_BYTES = 1 << 20  # the most an unprivileged process may ask for (/proc/sys/fs/pipe-max-size)


def widen(pipe: IO[bytes]) -> None:
    """Give a pipe PIPE_BYTES of buffer, so the processes and threads on its two ends switch 16 times less often.

    Best effort: a system that refuses (a lower pipe-max-size, another OS) keeps the default."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), setsize, PIPE_BYTES)


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
        self._prefix = re.compile(re.escape(f"{name}:"))
        self._levelled = name in _PG_TOOLS
        self._collecting = False
        self._pending: str | None = None  # a `name: error: ` whose message another process's line cut off
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True, name=f"{name}-stderr")
        self._thread.start()

    def _run(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            log.debug("%s: %s", self._name, line)
            # pg_restore -j's processes share one stderr and each writes `name:`, ` `, `error: ` and its message
            # separately, so lines come spliced (`pg_restore:pg_restore: ...`, or a message with no prefix): every
            # `name:` starts a message of its own.
            head, *prefixed = self._prefix.split(line)
            if head.strip():
                self._orphan(head.strip())
            for piece in prefixed:
                if piece.strip():
                    self._prefixed(piece.strip())

    def _prefixed(self, bare: str) -> None:
        level = _LEVEL.match(bare) if self._levelled else None
        message = bare[level.end():] if level else bare
        if level and not message:
            self._pending = level[1]
            return
        if self._is_info(message):
            if level:  # progress never has a level: it was another process's, whose message is still to come
                self._pending = level[1]
            # Kept out of `lines` too: the last line shown for a failure is the tool's complaint, not its chatter;
            # and `collecting` stays as it was, since another worker's chatter may come between an error and its context.
            return
        self._take(f"{self._name}: {bare}", bare, prefixed=True)

    def _orphan(self, text: str) -> None:
        """A line without the tool's prefix: a message's continuation (`DETAIL:`), or a message whose prefix
        another process's line took."""
        if self._is_info(text):
            return
        if self._pending is not None:
            bare, self._pending = f"{self._pending}: {text}", None
            self._take(f"{self._name}: {bare}", bare, prefixed=True)
        else:
            self._take(text, text, prefixed=False)

    def _take(self, line: str, bare: str, prefixed: bool) -> None:
        self.lines.append(line)
        if not self.first_error and self._is_error(bare, prefixed):
            self.first_error.append(line)
            self._collecting = True
        elif self._collecting and bare.lower().startswith(_CONTEXT_PREFIXES) and len(self.first_error) < 3:
            self.first_error.append(bare)
        else:
            self._collecting = False

    def _is_info(self, message: str) -> bool:
        if self._info is None:
            return False
        try:
            return self._info(message)
        except Exception as exc:  # progress must never hide what the tool said
            log.debug("%s: progress line not understood (%s)", self._name, exc)
            return False

    def _is_error(self, text: str, prefixed: bool) -> bool:
        """By the message's form, never by a word anywhere in it: a table may be called `error_log`."""
        lowered = text.lower()
        if "no space left" in lowered:
            return True
        if not self._levelled:  # zstd, gzip: no levels, and no names from the database in what they say
            return "error" in lowered or "fatal" in lowered
        if text.startswith(_SERVER_ERRORS):
            return True
        return prefixed and (_PG_ERROR.match(lowered) is not None or any(f"{s}  " in text for s in _SERVER_ERRORS))

    def join(self) -> None:
        self._thread.join(timeout=30)

    def last_error(self) -> str:
        """The first error and its context in one line; else the last line written."""
        if self.first_error:
            return _clip("; ".join(self.first_error))
        return _clip(self.lines[-1]) if self.lines else "no message"

    def mentions(self, text: str) -> bool:
        return any(text in line for line in self.lines) or any(text in line for line in self.first_error)


# Tools that log as PostgreSQL's front ends do: `name: error: message`, `name: detail: ...` (older ones: `fatal:`,
# or `name: [archiver (db)] Error ...`), with the server's own `ERROR:  ...` inside or on the next lines.
_PG_TOOLS = frozenset({"pg_dump", "pg_dumpall", "pg_restore"})
_LEVEL = re.compile(r"(error|fatal|warning|detail|hint):(?: |$)", re.IGNORECASE)
_PG_ERROR = re.compile(r"(?:\[[^\]]*\] )?(?:error|fatal)\b")
_SERVER_ERRORS = ("ERROR:", "FATAL:", "PANIC:")


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
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                widen(pipe)
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
