"""Compression settings: parse `zstd[:LEVEL]`, `gzip[:LEVEL]`, `none`, and sniff archives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


def sniff(head: bytes) -> str:
    """Name the container of a stored dump from its first bytes."""
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(PGDMP_MAGIC):
        return "custom"
    return "unknown"
