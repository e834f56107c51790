"""What commands print: tables, JSON, one-line results, and sizes and durations as people read them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from .backup import BackupResult
    from .catalog import BackupEntry
    from .restore import RestoreResult
    from .status import TargetStatus
    from .targets import Target


def human_size(size: int) -> str:
    """Binary units, labelled as such: 1,234,567,890 bytes is "1.1 GiB"."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def human_duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f}s"


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def table(rows: list[list[str]], header: list[str]) -> None:
    """Columns padded to their widest cell, trailing blanks trimmed."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def entry_to_json(entry: BackupEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "key": entry.key,
        "created": entry.created_at.isoformat().replace("+00:00", "Z"),
        "size_bytes": entry.size_bytes if entry.has_dump else None,
        "sha256": entry.sha256,
        "status": entry.status,
        "complete": entry.complete,
        "verified": entry.verified,  # the dump's sha256 checked by reading it: nothing does so yet
        "reason": entry.problem,
        "compression": entry.manifest.compression if entry.manifest else None,
    }


def entry_row(entry: BackupEntry) -> list[str]:
    return [entry.id, entry.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            human_size(entry.size_bytes) if entry.has_dump else "-", (entry.sha256 or "-")[:16],
            f"damaged: {entry.problem}" if entry.problem else entry.status]


ENTRY_HEADER = ["ID", "CREATED", "SIZE", "SHA256", "STATUS"]


def target_to_json(target: Target) -> dict[str, Any]:
    return {"identifier": target.identifier, "env": target.env, "schedule": target.schedule,
            "protected": target.protected, "executor": target.executor}


def target_row(target: Target) -> list[str]:
    return [target.identifier, target.env, target.schedule or "-", "yes" if target.protected else "no", target.executor]


TARGET_HEADER = ["IDENTIFIER", "ENV", "SCHEDULE", "PROTECTED", "EXECUTOR"]


def status_to_json(status: TargetStatus) -> dict[str, Any]:
    newest, age = status.newest, status.age
    return {"identifier": status.target.identifier, "env": status.target.env, "newest": newest.id if newest else None,
            "status": newest.status if newest else None,
            "age_hours": round(age.total_seconds() / 3600, 1) if age is not None else None, "stale": status.stale,
            "damaged": [{"id": d.id, "reason": d.problem} for d in status.damaged]}


def status_row(row: dict[str, Any]) -> list[str]:
    age = "-" if row["age_hours"] is None else f"{row['age_hours']}h"
    return [row["identifier"], row["env"], row["newest"] or "none", age, "STALE" if row["stale"] else "ok"]


STATUS_HEADER = ["IDENTIFIER", "ENV", "NEWEST", "AGE", "STATE"]


def backup_line(target: Target, result: BackupResult) -> str:
    m = result.manifest
    return (f"backup {m.id} of {target.name}: {result.uri} ({human_size(m.size_bytes)}, {m.compression}, "
            f"{m.duration_s:.1f}s, sha256 {m.sha256})")


def restore_line(result: RestoreResult) -> str:
    kept = f"; previous database kept as {result.previous}" if result.previous else ""
    checked = "sha256 verified" if result.verified else "legacy dump, no checksum"
    return (f"restored {result.source} backup {result.backup_id} into {result.dest} "
            f"({human_size(result.size_bytes)}, {result.duration_s:.1f}s, {result.mode}, {checked}){kept}")
