"""The pipes a pipeline creates hold 1 MiB, so a dump crossing them wakes its two ends 16 times less often."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading

import pytest

from runner.pg.pipeline import PIPE_BYTES, Pipeline
from runner.pg.tools import compressor_env


def _can_widen() -> bool:
    """This system lets this user have a pipe of PIPE_BYTES (pipe-max-size, the user's pipe-user-pages-soft)."""
    if not hasattr(fcntl, "F_SETPIPE_SZ"):
        return False
    read, write = os.pipe()
    try:
        return fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_BYTES) >= PIPE_BYTES
    except OSError:
        return False
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.skipif(not _can_widen(), reason="this system does not allow this user 1 MiB pipes (widen() keeps the default)")
def test_a_steps_pipes_are_widened_and_the_bytes_still_arrive_whole() -> None:
    data = bytes(range(256)) * 20_000  # 5 MB: more than a widened pipe holds, so both ends must keep moving
    with Pipeline() as pipe:
        step = pipe.start("cat", compressor_env(), ["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert step.proc.stdin is not None and step.proc.stdout is not None
        sizes = [fcntl.fcntl(f.fileno(), fcntl.F_GETPIPE_SZ) for f in (step.proc.stdin, step.proc.stdout)]
        out = bytearray()

        def drain() -> None:
            assert step.proc.stdout is not None
            while chunk := step.proc.stdout.read(1 << 16):
                out.extend(chunk)

        reader = threading.Thread(target=drain)
        reader.start()
        assert Pipeline.feed(step, [data[i:i + 100_000] for i in range(0, len(data), 100_000)])
        reader.join(timeout=30)
        assert not reader.is_alive()
        pipe.wait(timeout=30)

    assert sizes == [PIPE_BYTES, PIPE_BYTES]
    assert bytes(out) == data
