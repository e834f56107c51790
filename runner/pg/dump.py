"""pg_dump's pipeline: the plan (flags, zstd or not) and the stream of the bytes to store."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import IO

from ..compression import Codec, Compression
from ..credentials import Connection
from ..errors import BadInput, JobFailed
from ..output import human_duration
from ..progress import Meter
from .pipeline import Pipeline, Tail
from .tools import compressor_env, libpq_env

CHUNK = 1 << 20


@dataclass(frozen=True)
class DumpPlan:
    argv: tuple[str, ...]
    compressor: Codec | None
    compression: str
    compressed_by: str
    lock_wait: timedelta | None = None

    @property
    def raw_countable(self) -> bool:
        """pg_dump's own output passes through db-backup (not when pg_dump compresses it itself)."""
        return self.compressor is not None or self.compression == "none"


def plan_dump(pg_dump: str, compression: Compression, lock_wait: timedelta | None = None) -> DumpPlan:
    """zstd always wraps pg_dump's uncompressed stream, whatever the client version.

    pg_dump 16+ could compress with zstd itself, but single-threaded, and its archives need
    pg_restore 16+: a laptop with older client tools could not restore the Fargate task's backups.
    """
    base: tuple[str, ...] = (pg_dump, "--format=custom", "--no-password")
    if lock_wait is not None:
        # Without it pg_dump waits forever for a table that a migration holds ACCESS EXCLUSIVE.
        base += (f"--lock-wait-timeout={max(1, int(lock_wait.total_seconds() * 1000))}",)
    if compression.method == "zstd":
        zstd = shutil.which("zstd")
        if not zstd:
            raise BadInput("compression zstd needs the zstd program; install it (apt-get install zstd) or set compression: gzip")
        codec = Codec("zstd", (zstd, f"-{compression.level}", "-T0", "-q", "-c"))
        return DumpPlan((*base, "--compress=0"), codec, str(compression), "zstd", lock_wait)
    level = compression.level if compression.method == "gzip" else 0
    return DumpPlan((*base, f"--compress={level}"), None, str(compression), "pg_dump", lock_wait)


_LOCKED_TABLE = re.compile(r"LOCK TABLE (.+?) IN \w+ \w+ MODE")


def _lock_timeout(plan: DumpPlan, tail: Tail) -> JobFailed | None:
    """pg_dump gave up waiting for a table's lock: name the table and what to do."""
    if plan.lock_wait is None:
        return None
    # pg_dump 15 waits under statement_timeout, newer ones under lock_timeout; either way the query named is the LOCK.
    table = next((m.group(1) for line in [*tail.first_error, *tail.lines] if (m := _LOCKED_TABLE.search(line))), None)
    if table is None or not (tail.mentions("statement timeout") or tail.mentions("lock timeout")):
        return None
    return JobFailed(
        f"pg_dump could not lock {table} within {human_duration(plan.lock_wait.total_seconds())} (lock_wait_timeout): "
        "another session holds a conflicting lock, e.g. a migration; find it in pg_locks and retry, "
        "or raise lock_wait_timeout in targets.yaml"
    )


class _Pump:
    """Moves pg_dump's output into the compressor and counts it; splice() avoids copying on Linux."""

    def __init__(self, source: IO[bytes], sink: IO[bytes], meter: Meter | None = None) -> None:
        self.count = 0
        self.meter = meter
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, args=(source, sink), daemon=True, name="dump-pump")
        self._thread.start()

    def _run(self, source: IO[bytes], sink: IO[bytes]) -> None:
        src, dst = source.fileno(), sink.fileno()
        try:
            splice = getattr(os, "splice", None)
            while True:
                if splice is not None:
                    moved = splice(src, dst, CHUNK)
                else:
                    data = os.read(src, CHUNK)
                    moved = len(data)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(dst, view):]
                if moved == 0:
                    break
                self.count += moved
                if self.meter is not None:
                    self.meter.add(moved)
        except OSError as exc:  # reported by dump_stream: an early end here means a truncated dump
            self.error = exc
        finally:
            source.close()
            sink.close()

    def join(self) -> None:
        self._thread.join(timeout=300)

    def failure(self) -> JobFailed | None:
        if self._thread.is_alive():
            return JobFailed("moving pg_dump's output into zstd did not finish; the backup is incomplete and was not kept")
        if self.error is None:
            return None
        return JobFailed(f"moving pg_dump's output into zstd failed ({self.error}); the backup is incomplete and was not kept")


class DumpOutput:
    """The stored bytes, chunk by chunk; `raw_bytes` is pg_dump's own output size once done."""

    def __init__(self, out: IO[bytes], pump: _Pump | None, meter: Meter | None = None) -> None:
        self._out = out
        self._pump = pump
        self._meter = meter  # pg_dump's output, when it is the stored stream itself
        self.raw_bytes: int | None = None
        self._seen = 0

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self._out.read(CHUNK):
            self._seen += len(chunk)
            if self._meter is not None:
                self._meter.add(len(chunk))
            yield chunk

    def finish(self, uncompressed: bool) -> None:
        if self._pump is not None:
            self._pump.join()
            self.raw_bytes = self._pump.count
        elif uncompressed:
            self.raw_bytes = self._seen


@contextlib.contextmanager
def dump_stream(conn: Connection, plan: DumpPlan, read: Meter | None = None) -> Iterator[DumpOutput]:
    """Yield pg_dump's (optionally compressed) output; raise JobFailed if any step fails.

    `read` counts pg_dump's own output as it comes (not for gzip: pg_dump compresses it itself)."""
    with libpq_env(conn) as env, Pipeline() as pipe:
        dump = pipe.start("pg_dump", env, plan.argv, stdout=subprocess.PIPE)
        assert dump.proc.stdout is not None
        out: IO[bytes] = dump.proc.stdout
        pump = None
        if plan.compressor:
            comp = pipe.start(plan.compressor.name, compressor_env(), plan.compressor.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert comp.proc.stdin is not None and comp.proc.stdout is not None
            pump = _Pump(dump.proc.stdout, comp.proc.stdin, read)
            out = comp.proc.stdout
        output = DumpOutput(out, pump, read if pump is None and plan.raw_countable else None)
        yield output
        out.close()
        pipe.wait(timeout=300)
        output.finish(uncompressed=plan.compressed_by == "pg_dump" and plan.compression == "none")
        # zstd ends cleanly on an early EOF, so a failed pump would otherwise store a truncated
        # dump. A broken pipe means the compressor died: its exit code and message say why.
        pump_failure = pump.failure() if pump is not None else None
        if pump is not None and pump_failure is not None and not isinstance(pump.error, BrokenPipeError):
            raise pump_failure
        failure = pipe.failure() or pump_failure
        if failure:
            raise _lock_timeout(plan, dump.tail) or failure
