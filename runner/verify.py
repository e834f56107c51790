"""Verifying stored backups: the catalog's judgement, the sha256 of the stored bytes, and the archive read to its end.

The stored object is read in full once: its bytes are hashed on their way into [zstd -d |]
`pg_restore -f /dev/null`, which reads and decompresses every data block. Nothing is copied to
disk and memory holds one chunk, so a dump of any size verifies where a restore could stream it.
Then `pg_restore -l` lists the table of contents from the start of a second read, which stops
as soon as pg_restore has the TOC: it costs the TOC's bytes, not the dump's. (A copy to a work
folder would save that second read but need the archive's whole size on local disk.)
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC
from typing import Any

from . import __version__
from .catalog import BackupEntry, list_backups, resolve_backup
from .clock import Clock
from .errors import JobFailed, NoBackup
from .output import human_size
from .pg.pipeline import Pipeline, Step
from .pg.tools import ToolEnv, compressor_env, find_tool, tool_version
from .records import VerifyRecord, put_record, record_key
from .services import Services
from .stored_dump import Hashed, check_reader, open_dump, read_globals
from .stores import BackupStore
from .targets import Target
from .tiering import after_failed_check
from .words import plural

log = logging.getLogger(__name__)

# Once the last byte is fed only what sits in the pipes is left to read; longer means a hung tool.
FINISH_S = 300.0


class _Bad(Exception):
    """A check found the backup bad: the message is the problem, in words."""


class _BadGlobals(_Bad):
    """The roles and globals file is missing or differs from what the manifest promises."""


@dataclass(frozen=True)
class Toc:
    entries: int
    table_data: int


@dataclass(frozen=True)
class Verified:
    """One backup's verification: its record (as written beside it), where it is, and the fix if bad."""

    target: str
    key: str
    record: VerifyRecord
    legacy: bool
    fix: str | None

    def line(self) -> str:
        r = self.record
        head = f"backup {r.backup_id} of {self.target}"
        if not r.ok:
            return f"{head}: BAD: {r.problem}; {self.fix}"
        entries, tables = plural(r.toc_entries or 0, "TOC entry", "TOC entries"), plural(r.tables_with_data or 0, "table")
        read = f"{entries}, {tables} with data, read to its end"
        size = f"{human_size(r.size_bytes or 0)} in {r.duration_s:.1f}s"
        if self.legacy:
            return (f"{head}: read through ({read}; {size}), but it is a legacy dump without a manifest, "
                    "so its checksum cannot be checked")
        return f"{head}: good (size and sha256 match the manifest; {read}; {size})"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self.record)
        data["checked_at"] = self.record.checked_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return {**data, "key": self.key, "legacy": self.legacy, "fix": self.fix, "record": record_key(self.key, "verify")}


def verify_backups(target: Target, services: Services, which: str) -> list[Verified]:
    """Verify `latest`, one id, or `all` of a target's backups, writing a record beside each."""
    store = services.store(target)
    entries = choose(store, target.identifier, target.env, which)
    pg_restore = find_tool("pg_restore")
    restore_version = tool_version(pg_restore)
    results = []
    for entry in entries:
        result = verify_entry(store, entry, target, pg_restore, services.clock)
        record = replace(result.record, pg_restore_version=restore_version)
        put_record(store, entry.key, record)
        results.append(replace(result, record=record))
        if record.ok:
            log.info("verified backup %s of %s in %.1fs", entry.id, target.name, record.duration_s)
        else:
            log.error("backup %s of %s is bad: %s", entry.id, target.name, record.problem)
            after_failed_check(store, target.identifier, target.env, entry)
    return results


def choose(store: BackupStore, identifier: str, env: str, which: str) -> list[BackupEntry]:
    """`all`: every backup, damaged ones included. `latest` means what a restore would take (the newest
    complete one, skipping damaged ones with a warning), so verify proves the backup a restore would use."""
    if which == "all":
        entries = list_backups(store, identifier, env)
        if not entries:
            raise NoBackup(f"no backups of {identifier}/{env} in {store.url} to verify")
        return entries
    try:
        return [resolve_backup(store, identifier, env, which)]
    except JobFailed:
        pass  # damaged: by id, that backup; `latest` when every backup is damaged, the newest. Verifying it says why.
    listed = list_backups(store, identifier, env, limit=1 if which == "latest" else None)
    found = [entry for entry in listed if which in ("latest", entry.id)]
    if not found:
        raise NoBackup(f"no backup {which} of {identifier}/{env} in {store.url} to verify")
    return found


def verify_entry(store: BackupStore, entry: BackupEntry, target: Target, pg_restore: str, clock: Clock) -> Verified:
    """Judge one backup; nothing is written here."""
    started, when = clock.monotonic(), clock.now()
    checks: list[str] = ["manifest matches its place and its dump" if entry.manifest else "no manifest: a legacy dump"]
    problem: str | None = None
    fix: str | None = None
    toc: Toc | None = None
    sha256: str | None = None
    size: int | None = None
    new_backup = f"take a new backup (`db-backup backup {target.identifier} {target.env}`)"
    if entry.problem is not None:
        problem = f"the catalog judges it damaged: {entry.problem}"
        fix = f"{new_backup}; restores of `latest` skip this one"
    else:
        check_reader(store, entry, pg_restore)  # a pg_restore too old for the archive is this machine's problem, not the backup's
        try:
            checks.append("every data block read and decompressed by pg_restore -f /dev/null")
            sha256, size, unreadable = read_through(store, entry, pg_restore)
            if entry.manifest is not None:
                checks.append("size and sha256 of the stored bytes against the manifest")
                if size != entry.manifest.size_bytes or sha256 != entry.manifest.sha256:
                    also = f" (reading it through: {unreadable})" if unreadable else ""
                    raise _Bad(f"checksum mismatch: the manifest promises {entry.manifest.size_bytes} bytes with sha256 "
                               f"{entry.manifest.sha256}, the store holds {size} bytes with sha256 {sha256}{also}")
            if unreadable:
                raise _Bad(f"the archive cannot be read to its end: {unreadable}")
            checks.append("table of contents listed by pg_restore -l")
            toc = list_toc(store, entry, pg_restore)
            if entry.manifest is not None and entry.manifest.globals_sha256 is not None:
                checks.append("size and sha256 of the roles and globals file against the manifest")
                _check_globals(store, entry)
        except _Bad as exc:
            problem = str(exc)
            if problem.startswith("checksum"):
                fix = f"the stored bytes changed after the backup was written; {new_backup} and check the store"
            elif isinstance(exc, _BadGlobals):
                fix = (f"the dump reads, but restores --with-roles and drills of it refuse its roles; {new_backup} "
                       "and check the store")
            else:
                fix = f"a restore of it would fail; {new_backup}"
        except JobFailed as exc:  # e.g. open_dump: the stored bytes are not a dump at all
            problem, fix = str(exc), f"a restore of it would fail; {new_backup}"
    record = VerifyRecord(
        backup_id=entry.id, checked_at=when, ok=problem is None, problem=problem, checks=tuple(checks),
        duration_s=round(clock.monotonic() - started, 3), tool_version=__version__, sha256=sha256, size_bytes=size,
        toc_entries=toc.entries if toc else None, tables_with_data=toc.table_data if toc else None,
    )
    return Verified(target.name, entry.key, record, entry.manifest is None, fix)


def _check_globals(store: BackupStore, entry: BackupEntry) -> None:
    try:
        read_globals(store, entry)
    except JobFailed as exc:
        raise _BadGlobals(str(exc)) from exc


def _offline_env() -> ToolEnv:
    """pg_restore writing to a file never connects: PATH only, and English messages."""
    return ToolEnv({"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"})


def _chain(pipe: Pipeline, store: BackupStore, entry: BackupEntry, argv: list[str], stdout: Any) -> tuple[Step, Step, Iterator[bytes]]:
    """[decompressor |] pg_restore ARGV: the step to feed, pg_restore's step, and the stored bytes."""
    chunks, decompress = open_dump(store, entry)
    first = restore = pipe.start("pg_restore", _offline_env(), argv, stdin=subprocess.PIPE, stdout=stdout)
    if decompress is not None:
        first = pipe.start(decompress.name, compressor_env(), decompress.argv, stdin=subprocess.PIPE, into=restore)
    return first, restore, chunks


def _finish(pipe: Pipeline) -> None:
    try:
        pipe.wait(timeout=FINISH_S)
    except subprocess.TimeoutExpired as exc:
        pipe.stop()
        raise _Bad(f"{exc.cmd[0] if isinstance(exc.cmd, list) else exc.cmd} did not finish within {FINISH_S:.0f}s "
                   "of the archive's last byte") from exc


def list_toc(store: BackupStore, entry: BackupEntry, pg_restore: str) -> Toc:
    """`pg_restore -l` over the start of the stored dump; the read stops once pg_restore has the TOC."""
    with tempfile.TemporaryFile() as listing, Pipeline() as pipe:
        first, lister, chunks = _chain(pipe, store, entry, [pg_restore, "-l"], listing)
        pipe.feed(first, chunks)  # False once pg_restore has what it needs and quits: expected
        del chunks  # the rest of the stored object is never fetched
        _finish(pipe)
        if lister.proc.returncode != 0:
            failure = pipe.failure()
            raise _Bad(f"pg_restore cannot list the archive's table of contents: {failure or lister.tail.last_error()}")
        listing.seek(0)
        entries = [line for line in listing.read().decode("utf-8", "replace").splitlines() if line and not line.startswith(";")]
    return Toc(len(entries), sum(1 for line in entries if " TABLE DATA " in line))


def read_through(store: BackupStore, entry: BackupEntry, pg_restore: str) -> tuple[str, int, str | None]:
    """sha256 and size of every stored byte, and why [zstd -d |] pg_restore -f /dev/null failed (None: it read all).

    When pg_restore stops early the rest is still read and hashed, so the checksum verdict stays true.
    """
    with Pipeline() as pipe:
        first, _restore, chunks = _chain(pipe, store, entry, [pg_restore, "--exit-on-error", "-f", os.devnull], subprocess.DEVNULL)
        hashed = Hashed(chunks)
        stream = iter(hashed)
        if not pipe.feed(first, stream):
            for _chunk in stream:
                pass
        _finish(pipe)
        failure = pipe.failure()
    return hashed.sha256, hashed.size, str(failure) if failure else None
