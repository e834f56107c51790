"""What a timed step yields: wall time, CPU of the tools and of moto, peak RSS; and the targets."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
RSS_LIMIT_MB = 150.0


@dataclass(frozen=True)
class Sample:
    """One timed run of a step."""

    wall: float
    cpu_tools: float  # CPU seconds of every child process reaped during the step (and theirs)
    cpu_s3: float  # CPU seconds of this process during the step: the in-process moto S3 server
    #                (with real S3, --s3-bucket, meaningless: reported as n/a)
    rss_kib: int | None = None  # peak RSS of the db-backup process (VmHWM), when it ran


def measured(action: Callable[[], T]) -> tuple[Sample, T]:
    """Wall time and CPU of a step. The PostgreSQL server's own CPU is not included."""
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = action()
    wall = time.perf_counter() - started
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s3 = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    cpu_tools = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    return Sample(wall, cpu_tools, cpu_s3), result


@dataclass
class Measure:
    """Every run of one step, and what the step produced (a size, the mode db-backup chose)."""

    name: str
    samples: list[Sample] = field(default_factory=list)
    size: int | None = None
    note: str = ""

    @property
    def times(self) -> list[float]:
        return [s.wall for s in self.samples]

    def pick(self, stat: str) -> Sample | None:
        """The reported run: the fastest (best) or the median one."""
        if not self.samples:
            return None
        ordered = sorted(self.samples, key=lambda s: s.wall)
        return ordered[0] if stat == "best" else ordered[(len(ordered) - 1) // 2]

    def value(self, stat: str) -> float:
        if not self.samples:
            return float("nan")
        return min(self.times) if stat == "best" else statistics.median(self.times)

    @property
    def rss_mb(self) -> float | None:
        peaks = [s.rss_kib for s in self.samples if s.rss_kib]
        return max(peaks) / 1024 if peaks else None

    def as_json(self, stat: str, s3_cpu: bool = True) -> dict[str, Any]:
        return {"name": self.name, "value": round(self.value(stat), 3), "size": self.size,
                "rss_mb": None if self.rss_mb is None else round(self.rss_mb, 1), "note": self.note,
                "samples": [{"wall": round(s.wall, 3), "cpu_tools": round(s.cpu_tools, 3),
                             "cpu_s3": round(s.cpu_s3, 3) if s3_cpu else None,
                             "rss_kib": s.rss_kib}
                            for s in self.samples]}


@dataclass(frozen=True)
class Target:
    """One goal of the old system's replacement: a measured value against its limit."""

    capability: str
    text: str
    value: float
    limit: float
    unit: str = "x"

    @property
    def ok(self) -> bool:
        return self.value <= self.limit if self.unit in ("x", "s") else self.value < self.limit

    def line(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        if self.unit == "x":
            return f"{verdict}  [{self.capability}] {self.text}: {self.value:.2f}x (<= {self.limit:.2f}x)"
        if self.unit == "s":
            return f"{verdict}  [{self.capability}] {self.text}: {self.value:+.2f}s (<= {self.limit:.2f}s)"
        decimal = self.value * (1 << 20) / 1e6
        return (f"{verdict}  [{self.capability}] {self.text}: {self.value:.1f} MiB = {decimal:.1f} MB "
                f"(< {self.limit:.0f} MiB)")

    def as_json(self) -> dict[str, Any]:
        return {"capability": self.capability, "text": self.text, "value": self.value, "limit": self.limit,
                "ok": self.ok}
