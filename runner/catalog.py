"""What backups a store holds: their ids and keys, and each one judged complete, legacy or damaged."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .errors import JobFailed, NoBackup
from .manifest import Manifest, parse_manifest

if TYPE_CHECKING:
    from .stores import BackupStore

log = logging.getLogger(__name__)

ID_RE = re.compile(r"^(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)(?:_(\d{1,4}))?$")
ID_FORMAT = "%Y-%m-%d_%H-%M-%S"
DUMP_SUFFIX = ".dump"
MANIFEST_SUFFIX = ".dump.json"


def make_id(when: datetime, seq: int = 1) -> str:
    """The old system's timestamp id; a second backup in the same second gets `_2`, `_3`, ..."""
    stamp = when.astimezone(UTC).strftime(ID_FORMAT)
    return stamp if seq <= 1 else f"{stamp}_{seq}"


def parse_id(backup_id: str) -> tuple[datetime, int] | None:
    match = ID_RE.match(backup_id)
    if not match:
        return None
    when = datetime.strptime(match.group(1), ID_FORMAT).replace(tzinfo=UTC)
    return when, int(match.group(2) or 1)


def folder_key(prefix: str, identifier: str, env: str) -> str:
    """The folder (S3: the key prefix) that holds one target's backups, under a store's prefix."""
    return f"{prefix}{identifier}/{env}/"


def backup_key(prefix: str, identifier: str, env: str, backup_id: str) -> str:
    """Where a backup's dump lives in a store (its manifest: the same key plus `.json`)."""
    return f"{folder_key(prefix, identifier, env)}{backup_id}{DUMP_SUFFIX}"


@dataclass(frozen=True)
class BackupEntry:
    """One backup as found in storage, with what its place, manifest and dump size say about it."""

    id: str
    key: str
    created_at: datetime
    size_bytes: int
    manifest: Manifest | None = None
    problem: str | None = None  # why the backup is damaged; None when it is not
    has_dump: bool = True
    # The stored bytes were read and their sha256 matched the manifest. Nothing lists that way yet
    # (it means reading every dump); a restore checks the sha256 of what it streams instead.
    verified: bool = False

    @property
    def complete(self) -> bool:
        """Manifest readable, written for this place, and the dump (not empty) has the size it records."""
        return self.manifest is not None and self.problem is None

    @property
    def status(self) -> str:
        if self.problem is not None:
            return "damaged"
        if self.manifest is None:
            return "legacy"
        return "verified" if self.verified else "complete"

    @property
    def sha256(self) -> str | None:
        return self.manifest.sha256 if self.manifest else None


@dataclass(frozen=True)
class _Listed:
    id: str
    key: str
    size_bytes: int | None  # None: no dump, only its manifest
    has_manifest: bool
    sort_key: tuple[datetime, int]


def _folder(store: BackupStore, identifier: str, env: str) -> str:
    return store.key(identifier, env, "x").rsplit("/", 1)[0] + "/"


def _listing(store: BackupStore, identifier: str, env: str) -> list[_Listed]:
    """Every backup id with a dump or a manifest (a manifest alone is a damaged backup), newest first."""
    folder = _folder(store, identifier, env)
    objects = dict(store.list_keys(folder))
    found: dict[str, _Listed] = {}
    for key in objects:
        name = key[len(folder):]
        if "/" in name:
            continue
        if name.endswith(MANIFEST_SUFFIX):
            backup_id = name.removesuffix(MANIFEST_SUFFIX)
        elif name.endswith(DUMP_SUFFIX):
            backup_id = name.removesuffix(DUMP_SUFFIX)
        else:
            continue
        parsed = parse_id(backup_id)
        if parsed is None or backup_id in found:
            continue
        dump_key = store.key(identifier, env, backup_id)
        found[backup_id] = _Listed(backup_id, dump_key, objects.get(dump_key), dump_key + ".json" in objects, parsed)
    return sorted(found.values(), key=lambda item: item.sort_key, reverse=True)


def _inspect(store: BackupStore, identifier: str, env: str, item: _Listed) -> BackupEntry:
    """Read the item's manifest (if any) and judge it against its place and its dump."""
    manifest: Manifest | None = None
    problem: str | None = None
    if item.has_manifest:
        try:
            text = store.read_text(item.key + ".json")
        except UnicodeDecodeError:
            text, problem = None, "manifest is not valid UTF-8 text"
        if text is not None:
            parsed = parse_manifest(text)
            manifest, problem = (parsed, None) if isinstance(parsed, Manifest) else (None, parsed)
    size = item.size_bytes
    if problem is None:
        problem = _damage(identifier, env, item, manifest)
    return BackupEntry(item.id, item.key, item.sort_key[0], size or 0, manifest, problem, has_dump=size is not None)


def _damage(identifier: str, env: str, item: _Listed, manifest: Manifest | None) -> str | None:
    """Why a backup with a readable (or no) manifest cannot be trusted; None if it can."""
    if item.size_bytes is None:
        return "manifest without dump: the dump is missing (expired by retention, or deleted)"
    if manifest is not None and (manifest.identifier, manifest.env, manifest.id, manifest.key) != (identifier, env, item.id, item.key):
        # Restoring it would put another environment's (or another backup's) data into the target.
        return (f"manifest does not match its place: it describes {manifest.identifier}/{manifest.env} "
                f"backup {manifest.id} at {manifest.key}")
    if item.size_bytes == 0:
        return "dump is empty (0 bytes)"
    if manifest is not None and manifest.size_bytes != item.size_bytes:
        return f"dump is {item.size_bytes} bytes but its manifest says {manifest.size_bytes}"
    return None


def cheap_listing(store: BackupStore, identifier: str, env: str) -> list[_Listed]:
    """Every backup's id, key and time from one listing, newest first, no manifest read."""
    return _listing(store, identifier, env)


def judge(store: BackupStore, identifier: str, env: str, item: _Listed) -> BackupEntry:
    """One listed backup with its manifest read and judged."""
    return _inspect(store, identifier, env, item)


@dataclass(frozen=True)
class Page:
    """The newest backups up to a limit, and how many the store holds in all."""

    entries: list[BackupEntry]
    total: int


def list_page(store: BackupStore, identifier: str, env: str, limit: int | None = None) -> Page:
    """Backups newest first, damaged ones included, and their total; manifests are read only for the entries returned."""
    listed = _listing(store, identifier, env)
    shown = listed if limit is None else listed[:limit]
    return Page([_inspect(store, identifier, env, item) for item in shown], len(listed))


def list_backups(store: BackupStore, identifier: str, env: str, limit: int | None = None) -> list[BackupEntry]:
    """Backups newest first, damaged ones included; manifests are read only for the entries returned."""
    return list_page(store, identifier, env, limit).entries


@dataclass(frozen=True)
class Newest:
    """The backup `latest` means, and the damaged backups newer than it that were passed over."""

    entry: BackupEntry | None
    damaged: tuple[BackupEntry, ...]


def newest_good(store: BackupStore, identifier: str, env: str) -> Newest:
    """The newest complete backup; the newest legacy dump only when none is complete."""
    damaged: list[BackupEntry] = []
    legacy: BackupEntry | None = None
    for item in _listing(store, identifier, env):
        entry = _inspect(store, identifier, env, item)
        if entry.problem is not None:
            damaged.append(entry)
        elif entry.complete:
            return Newest(entry, tuple(damaged))
        elif legacy is None:
            legacy = entry
    if legacy is None:
        return Newest(None, tuple(damaged))
    return Newest(legacy, tuple(d for d in damaged if d.created_at >= legacy.created_at))


def resolve_backup(store: BackupStore, identifier: str, env: str, which: str) -> BackupEntry:
    """A good backup by id, or `latest`: the newest complete one (legacy only when none is complete).

    Damaged backups are never returned: by id they fail (exit 1), `latest` skips them saying so.
    """
    where = f"{identifier}/{env} in {store.url}"
    if which != "latest":
        parsed = parse_id(which)
        if parsed is None:
            raise NoBackup(f"backup id {which!r} is not of the form YYYY-MM-DD_HH-MM-SS; run `db-backup list {identifier} {env}`")
        key = store.key(identifier, env, which)
        objects = dict(store.list_keys(key))
        if key not in objects and key + ".json" not in objects:
            raise NoBackup(f"no backup {which} for {where}; run `db-backup list {identifier} {env}` to see the ids")
        entry = _inspect(store, identifier, env, _Listed(which, key, objects.get(key), key + ".json" in objects, parsed))
        if entry.problem is not None:
            raise JobFailed(
                f"backup {which} of {where} is damaged ({entry.problem}) and cannot be restored; "
                f"run `db-backup list {identifier} {env}` and choose another"
            )
        return entry
    newest = newest_good(store, identifier, env)
    for entry in newest.damaged:
        log.warning("skipping backup %s of %s: it is damaged (%s)", entry.id, where, entry.problem)
    if newest.entry is None:
        if newest.damaged:
            count = len(newest.damaged)
            which_ones = "its only backup is" if count == 1 else f"all {count} are"
            raise JobFailed(
                f"no backup of {where} can be restored: {which_ones} damaged "
                f"(the newest, {newest.damaged[0].id}: {newest.damaged[0].problem})"
            )
        raise NoBackup(f"no backup to restore for {where}; run `db-backup backup {identifier} {env}` first")
    if newest.entry.manifest is None:
        log.warning("no complete backup for %s; falling back to the newest legacy dump %s", where, newest.entry.id)
    return newest.entry
