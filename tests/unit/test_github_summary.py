"""Job summary, outputs, annotations and console links; summaries compared with snapshots exactly."""

from __future__ import annotations

import io
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest

from runner import github
from runner.backup import BackupResult
from runner.github import Report
from runner.manifest import Manifest
from runner.settings import GithubEnv
from tests.helpers.backups import sample_manifest
from tests.helpers.targets import folder_registry

SNAPSHOTS = Path(__file__).parent / "snapshots"
ARN = "arn:aws:ecs:eu-west-1:123456789012:task/db-backup/0123456789abcdef0123456789abcdef"
TASK_ID = ARN.rsplit("/", 1)[1]
LOGS = github.logs_url("eu-west-1", "/ecs/db-backup", f"ecs/db-backup/{TASK_ID}")
TASK = github.task_url("eu-west-1", "db-backup", TASK_ID)

SUCCESS = Report(
    target="curation/production", action="backup", result="success", executor="ecs", duration_s=754.2,
    backup_id="2024-05-01_02-00-07", backup_uri="s3://agr-db-backups/curation/production/2024-05-01_02-00-07.dump",
    size_bytes=1_234_567_890, sha256="9f" * 32, task_arn=ARN, task_url=TASK, logs_url=LOGS,
    last_lines=("not shown on success",),
)
FAILURE = Report(
    target="curation/beta", action="restore", result="failure", executor="ecs", duration_s=65.0,
    source="curation/production 2024-05-01_02-00-07", backup_id="2024-05-01_02-00-07",
    message="container db-backup of ECS task 0123 exited with code 1 (the job failed): Essential container in task exited; see its log",
    task_arn=ARN, task_url=TASK, logs_url=LOGS,
    last_lines=(
        *(f"2024-05-01T02:01:{i:02d}Z INFO step {i}" for i in range(48)),
        "pg_restore: error: could not execute query: ERROR:  role \"curator\" does not exist",
        "a line with ``` backticks | and a pipe",
    ),
)


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs; rerun with UPDATE_SNAPSHOTS=1 if intended"


def test_success_summary_snapshot() -> None:
    check_snapshot("summary_success.md", github.render_summary(SUCCESS))


def test_failure_summary_snapshot() -> None:
    text = github.render_summary(FAILURE)
    check_snapshot("summary_failure.md", text)
    assert "<details>" in text and "````text" in text  # a longer fence than any backtick run inside


def test_cloudwatch_link_uses_the_consoles_dollar_encoding() -> None:
    expected = (
        "https://eu-west-1.console.aws.amazon.com/cloudwatch/home?region=eu-west-1#logsV2:log-groups/log-group/"
        f"$252Fecs$252Fdb-backup/log-events/ecs$252Fdb-backup$252F{TASK_ID}"
    )
    assert expected == LOGS
    assert github.logs_url("us-east-1", "/a b", "x").endswith("log-group/$252Fa$2520b/log-events/x")
    assert github.logs_url("cn-north-1", "g", "s").startswith("https://cn-north-1.console.amazonaws.cn/cloudwatch/home?region=cn-north-1#")


def test_task_link_names_cluster_task_and_region() -> None:
    expected = f"https://eu-west-1.console.aws.amazon.com/ecs/v2/clusters/db-backup/tasks/{TASK_ID}/configuration?region=eu-west-1"
    assert expected == TASK


def test_outputs_single_and_multiline_forms(tmp_path: Path) -> None:
    path = tmp_path / "out"
    github.write_outputs(path, {"backup-id": "2024-05-01_02-00-07", "note": "two\nlines"})
    text = path.read_text()
    assert text.startswith("backup-id=2024-05-01_02-00-07\nnote<<ghadelimiter_")
    delimiter = text.split("note<<", 1)[1].split("\n", 1)[0]
    assert text.endswith(f"note<<{delimiter}\ntwo\nlines\n{delimiter}\n")


def test_publish_writes_summary_outputs_and_annotation(tmp_path: Path) -> None:
    gh = GithubEnv(actions=True, step_summary=tmp_path / "summary", output=tmp_path / "output")
    out = io.StringIO()
    github.publish(FAILURE, gh, out)
    outputs = (tmp_path / "output").read_text()
    assert outputs == (f"backup-id=2024-05-01_02-00-07\nbackup-uri=\ntask-arn={ARN}\nlogs-url={LOGS}\nresult=failure\n")
    assert (tmp_path / "summary").read_text() == github.render_summary(FAILURE)
    printed = out.getvalue()
    assert "Result         failure" in printed and f"Logs           {LOGS}" in printed
    assert printed.splitlines()[-1].startswith("::error title=db-backup restore curation/beta::container db-backup")


def test_publish_outside_github_prints_only_text(tmp_path: Path) -> None:
    out = io.StringIO()
    github.publish(SUCCESS, GithubEnv(), out)
    assert "::" not in out.getvalue().replace("https://", "")
    assert re.search(r"^Size +1\.1 GiB \(1,234,567,890 bytes\)$", out.getvalue(), re.MULTILINE)


@pytest.mark.parametrize(("message", "expected"), [
    ("plain", "::error::plain\n"),
    ("50% done\nthen failed", "::error::50%25 done%0Athen failed\n"),
])
def test_error_annotation_escapes_data(message: str, expected: str) -> None:
    out = io.StringIO()
    github.error(message, out=out)
    assert out.getvalue() == expected


def test_error_annotation_escapes_title() -> None:
    out = io.StringIO()
    github.error("m", title="a: b, c", out=out)
    assert out.getvalue() == "::error title=a%3A b%2C c::m\n"


def test_add_mask_is_kept() -> None:
    out = io.StringIO()
    github.add_mask("s3cret\nline2", out)
    assert out.getvalue() == "::add-mask::s3cret\n::add-mask::line2\n"


def _summary_of_local_backup(tmp_path: Path, manifest: Manifest) -> str:
    gh = GithubEnv(actions=True, step_summary=tmp_path / "summary", output=tmp_path / "output")
    target = folder_registry(tmp_path / "backups").get("app", "production")
    github.publish_local_backup(target, BackupResult(manifest, "file:///backups/x.dump"), gh)
    return (tmp_path / "summary").read_text()


def _rows(summary: str) -> list[str]:
    """The names of the summary table's rows, in order."""
    return [line.split(" | ", 1)[0].removeprefix("| ") for line in summary.splitlines() if line.startswith("| ") and line != "| | |"]


def test_backup_summary_shows_the_dumps_own_size_ratio_rate_and_duration(tmp_path: Path) -> None:
    manifest = replace(sample_manifest("app/production/x.dump", size=300 * 2**20, duration_s=125.0, compression="zstd:3"),
                       uncompressed_bytes=1200 * 2**20)
    text = _summary_of_local_backup(tmp_path, manifest)
    assert "| Size | 300.0 MiB (314,572,800 bytes) |" in text
    assert "| Original size | 1.2 GiB (1,258,291,200 bytes) |" in text
    assert "| Ratio | 4.00:1 |" in text
    assert "| Dump duration | 2m 05s |" in text
    assert "| Dump rate | 9.6 MiB/s of uncompressed dump output |" in text  # pg_dump's output over the dump's own time
    # Each fact once: the manifest's time is the dump's, shown as Dump duration, not again as the job's Duration.
    rows = _rows(text)
    assert len(rows) == len(set(rows)) and "Duration" not in rows, rows
    assert rows == ["Target", "Action", "Result", "Executor", "Backup id", "Backup URI", "Size", "Original size", "Ratio",
                    "Dump duration", "Dump rate", "SHA-256"], rows


def test_a_gzip_backup_summary_says_its_original_size_is_unknown(tmp_path: Path) -> None:
    manifest = sample_manifest("app/production/x.dump", size=50 * 2**20, duration_s=10.0, compression="gzip:6",
                               compressed_by="pg_dump")
    text = _summary_of_local_backup(tmp_path, manifest)
    assert "| Original size | unknown (pg_dump compressed it itself) |" in text
    assert "Ratio" not in text
    # Only the stored bytes are known: the rate says it counts compressed output.
    assert "| Dump duration | 10.0s |" in text and "| Dump rate | 5.0 MiB/s of compressed dump output |" in text


def test_an_uncompressed_backup_rate_counts_its_stored_bytes_as_uncompressed(tmp_path: Path) -> None:
    manifest = sample_manifest("app/production/x.dump", size=50 * 2**20, duration_s=10.0, compression="none", compressed_by="pg_dump")
    text = _summary_of_local_backup(tmp_path, manifest)  # a manifest of a version that did not record the original size
    assert "| Original size | unknown (not recorded in the manifest) |" in text
    assert "| Dump rate | 5.0 MiB/s of uncompressed dump output |" in text


def test_an_ecs_backup_summary_shows_the_jobs_duration_and_the_dumps(tmp_path: Path) -> None:
    manifest = replace(sample_manifest("curation/production/x.dump", size=300 * 2**20, duration_s=125.0),
                       uncompressed_bytes=1200 * 2**20)
    text = github.render_summary(replace(SUCCESS, dump=github.DumpFacts.of(manifest)))
    assert "| Duration | 12m 34s |" in text and "| Dump duration | 2m 05s |" in text  # the whole task, and pg_dump's part of it
    rows = _rows(text)
    assert len(rows) == len(set(rows)), rows


def test_the_report_cell_says_which_bytes_the_rate_counts() -> None:
    zstd = replace(sample_manifest("k", size=300 * 2**20, duration_s=125.0), uncompressed_bytes=1200 * 2**20)
    gzip = sample_manifest("k", size=50 * 2**20, duration_s=10.0, compression="gzip:6")
    assert github.DumpFacts.of(zstd).words() == "1.2 GiB original (4.00:1), 2m 05s at 9.6 MiB/s uncompressed"
    assert github.DumpFacts.of(gzip).words() == "10.0s at 5.0 MiB/s compressed"
    assert github.DumpFacts.of(replace(gzip, duration_s=0.0)).words() == "0.0s"
