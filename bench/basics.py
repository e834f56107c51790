"""What every part of the bench uses: its error, its log line, sizes, and running child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from runner.pg.pipeline import Pipeline, Step
from runner.pg.tools import ToolEnv

REPO = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """The benchmark itself broke (exit 1), as opposed to a target that failed (exit 3)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def mib(size: float) -> str:
    return f"{size / (1 << 20):,.1f} MB"


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def venv_python() -> str:
    candidate = REPO / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def _name(argv: Sequence[str]) -> str:
    """The program a stage runs, as its messages name it (past a `taskset -c N` wrapper)."""
    program = argv[3] if argv[0] == "taskset" and len(argv) > 3 else argv[0]
    return Path(program).name


def run_pipeline(stages: Sequence[Sequence[str]], env: Mapping[str, str] | None = None,
                 sink: int | IO[bytes] = subprocess.DEVNULL,
                 source: int | IO[bytes] = subprocess.DEVNULL, timeout: float = 3600) -> None:
    """stage1 | stage2 | ... > sink, without a shell, through the engine's own Pipeline.

    Raises BenchError naming the stage that failed on its own account, with its first error.
    """
    tools = ToolEnv(dict(os.environ if env is None else env))
    with Pipeline() as pipe:
        step: Step | None = None
        for index in range(len(stages) - 1, -1, -1):  # the engine starts the reader first
            argv = list(stages[index])
            stdin = source if index == 0 else subprocess.PIPE
            if step is None:
                step = pipe.start(_name(argv), tools, argv, stdin=stdin, stdout=sink)
            else:
                step = pipe.start(_name(argv), tools, argv, stdin=stdin, into=step)
        pipe.wait(timeout)
        failure = pipe.failure()
    if failure is not None:
        raise BenchError(str(failure))


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 3600) -> None:
    """One command, its output discarded; BenchError if it fails."""
    run_pipeline([argv], env, timeout=timeout)
