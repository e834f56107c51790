"""The parallel restore's download: what stopped it is what the user is told.

A cancel or a storage error mid-download leaves zstd with a short input; its complaint must not
replace the real reason (exit 130 or 3 would become "the dump is damaged", exit 1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runner import stored_dump
from runner.catalog import BackupEntry
from runner.errors import ExitCode, InfraError, Interrupted, JobFailed

pytestmark = pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd program")

PLAIN = b"PGDMP" + os.urandom(2_000_000)
KEY = "app/production/2026-01-02_03-04-05.dump"


def _zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True, timeout=60).stdout


class FakeStore:
    """Serves the stored bytes in chunks, then raises `fail` instead of the rest, if given."""

    def __init__(self, data: bytes, fail: BaseException | None = None) -> None:
        self.data = data
        self.fail = fail

    def uri(self, key: str) -> str:
        return f"s3://bucket/{key}"

    def read(self, key: str) -> Iterator[bytes]:
        cut = 4096 if self.fail else len(self.data)
        yield self.data[:2048]
        yield self.data[2048:cut]
        if self.fail:
            raise self.fail


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(subprocess, "Popen", Spy)
    return started


def _download(store: FakeStore, folder: Path) -> stored_dump.LocalCopy:
    entry = BackupEntry("2026-01-02_03-04-05", KEY, datetime(2026, 1, 2, tzinfo=UTC), len(store.data))
    return stored_dump.download(store, entry, folder)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fail", "kind", "code"),
    [
        (InfraError("reading s3://bucket/k failed: connection reset"), InfraError, ExitCode.INFRA),
        (Interrupted("cancelled by SIGTERM"), Interrupted, ExitCode.CANCELLED),
    ],
    ids=["storage-error", "sigterm"],
)
def test_the_reason_the_download_stopped_wins_over_the_decompressor(
    tmp_path: Path, children: list[subprocess.Popen[bytes]], fail: BaseException, kind: type[BaseException], code: ExitCode
) -> None:
    with pytest.raises(kind) as raised:
        _download(FakeStore(_zstd(PLAIN), fail), tmp_path)
    assert raised.value is fail
    assert getattr(raised.value, "exit_code", ExitCode.CANCELLED) == code
    assert "damaged" not in str(raised.value)
    assert children and all(child.poll() is not None for child in children)  # zstd did not outlive the download


def test_a_damaged_dump_is_still_called_damaged(tmp_path: Path, children: list[subprocess.Popen[bytes]]) -> None:
    packed = bytearray(_zstd(PLAIN))
    packed[len(packed) // 2 : len(packed) // 2 + 64] = bytes(64)
    with pytest.raises(JobFailed, match=rf"decompressing s3://bucket/{KEY} failed \(exit 1\): .+; the dump is damaged"):
        _download(FakeStore(bytes(packed)), tmp_path)
    assert all(child.poll() is not None for child in children)


def test_a_whole_download_is_decompressed_and_hashed(tmp_path: Path) -> None:
    import hashlib

    packed = _zstd(PLAIN)
    copy = _download(FakeStore(packed), tmp_path)
    assert copy.path.read_bytes() == PLAIN
    assert (copy.sha256, copy.size) == (hashlib.sha256(packed).hexdigest(), len(packed))


@pytest.mark.parametrize("stored", ["zstd", "plain"])
def test_a_full_work_folder_is_a_disk_problem_not_a_damaged_dump(tmp_path: Path, stored: str) -> None:
    """Writing the copy fails with ENOSPC (here: the copy is /dev/full): exit 3 naming the folder and the ways out."""
    (tmp_path / "restore.dump").symlink_to("/dev/full")
    data = _zstd(PLAIN) if stored == "zstd" else PLAIN
    with pytest.raises(InfraError) as raised:
        _download(FakeStore(data), tmp_path)
    message = str(raised.value)
    assert raised.value.exit_code == ExitCode.INFRA
    assert "is full (no space left on device)" in message and "DB_BACKUP_WORK_DIR" in message
    assert "damaged" not in message


@pytest.mark.parametrize(("printed", "version"), [
    ("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", "15.18"),
    ("pg_dump (PostgreSQL) 17.2\n", "17.2"),
    ("pg_restore (PostgreSQL) 18devel\n", "18devel"),
    ("pg_dump (PostgreSQL) 16.4 (Ubuntu 16.4-1.pgdg22.04+1)\n", "16.4"),
])
def test_the_tools_version_is_the_version_number(printed: str, version: str) -> None:
    """The manifest records `15.18`, not the distribution's `15.18-0+deb12u1)`."""
    from runner.pg.tools import parse_tool_version

    assert parse_tool_version(printed) == version
