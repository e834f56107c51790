"""The local folder store: whatever fails, no hidden partial stays behind, and the error says where and why."""

from __future__ import annotations

import errno
import os
import pathlib
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runner.errors import ExitCode, IdTaken, InfraError, JobFailed
from runner.manifest import Manifest
from runner.stores import Upload
from runner.stores.local import LocalStore
from tests.conftest import run_in_threads
from tests.helpers.backups import sample_manifest

KEY = "app/production/2026-01-02_03-04-05.dump"


def _files(root: Path) -> list[str]:
    """Everything under the folder, hidden files included: what a user would find with ls -a."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _full_disk(upload: Upload) -> None:
    """Fault injection: the partial's handle becomes /dev/full, which answers every write with a real ENOSPC."""
    handle = upload._file  # type: ignore[attr-defined]
    handle.close()
    upload._file = open("/dev/full", "wb")  # type: ignore[attr-defined]  # noqa: SIM115  # buffered: ENOSPC at flush


def _fail(monkeypatch: pytest.MonkeyPatch, name: str, code: int) -> None:
    def failing(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, name, failing)


def _manifest() -> Manifest:
    return sample_manifest(
        KEY, identifier="app", backup_id="2026-01-02_03-04-05", created_at=datetime(2026, 1, 2, tzinfo=UTC), size=4,
        sha256="0" * 64, compression="none", compressed_by="pg_dump", pg_dump_version="17", server_version="17", tool_version="test",
    )


def test_a_completed_upload_leaves_only_the_dump(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    upload = store.start_upload(KEY, "STANDARD")
    upload.write(b"PGDMP")
    upload.complete()
    assert _files(tmp_path) == [KEY]
    assert (tmp_path / KEY).read_bytes() == b"PGDMP"


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("link", "Operation not permitted"),  # EPERM: filesystems without hard links
        ("fsync", "No space left on device"),
    ],
)
def test_a_failed_completion_removes_the_partial_and_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str, reason: str,
) -> None:
    store = LocalStore(tmp_path)
    upload = store.start_upload(KEY, "STANDARD")
    upload.write(b"x" * (1 << 20))
    _fail(monkeypatch, fault, errno.EPERM if fault == "link" else errno.ENOSPC)
    with pytest.raises(InfraError) as failed:
        upload.complete()
    assert failed.value.exit_code == ExitCode.INFRA
    hint = ("check the folder's permissions; its filesystem must support hard links, which db-backup uses so that "
            "no backup is ever overwritten" if fault == "link" else "check the folder's free space and permissions")
    assert str(failed.value) == f"completing {tmp_path / KEY} failed: {reason}; {hint}, then run again"
    assert _files(tmp_path) == []
    upload.abort()  # what the job does after any failure: harmless now
    assert _files(tmp_path) == []


def test_a_full_disk_at_flush_removes_the_partial(tmp_path: Path) -> None:
    upload = LocalStore(tmp_path).start_upload(KEY, "STANDARD")
    _full_disk(upload)
    upload.write(b"small enough to sit in the buffer")
    with pytest.raises(InfraError, match="No space left on device"):
        upload.complete()
    assert _files(tmp_path) == []


def test_a_full_disk_mid_write_removes_the_partial(tmp_path: Path) -> None:
    upload = LocalStore(tmp_path).start_upload(KEY, "STANDARD")
    _full_disk(upload)
    with pytest.raises(InfraError) as failed:
        upload.write(b"x" * (1 << 20))
    assert str(failed.value).startswith(f"writing {tmp_path / 'app/production'}/.2026-01-02_03-04-05.dump.")
    assert "failed: No space left on device" in str(failed.value)
    assert _files(tmp_path) == []


def test_an_existing_backup_is_never_replaced(tmp_path: Path) -> None:
    """A dump that appears under the id while a backup writes it (a hand copy) is kept; the backup fails."""
    store = LocalStore(tmp_path)
    upload = store.start_upload(KEY, "STANDARD")
    (tmp_path / KEY).write_bytes(b"first")
    upload.write(b"second")
    with pytest.raises(JobFailed, match="already exists; another backup took this id"):
        upload.complete()
    assert _files(tmp_path) == [KEY] and (tmp_path / KEY).read_bytes() == b"first"


@pytest.mark.parametrize("existing", [KEY, KEY + ".json"])
def test_an_id_with_a_dump_or_a_manifest_is_not_reserved(tmp_path: Path, existing: str) -> None:
    """An id that already has a dump or a manifest is taken: start_upload says so and writes nothing."""
    (tmp_path / existing).parent.mkdir(parents=True)
    (tmp_path / existing).write_bytes(b"first")
    with pytest.raises(IdTaken, match="already exists"):
        LocalStore(tmp_path).start_upload(KEY, "STANDARD")
    assert _files(tmp_path) == [existing] and (tmp_path / existing).read_bytes() == b"first"


def test_a_live_partial_holds_its_id(tmp_path: Path) -> None:
    """While one backup writes an id, a second cannot take it, and the first completes untouched."""
    store = LocalStore(tmp_path)
    first = store.start_upload(KEY, "STANDARD")
    first.write(b"PGDMP first")
    with pytest.raises(IdTaken, match="being written by another backup"):
        store.start_upload(KEY, "STANDARD")
    first.complete()
    assert _files(tmp_path) == [KEY] and (tmp_path / KEY).read_bytes() == b"PGDMP first"


def test_a_dead_runs_partial_gives_its_id_back(tmp_path: Path) -> None:
    """A partial nobody holds (its backup was killed) is removed and its id taken by the next run."""
    dead = tmp_path / "app/production/.2026-01-02_03-04-05.dump.partial"
    dead.parent.mkdir(parents=True)
    dead.write_bytes(b"half a dump")
    upload = LocalStore(tmp_path).start_upload(KEY, "STANDARD")
    upload.write(b"PGDMP whole")
    upload.complete()
    assert _files(tmp_path) == [KEY] and (tmp_path / KEY).read_bytes() == b"PGDMP whole"


def test_concurrent_uploads_of_one_id_reserve_it_once(tmp_path: Path) -> None:
    """Eight threads start the same id at once: exactly one gets it, the others are told it is taken."""
    store = LocalStore(tmp_path)
    barrier = threading.Barrier(8, timeout=30)
    won: list[Upload] = []
    taken: list[IdTaken] = []

    def start() -> None:
        barrier.wait()
        try:
            won.append(store.start_upload(KEY, "STANDARD"))
        except IdTaken as exc:
            taken.append(exc)

    run_in_threads(8, start, timeout=60)
    assert len(won) == 1 and len(taken) == 7
    won[0].write(b"PGDMP")
    won[0].complete()
    assert _files(tmp_path) == [KEY]


def test_leftovers_of_dead_runs_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """clean_leftovers removes this target's unheld partials, never a live run's, never a younger staging file."""
    store = LocalStore(tmp_path)
    live = store.start_upload(KEY, "STANDARD")
    live.write(b"PGDMP live")
    folder = tmp_path / "app/production"
    dead = folder / ".2026-01-01_00-00-00.dump.partial"
    old_staging = folder / ".2025-12-31_00-00-00.dump.1a2b3c4d.partial"  # what older versions left
    young_staging = folder / ".2026-01-02_03-04-06.dump.5e6f7a8b.partial"  # a run between creating and locking it
    other_target = tmp_path / "app/beta/.2026-01-01_00-00-00.dump.partial"
    other_target.parent.mkdir(parents=True)
    for path in (dead, old_staging, young_staging, other_target):
        path.write_bytes(b"leftover")
    an_hour_ago = time.time() - 3600
    os.utime(old_staging, (an_hour_ago, an_hour_ago))
    removed = store.clean_leftovers("app", "production", datetime.now(UTC))
    assert sorted(removed) == sorted([str(dead), str(old_staging)])
    assert _files(tmp_path) == sorted([
        "app/beta/.2026-01-01_00-00-00.dump.partial", "app/production/.2026-01-02_03-04-05.dump.partial",
        "app/production/.2026-01-02_03-04-06.dump.5e6f7a8b.partial",
    ])
    live.complete()
    assert (tmp_path / KEY).read_bytes() == b"PGDMP live"


def test_an_unwritable_folder_is_a_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = pathlib.Path.open

    def denied(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "x" in mode:  # root ignores permission bits, so the refusal is injected
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", denied)
    with pytest.raises(InfraError, match=r"^creating .*\.partial failed: Permission denied; check the folder"):
        LocalStore(tmp_path).start_upload(KEY, "STANDARD")
    with pytest.raises(InfraError, match=r"^writing the manifest .*dump\.json failed: Permission denied"):
        LocalStore(tmp_path).put_manifest(_manifest())
    assert _files(tmp_path) == []


def test_a_failed_manifest_leaves_no_partial_and_no_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / KEY).parent.mkdir(parents=True)
    _fail(monkeypatch, "fsync", errno.ENOSPC)
    with pytest.raises(InfraError, match=f"^{re.escape(f'writing the manifest {tmp_path / KEY}.json failed: No space left on device')}"):
        store.put_manifest(_manifest())
    assert _files(tmp_path) == []
    monkeypatch.undo()
    store.put_manifest(_manifest())
    assert _files(tmp_path) == [KEY + ".json"]


def test_unreadable_files_are_storage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / KEY).parent.mkdir(parents=True)
    (tmp_path / KEY).write_bytes(b"PGDMP")
    (tmp_path / (KEY + ".json")).write_text("{}")

    def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(pathlib.Path, "open", denied)
    monkeypatch.setattr(pathlib.Path, "read_text", denied)
    with pytest.raises(InfraError, match=f"^{re.escape(f'opening {tmp_path / KEY} failed: Permission denied')}"):
        list(store.read(KEY))
    with pytest.raises(InfraError, match=f"^{re.escape(f'reading {tmp_path / KEY}.json failed: Permission denied')}"):
        store.read_text(KEY + ".json")
