"""What commands print: tables, JSON, one-line results, and sizes and durations as people read them."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import typer

from .words import plural, sessions_ended

if TYPE_CHECKING:
    from datetime import datetime

    from .backup import BackupResult
    from .catalog import BackupEntry
    from .history import History, HistoryRow
    from .records import PinRecord
    from .restore import RestoreResult
    from .status import Proof, TargetStatus
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


def human_age(age: timedelta) -> str:
    """Ages as an operator says them: 45m, 26h, 9d 4h."""
    minutes = int(age.total_seconds() // 60)
    if minutes < 60:
        return f"{max(minutes, 0)}m"
    hours = minutes // 60
    if hours < 72:
        return f"{hours}h"
    days, rest = divmod(hours, 24)
    return f"{days}d {rest}h" if rest else f"{days}d"


MINUS = "\N{MINUS SIGN}"


def change_words(change: float | None) -> str:
    """-0.62 is "-62% vs median", written with a real minus sign so it reads as a drop at a glance."""
    if change is None:
        return "-"
    percent = round(change * 100)
    return f"{MINUS if percent < 0 else '+'}{abs(percent)}% vs median"


def _stamp(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def table(rows: list[list[str]], header: list[str]) -> None:
    """Columns padded to their widest cell, trailing blanks trimmed."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def pin_words(pin: PinRecord | None) -> str:
    return "" if pin is None else "pinned" + (f": {pin.reason}" if pin.reason else f" by {pin.by}")


def pin_to_json(pin: PinRecord | None) -> dict[str, Any] | None:
    return None if pin is None else {"by": pin.by, "at": _stamp(pin.changed_at), "reason": pin.reason}


def entry_to_json(entry: BackupEntry, pin: PinRecord | None = None) -> dict[str, Any]:
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
        "pinned": pin_to_json(pin),
        "uncompressed_bytes": entry.manifest.uncompressed_bytes if entry.manifest else None,
        "duration_s": entry.manifest.duration_s if entry.manifest else None,
    }


def entry_row(entry: BackupEntry, pin: PinRecord | None = None) -> list[str]:
    status = f"damaged: {entry.problem}" if entry.problem else entry.status
    manifest = entry.manifest
    # Only zstd and uncompressed dumps know their original size; gzip's is unknown without reading it.
    original = manifest.uncompressed_bytes if manifest else None
    return [entry.id, entry.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            human_size(entry.size_bytes) if entry.has_dump else "-",
            human_size(original) if original is not None else "-",
            human_duration(manifest.duration_s) if manifest else "-",
            (entry.sha256 or "-")[:16], f"{status}, {pin_words(pin)}" if pin else status]


ENTRY_HEADER = ["ID", "CREATED", "SIZE", "ORIGINAL", "DURATION", "SHA256", "STATUS"]


def shown_line(shown: int, total: int) -> str | None:
    """Said below a list the limit cut short; None when everything is shown."""
    return f"{shown} of {plural(total, 'backup')} shown (use --limit to see more)" if shown < total else None


def target_to_json(target: Target) -> dict[str, Any]:
    return {"identifier": target.identifier, "env": target.env, "schedule": target.schedule,
            "protected": target.protected, "executor": target.executor}


def target_row(target: Target) -> list[str]:
    return [target.identifier, target.env, target.schedule or "-", "yes" if target.protected else "no", target.executor]


TARGET_HEADER = ["IDENTIFIER", "ENV", "SCHEDULE", "PROTECTED", "EXECUTOR"]


def _proof_to_json(proof: Proof | None) -> dict[str, Any] | None:
    if proof is None:
        return None
    return {"backup": proof.backup_id, "at": _stamp(proof.at), "age_hours": round(proof.age.total_seconds() / 3600, 1),
            "ok": proof.ok, "problem": proof.problem}


def status_to_json(status: TargetStatus) -> dict[str, Any]:
    newest, age, shrink = status.newest, status.age, status.shrink
    return {"identifier": status.target.identifier, "env": status.target.env, "newest": newest.id if newest else None,
            "status": newest.status if newest else None,
            "age_hours": round(age.total_seconds() / 3600, 1) if age is not None else None, "stale": status.stale,
            "damaged": [{"id": d.id, "reason": d.problem} for d in status.damaged],
            "size_bytes": newest.size_bytes if newest and newest.has_dump else None,
            "trend": None if shrink is None else {
                "measure": shrink.measure, "size_bytes": shrink.size,
                "median_bytes": round(shrink.median) if shrink.median is not None else None,
                "change": round(shrink.change, 4) if shrink.change is not None else None, "previous": shrink.previous,
                "threshold": shrink.policy.threshold, "window": shrink.policy.window, "shrunk": shrink.shrunk},
            "shrink_alarm": status.shrink_alarm,
            "acknowledged": None if status.ack is None else {
                "by": status.ack.by, "at": _stamp(status.ack.acknowledged_at), "reason": status.ack.reason},
            "last_verify": _proof_to_json(status.last_verify), "last_drill": _proof_to_json(status.last_drill),
            "problems": list(status.problems)}


def _proof_cell(proof: dict[str, Any] | None) -> str:
    if proof is None:
        return "-"
    return f"{'ok' if proof['ok'] else 'FAILED'} {human_age(timedelta(hours=proof['age_hours']))} ago"


def _state(row: dict[str, Any]) -> str:
    states = ["STALE"] if row["stale"] else []
    if row["shrink_alarm"]:
        states.append("SHRUNK")
    elif row["trend"] and row["trend"]["shrunk"]:
        states.append("shrunk, acknowledged")
    if row["last_verify"] and not row["last_verify"]["ok"]:
        states.append("VERIFY")
    if any("drill" in problem for problem in row["problems"]):
        states.append("DRILL")
    return ", ".join(states) or "ok"


def status_row(row: dict[str, Any]) -> list[str]:
    age = "-" if row["age_hours"] is None else f"{row['age_hours']}h"
    size = "-" if row["size_bytes"] is None else human_size(row["size_bytes"])
    trend = change_words(row["trend"]["change"]) if row["trend"] else "-"
    return [row["identifier"], row["env"], row["newest"] or "none", age, size, trend,
            _proof_cell(row["last_verify"]), _proof_cell(row["last_drill"]), _state(row)]


STATUS_HEADER = ["IDENTIFIER", "ENV", "NEWEST", "AGE", "SIZE", "TREND", "VERIFY", "DRILL", "STATE"]


def status_markdown(rows: list[dict[str, Any]]) -> str:
    """The status table for a job summary, its problems listed below it."""
    out = ["### Backup status", "", "| " + " | ".join(h.title() for h in STATUS_HEADER) + " |",
           "|" + "---|" * len(STATUS_HEADER)]
    for row in rows:
        cells = status_row(row)
        icon = "✅" if cells[-1] in ("ok", "shrunk, acknowledged") else "❌"
        cells[-1] = f"{icon} {cells[-1]}"
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    problems = [p for row in rows for p in row["problems"]]
    if problems:
        out += ["", *(f"- {p}" for p in problems)]
    return "\n".join(out) + "\n\n"


def history_row_to_json(row: HistoryRow) -> dict[str, Any]:
    shrink, verify, drill = row.shrink, row.verify, row.drill
    return {
        **entry_to_json(row.entry, row.pin),
        "uncompressed_bytes": row.uncompressed_bytes, "duration_s": row.duration_s,
        "rate_bytes_per_s": round(row.rate) if row.rate is not None else None,
        "verify": None if verify is None else {"at": _stamp(verify.checked_at), "ok": verify.ok, "problem": verify.problem},
        "drill": None if drill is None else {"at": _stamp(drill.checked_at), "ok": drill.ok, "problem": drill.problem,
                                             "restore_duration_s": drill.restore_duration_s},
        "acknowledged": None if row.ack is None else {"by": row.ack.by, "at": _stamp(row.ack.acknowledged_at),
                                                      "reason": row.ack.reason},
        "median_bytes": round(shrink.median) if shrink and shrink.median is not None else None,
        "change": round(shrink.change, 4) if shrink and shrink.change is not None else None,
        "shrunk": bool(shrink and shrink.shrunk),
    }


def history_to_json(target: Target, history: History) -> dict[str, Any]:
    return {"identifier": target.identifier, "env": target.env, "measure": history.measure,
            "sizes": list(history.sizes), "sparkline": history.sparkline,
            "backups": [history_row_to_json(r) for r in history.rows]}


def _check_cell(ok: bool | None) -> str:
    return "-" if ok is None else ("ok" if ok else "FAILED")


def history_row(row: HistoryRow) -> list[str]:
    entry, shrink = row.entry, row.shrink
    note = f"damaged: {entry.problem}" if entry.problem else ""
    if shrink is not None and shrink.shrunk:
        note = "SHRUNK, acknowledged" if row.ack else "SHRUNK"
    if row.pin is not None:
        note = ", ".join(n for n in (note, pin_words(row.pin)) if n)
    return [entry.id, human_size(entry.size_bytes) if entry.has_dump else "-",
            human_size(row.uncompressed_bytes) if row.uncompressed_bytes is not None else "-",
            human_duration(row.duration_s) if row.duration_s is not None else "-",
            f"{human_size(round(row.rate))}/s" if row.rate is not None else "-",
            change_words(shrink.change).removesuffix(" vs median") if shrink else "-",
            _check_cell(row.verify.ok if row.verify else None), _check_cell(row.drill.ok if row.drill else None), note]


HISTORY_HEADER = ["ID", "SIZE", "UNCOMPRESSED", "DURATION", "RATE", "VS MEDIAN", "VERIFY", "DRILL", "NOTE"]


def trend_line(history: History) -> str:
    sizes = [s for s in history.sizes if s is not None]
    if not sizes:
        return "trend: no sizes yet"
    return (f"trend ({history.measure} size, oldest → newest): {history.sparkline}  "
            f"{human_size(sizes[0])} → {human_size(sizes[-1])}")


def backup_line(target: Target, result: BackupResult) -> str:
    m = result.manifest
    return (f"backup {m.id} of {target.name}: {result.uri} ({human_size(m.size_bytes)}, {m.compression}, "
            f"{m.duration_s:.1f}s, sha256 {m.sha256})")


def restore_line(result: RestoreResult) -> str:
    kept = f"; previous database kept as {result.previous}" if result.previous else ""
    checked = "sha256 verified" if result.verified else "legacy dump, no checksum"
    ended = f", {sessions_ended(result.sessions_ended)}"
    return (f"restored {result.source} backup {result.backup_id} into {result.dest} "
            f"({human_size(result.size_bytes)}, {result.duration_s:.1f}s, {result.mode}, {checked}{ended}){kept}")
