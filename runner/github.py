"""GitHub Actions workflow commands (masks, outputs, annotations, step summaries) and the report of a run."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import quote

from .output import human_duration, human_size
from .settings import GithubEnv
from .shrink import describe as describe_shrink

if TYPE_CHECKING:
    from .backup import BackupResult
    from .manifest import Manifest
    from .restore import RestoreResult
    from .shrink import ShrinkVerdict
    from .targets import Target

# Values of the `result` output; workflows and the composite action compare against these.
SUCCESS, FAILURE, CANCELLED, TIMED_OUT, STARTED = "success", "failure", "cancelled", "timed-out", "started"
_ICONS = {SUCCESS: "✅", FAILURE: "❌", CANCELLED: "⚪", TIMED_OUT: "⏱️", STARTED: "🚀"}


def add_mask(secret: str, out: TextIO | None = None) -> None:
    """Ask GitHub to hide a secret in the job log; only ever called on a GitHub runner."""
    stream = out or sys.stdout
    for line in secret.splitlines() or [secret]:
        if line:
            stream.write(f"::add-mask::{line}\n")
    stream.flush()


# --- AWS console links ------------------------------------------------------------------------


def _console(region: str) -> str:
    if region.startswith("cn-"):
        return f"https://{region}.console.amazonaws.cn"
    if region.startswith("us-gov-"):
        return f"https://{region}.console.amazonaws-us-gov.com"
    return f"https://{region}.console.aws.amazon.com"


def _cw_encode(text: str) -> str:
    # The CloudWatch console's #logsV2 fragment wants URL-encoding with '%' itself written '$25'.
    return quote(text, safe="").replace("%", "$25")


def logs_url(region: str, group: str, stream: str) -> str:
    return (f"{_console(region)}/cloudwatch/home?region={region}#logsV2:log-groups/log-group/"
            f"{_cw_encode(group)}/log-events/{_cw_encode(stream)}")


def task_url(region: str, cluster: str, task_id: str) -> str:
    return (f"{_console(region)}/ecs/v2/clusters/{quote(cluster, safe='')}/tasks/{quote(task_id, safe='')}"
            f"/configuration?region={region}")


# --- the report of one backup or restore ------------------------------------------------------


@dataclass(frozen=True)
class DumpFacts:
    """The dump itself, from its manifest: its time is pg_dump's and the upload's, not the whole job's."""

    size_bytes: int
    original_bytes: int | None  # pg_dump's own output; unknown when pg_dump compressed it (gzip)
    duration_s: float
    compression: str  # the manifest's: `zstd:3`, `gzip:6`, `none`

    @classmethod
    def of(cls, manifest: Manifest) -> DumpFacts:
        return cls(manifest.size_bytes, manifest.uncompressed_bytes, manifest.duration_s, manifest.compression)

    def _rate(self) -> tuple[int, str] | None:
        """Bytes of dump output per second of the dump, and which output: the uncompressed one where it is known."""
        if self.duration_s <= 0:
            return None
        if self.original_bytes is not None:
            return int(self.original_bytes / self.duration_s), "uncompressed"
        # Only the stored bytes are known; they are pg_dump's output as is when nothing compressed it.
        return int(self.size_bytes / self.duration_s), "uncompressed" if self.compression == "none" else "compressed"

    def facts(self) -> list[tuple[str, str]]:
        original = self.original_bytes
        if original is not None:
            shown = [("Original size", f"{human_size(original)} ({original:,} bytes)")]
        elif self.compression.startswith("gzip"):
            shown = [("Original size", "unknown (pg_dump compressed it itself)")]
        else:
            shown = [("Original size", "unknown (not recorded in the manifest)")]
        if original is not None and self.size_bytes > 0:
            shown.append(("Ratio", f"{original / self.size_bytes:.2f}:1"))
        shown.append(("Dump duration", human_duration(self.duration_s)))
        if (rate := self._rate()) is not None:
            shown.append(("Dump rate", f"{human_size(rate[0])}/s of {rate[1]} dump output"))
        return shown

    def words(self) -> str:
        """`1.2 GiB original (4.00:1), 2m 05s at 9.6 MiB/s uncompressed`: one table cell."""
        parts = []
        if self.original_bytes is not None:
            ratio = f" ({self.original_bytes / self.size_bytes:.2f}:1)" if self.size_bytes > 0 else ""
            parts.append(f"{human_size(self.original_bytes)} original{ratio}")
        took = human_duration(self.duration_s)
        rate = self._rate()
        parts.append(f"{took} at {human_size(rate[0])}/s {rate[1]}" if rate is not None else took)
        return ", ".join(parts)


@dataclass(frozen=True)
class Report:
    """What an operator wants to know about one run, wherever it ran."""

    target: str
    action: str
    result: str
    executor: str
    duration_s: float | None = None
    source: str | None = None
    backup_id: str | None = None
    backup_uri: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    task_arn: str | None = None
    task_url: str | None = None
    logs_url: str | None = None
    logs_note: str | None = None  # where the log is instead, when it has no CloudWatch stream to link
    message: str | None = None
    last_lines: tuple[str, ...] = ()
    dump: DumpFacts | None = None  # a backup's own figures, from its manifest

    @property
    def ok(self) -> bool:
        return self.result in (SUCCESS, STARTED)


def _facts(report: Report) -> list[tuple[str, str]]:
    facts = [("Target", report.target), ("Action", report.action)]
    if report.source:
        facts.append(("Source backup", report.source))
    facts.append(("Result", report.result))
    facts.append(("Executor", report.executor))
    if report.duration_s is not None:
        facts.append(("Duration", human_duration(report.duration_s)))
    if report.backup_id:
        facts.append(("Backup id", report.backup_id))
    if report.backup_uri:
        facts.append(("Backup URI", report.backup_uri))
    if report.size_bytes is not None:
        facts.append(("Size", f"{human_size(report.size_bytes)} ({report.size_bytes:,} bytes)"))
    if report.dump is not None:
        facts += report.dump.facts()
    if report.sha256:
        facts.append(("SHA-256", report.sha256))
    if report.task_arn:
        facts.append(("ECS task", report.task_arn))
    return facts


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _fence(lines: tuple[str, ...]) -> str:
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    return "`" * max(3, longest + 1)


def render_summary(report: Report) -> str:
    """The Markdown job summary of one run."""
    icon = _ICONS.get(report.result, "")
    out = [f"### {icon} {report.action} {report.target}: {report.result}".replace("  ", " "), ""]
    if report.message and not report.ok:
        out += [f"> {_cell(report.message)}", ""]
    out += ["| | |", "|---|---|"]
    for name, value in _facts(report):
        shown = f"`{value}`" if name in ("Backup id", "Backup URI", "SHA-256", "ECS task") else _cell(value)
        out.append(f"| {name} | {shown} |")
    if report.logs_note:
        out.append(f"| Logs | {_cell(report.logs_note)} |")
    links = []
    if report.logs_url:
        links.append(f"[CloudWatch log stream]({report.logs_url})")
    if report.task_url:
        links.append(f"[ECS task]({report.task_url})")
    if links:
        out.append(f"| Links | {' · '.join(links)} |")
    out.append("")
    if report.last_lines and not report.ok:
        fence = _fence(report.last_lines)
        count = len(report.last_lines)
        out += [f"<details><summary>Last {count} log line{'s' if count != 1 else ''}</summary>", "",
                f"{fence}text", *report.last_lines, fence, "", "</details>", ""]
    return "\n".join(out) + "\n"


def render_text(report: Report) -> str:
    """The same facts for a terminal."""
    facts = _facts(report)
    if report.logs_url or report.logs_note:
        facts.append(("Logs", report.logs_url or report.logs_note or ""))
    if report.task_url:
        facts.append(("Task console", report.task_url))
    if report.message and not report.ok:
        facts.append(("Reason", report.message))
    width = max(len(name) for name, _ in facts)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in facts) + "\n"


def outputs(report: Report) -> dict[str, str]:
    """The step outputs the workflows read."""
    return {
        "backup-id": report.backup_id or "",
        "backup-uri": report.backup_uri or "",
        "task-arn": report.task_arn or "",
        "logs-url": report.logs_url or "",
        "result": report.result,
    }


def write_outputs(path: Path, values: Mapping[str, str]) -> None:
    """Append to $GITHUB_OUTPUT: name=value, or the name<<DELIM form for multi-line values."""
    with path.open("a", encoding="utf-8") as handle:
        for name, value in values.items():
            if "\n" in value or "\r" in value:
                delimiter = f"ghadelimiter_{uuid.uuid4().hex}"
                handle.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
            else:
                handle.write(f"{name}={value}\n")


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def error(message: str, title: str | None = None, out: TextIO | None = None) -> None:
    """An ::error:: annotation on the run's page."""
    _annotate("error", message, title, out)


def warning(message: str, title: str | None = None, out: TextIO | None = None) -> None:
    """A ::warning:: annotation: the run stays green, the page shows it."""
    _annotate("warning", message, title, out)


def _annotate(level: str, message: str, title: str | None, out: TextIO | None) -> None:
    stream = out or sys.stdout
    props = f" title={_escape_property(title)}" if title else ""
    stream.write(f"::{level}{props}::{_escape_data(message)}\n")
    stream.flush()


def publish(report: Report, gh: GithubEnv, out: TextIO | None = None, text: bool = True) -> None:
    """Summary, outputs and annotations on GitHub (where set); the readable text everywhere if `text`."""
    stream = out or sys.stdout
    if text:
        stream.write(render_text(report))
        stream.flush()
    if gh.step_summary:
        with gh.step_summary.open("a", encoding="utf-8") as handle:
            handle.write(render_summary(report))
    if gh.output:
        write_outputs(gh.output, outputs(report))
    if gh.actions and not report.ok:
        error(report.message or f"{report.action} of {report.target}: {report.result}",
              title=f"db-backup {report.action} {report.target}", out=stream)


def publish_local_backup(target: Target, result: BackupResult, gh: GithubEnv) -> None:
    """Outputs and summary of a backup that ran here (the CLI already printed its line)."""
    m = result.manifest
    # No Duration row: the manifest's time is the dump's own, which the Dump duration row already shows.
    publish(Report(
        target=target.name, action="backup", result=SUCCESS, executor="local",
        backup_id=m.id, backup_uri=result.uri, size_bytes=m.size_bytes, sha256=m.sha256, dump=DumpFacts.of(m),
    ), gh, text=False)
    publish_shrink(target.name, result.shrink, gh)


def publish_shrink(target_name: str, verdict: ShrinkVerdict | None, gh: GithubEnv, out: TextIO | None = None) -> None:
    """A shrunk backup: a line in the job summary and a ::warning:: (the run stays green)."""
    if verdict is None or not verdict.shrunk:
        return
    message = describe_shrink(verdict, target_name)
    if gh.step_summary:
        with gh.step_summary.open("a", encoding="utf-8") as handle:
            handle.write(f"> ⚠️ **Shrink alarm**: {_cell(message)}\n\n")
    if gh.actions:
        warning(message, title=f"db-backup shrink alarm {target_name}", out=out)


def publish_status(markdown: str, problems: list[str], gh: GithubEnv, out: TextIO | None = None) -> None:
    """`status` on GitHub: its table in the job summary and an ::error:: annotation per problem."""
    if gh.step_summary:
        with gh.step_summary.open("a", encoding="utf-8") as handle:
            handle.write(markdown)
    if gh.actions or gh.step_summary:
        for problem in problems:
            error(problem, title=f"db-backup status {problem.split(':', 1)[0]}", out=out)


def publish_local_restore(result: RestoreResult, gh: GithubEnv) -> None:
    """Outputs and summary of a restore that ran here."""
    publish(Report(
        target=result.dest, action="restore", result=SUCCESS, executor="local", duration_s=result.duration_s,
        source=f"{result.source} {result.backup_id}", backup_id=result.backup_id, size_bytes=result.size_bytes,
        sha256=result.sha256,
    ), gh, text=False)
