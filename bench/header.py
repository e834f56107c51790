"""What the run header says about the machine, the tools and the repository."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

from .basics import REPO


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / (1 << 20):.0f} GB RAM"
    cores = len(os.sched_getaffinity(0))
    return f"{cores} cores ({cpu}){mem}, {platform.system()} {platform.release()}"


def versions(bindir: Path) -> str:
    out = []
    for argv in ([str(bindir / "pg_dump"), "--version"], ["zstd", "--version"]):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out.append(subprocess.run(argv, capture_output=True, text=True, check=False,
                                      timeout=30).stdout.strip().strip("*").strip())
    with contextlib.suppress(Exception):  # moto is not needed with --s3-bucket
        import boto3
        import moto

        out.append(f"boto3 {boto3.__version__}, moto {moto.__version__}, "
                   f"Python {platform.python_version()}")
    return "; ".join(out)


def git_head() -> str:
    """The repository's commit, and whether runner/ has uncommitted changes."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "runner"],
                               capture_output=True, text=True, check=False,
                               timeout=10).stdout.strip()
        return head + (" + uncommitted runner/ changes" if dirty else "")
    return "unknown"
