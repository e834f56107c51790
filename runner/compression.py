"""Compression: parse `zstd[:LEVEL]`, `gzip[:LEVEL]`, `none`, sniff archives, name their decompressor."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Literal

from .errors import BadInput, JobFailed

Method = Literal["zstd", "gzip", "none"]

_RANGES: dict[str, tuple[int, int, int]] = {
    # method: (lowest, highest, default level)
    "zstd": (1, 19, 3),
    "gzip": (1, 9, 6),
}

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
PGDMP_MAGIC = b"PGDMP"


@dataclass(frozen=True)
class Compression:
    method: Method
    level: int = 0

    def __str__(self) -> str:
        return self.method if self.method == "none" else f"{self.method}:{self.level}"


def parse_compression(spec: str) -> Compression:
    """Parse a compression setting; ValueError names what is accepted."""
    method, _, level_text = spec.strip().lower().partition(":")
    if method == "none" and not level_text:
        return Compression("none", 0)
    if method not in _RANGES:
        raise ValueError(
            f"unknown compression {spec!r}; use zstd[:LEVEL], gzip[:LEVEL] or none"
        )
    low, high, default = _RANGES[method]
    if not level_text:
        return Compression(method, default)  # type: ignore[arg-type]
    if not level_text.isdigit() or not low <= int(level_text) <= high:
        raise ValueError(f"{method} level must be a whole number from {low} to {high}")
    return Compression(method, int(level_text))  # type: ignore[arg-type]


Kind = Literal["zstd", "gzip", "custom", "unknown"]


def sniff(head: bytes) -> Kind:
    """Name the container of a stored dump from its first bytes."""
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(PGDMP_MAGIC):
        return "custom"
    return "unknown"


@dataclass(frozen=True)
class Codec:
    """A zstd or gzip process a dump streams through: its name in messages, and its argv."""

    name: str
    argv: tuple[str, ...]


def decompressor(kind: Kind, where: str) -> Codec | None:
    """What turns a stored dump of this `kind` back into a custom archive; None if it is one."""
    if kind == "custom":
        return None
    if kind == "zstd":
        zstd = shutil.which("zstd")
        if not zstd:
            raise BadInput("this backup is zstd-compressed; install zstd (apt-get install zstd) to restore it")
        return Codec("zstd", (zstd, "-d", "-q", "-c"))
    if kind == "gzip":
        return Codec("gzip", (shutil.which("gzip") or "gzip", "-d", "-c"))
    raise JobFailed(f"{where} is not a PostgreSQL custom-format dump (unknown header); it cannot be restored")
