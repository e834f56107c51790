"""Backup stores (S3 and a local folder): keys, streaming uploads, manifests, listing."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol, cast

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .aws import CREDENTIAL_ERRORS, abort_client_for, error_code, infra_error
from .errors import IdTaken, InfraError, JobFailed, NoBackup

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, MultipartUploadTypeDef

log = logging.getLogger(__name__)

ID_RE = re.compile(r"^(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)(?:_(\d{1,4}))?$")
ID_FORMAT = "%Y-%m-%d_%H-%M-%S"
DUMP_SUFFIX = ".dump"
MANIFEST_SUFFIX = ".dump.json"
READ_CHUNK = 1 << 20


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


class ManifestModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    identifier: str
    env: str
    id: str
    key: str
    created_at: datetime
    duration_s: float
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format: str = "custom"
    compression: str = "gzip:6"
    compressed_by: str = "pg_dump"
    pg_dump_version: str = ""
    server_version: str = ""
    database: str = ""
    tool_version: str = ""
    request_id: str | None = None
    uncompressed_bytes: int | None = None


@dataclass(frozen=True)
class Manifest:
    identifier: str
    env: str
    id: str
    key: str
    created_at: datetime
    duration_s: float
    size_bytes: int
    sha256: str
    format: str
    compression: str
    compressed_by: str
    pg_dump_version: str
    server_version: str
    database: str
    tool_version: str
    request_id: str | None = None
    uncompressed_bytes: int | None = None  # pg_dump's own output; known for zstd and none

    def to_json(self) -> str:
        data = asdict(self)
        data["created_at"] = self.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def parse_manifest(text: str) -> Manifest | str:
    """The manifest, or the reason it cannot be read (what `list` shows for a damaged backup)."""
    try:
        model = ManifestModel.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.errors()
        if any(error["type"] == "json_invalid" for error in errors):
            return "manifest is not valid JSON"
        fields = sorted({".".join(str(part) for part in error["loc"]) or "the whole document" for error in errors})
        return f"manifest does not follow the manifest schema ({exc.error_count()} problems: {', '.join(fields)})"
    return Manifest(**model.model_dump())


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


class Upload(Protocol):
    def write(self, data: bytes) -> None: ...

    def complete(self) -> None: ...

    def abort(self) -> None: ...


class BackupStore(Protocol):
    url: str

    def key(self, identifier: str, env: str, backup_id: str) -> str: ...

    def uri(self, key: str) -> str: ...

    def start_upload(self, key: str, storage_class: str) -> Upload:
        """Reserve the key's id and start writing it; IdTaken if another backup has or holds it."""
        ...

    def clean_leftovers(
        self, identifier: str, env: str, now: datetime, abandoned: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Remove what backups of this target that did not finish left behind; what was removed.

        `abandoned(uri)` says whether no live run holds an upload, where the store cannot tell itself.
        """
        ...

    def put_manifest(self, manifest: Manifest) -> None: ...

    def read(self, key: str) -> Iterator[bytes]: ...

    def read_text(self, key: str) -> str | None: ...

    def list_keys(self, prefix: str) -> list[tuple[str, int]]: ...


def _base_key(prefix: str, identifier: str, env: str, backup_id: str) -> str:
    return f"{prefix}{identifier}/{env}/{backup_id}{DUMP_SUFFIX}"


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
        return "manifest without dump: the dump is missing"
    if manifest is not None and (manifest.identifier, manifest.env, manifest.id, manifest.key) != (identifier, env, item.id, item.key):
        # Restoring it would put another environment's (or another backup's) data into the target.
        return (f"manifest does not match its place: it describes {manifest.identifier}/{manifest.env} "
                f"backup {manifest.id} at {manifest.key}")
    if item.size_bytes == 0:
        return "dump is empty (0 bytes)"
    if manifest is not None and manifest.size_bytes != item.size_bytes:
        return f"dump is {item.size_bytes} bytes but its manifest says {manifest.size_bytes}"
    return None


def list_backups(store: BackupStore, identifier: str, env: str, limit: int | None = None) -> list[BackupEntry]:
    """Backups newest first, damaged ones included; manifests are read only for the entries returned."""
    listed = _listing(store, identifier, env)
    if limit is not None:
        listed = listed[:limit]
    return [_inspect(store, identifier, env, item) for item in listed]


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
            raise JobFailed(
                f"no backup of {where} can be restored: all {len(newest.damaged)} are damaged "
                f"(the newest, {newest.damaged[0].id}: {newest.damaged[0].problem})"
            )
        raise NoBackup(f"no backup to restore for {where}; run `db-backup backup {identifier} {env}` first")
    if newest.entry.manifest is None:
        log.warning("no complete backup for %s; falling back to the newest legacy dump %s", where, newest.entry.id)
    return newest.entry


# --- local folder -----------------------------------------------------------------------------


def _local_error(action: str, path: Path, exc: OSError, hint: str = "check the folder's free space and permissions") -> InfraError:
    """An OSError on the backup folder: storage, not the job, failed (exit 3), so say where and why."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return InfraError(f"{action} {path} failed: {reason}; {hint}, then run again")


# link() fails so on filesystems without hard links (some FUSE, SMB and FAT mounts).
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV)
_HARD_LINK_HINT = ("check the folder's permissions; its filesystem must support hard links, "
                   "which db-backup uses so that no backup is ever overwritten")


# A staging name is flocked a moment after it is created; one older than this with a free lock is a
# dead run's (or an older db-backup's, which never locked them), never a live run's.
STAGING_LEFTOVER_AGE_S = 60.0
_RESERVED_PARTIAL = re.compile(r"^\.\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(?:_\d{1,4})?\.dump\.partial$")


def _reserved_name(final: Path) -> Path:
    """The partial that reserves a backup id: deterministic, so two runs of one id meet on it."""
    return final.with_name(f".{final.name}.partial")


def _remove_if_dead(path: Path) -> Literal["removed", "gone", "live"]:
    """Remove a partial whose flock is free (its writer is gone); `live` if a running backup holds it.

    The lock is taken before the check and held through the unlink, and the name must still be
    the locked file: every writer unlinks its partial while holding its lock, so a partial whose
    lock is free is in no one's use, and its name cannot change hands in between.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return "gone"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "live"
        held, named = os.fstat(fd), os.lstat(path)
        if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
            return "gone"
        path.unlink()
        return "removed"
    except FileNotFoundError:
        return "gone"
    finally:
        os.close(fd)


class _FileUpload:
    """A hidden partial file, flocked while written, linked to its final name only when complete.

    The id is reserved by the partial's name (`.ID.dump.partial`): it is created under a unique
    staging name, locked, then link()ed to that name, which fails if it exists; so the reserved
    name is never seen unlocked, and a free lock on it means its run is gone.
    """

    def __init__(self, final: Path) -> None:
        self._final = final
        self._tmp = _reserved_name(final)
        staging = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            if self._taken():
                raise IdTaken(f"{final} already exists")
            self._file = staging.open("xb")
        except OSError as exc:
            raise _local_error("creating", staging, exc) from exc
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._claim(staging)
        except BaseException as exc:
            self._file.close()
            staging.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                # Fail before the dump, not after it: complete() needs link() too.
                hint = _HARD_LINK_HINT if exc.errno in _NO_HARD_LINKS else "check the folder's free space and permissions"
                raise _local_error("starting", final, exc, hint) from exc
            raise
        try:
            staging.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s (%s); the next backup removes it", staging, exc.strerror or exc)
        if self._taken():  # a run of this id completed just before the reservation
            self.abort()
            raise IdTaken(f"{final} already exists")

    def _taken(self) -> bool:
        return os.path.lexists(self._final) or os.path.lexists(f"{self._final}.json")

    def _claim(self, staging: Path) -> None:
        for _ in range(3):
            try:
                os.link(staging, self._tmp)
                return
            except FileExistsError:
                outcome = _remove_if_dead(self._tmp)
                if outcome == "live":
                    raise IdTaken(f"{self._final} is being written by another backup") from None
                if outcome == "removed":
                    log.info("removed %s, left by a backup of the same id that did not finish", self._tmp)
        raise IdTaken(f"{self._final} is contended by other backups")

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()  # a full disk must not also keep the partial's gigabytes
            raise _local_error("writing", self._tmp, exc) from exc

    def complete(self) -> None:
        linking = False
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            linking = True
            # link() refuses to replace: an existing backup is never overwritten.
            os.link(self._tmp, self._final)
        except FileExistsError as exc:
            self.abort()
            raise JobFailed(f"{self._final} already exists; another backup took this id, run again") from exc
        except OSError as exc:
            # ENOSPC at flush/fsync, EPERM from link(), EIO: never leave the partial behind.
            self.abort()
            if linking and exc.errno in _NO_HARD_LINKS:
                raise _local_error("completing", self._final, exc, _HARD_LINK_HINT) from exc
            raise _local_error("completing", self._final, exc) from exc
        except BaseException:
            self.abort()
            raise
        try:
            self._tmp.unlink()  # still locked: see _remove_if_dead
        except OSError as exc:
            # The backup itself is complete; the partial is a second name for the same bytes, and
            # with its lock free the next backup removes it.
            log.warning("could not remove %s (%s); the next backup removes it", self._tmp, exc.strerror or exc)
        finally:
            self._close()

    def _close(self) -> None:
        try:
            if not self._file.closed:
                self._file.close()  # may fail to flush (ENOSPC): the descriptor is closed regardless
        except OSError:
            pass

    def abort(self) -> None:
        """Delete the partial, then close it (releasing the id); never raises, so the error that led here is the one reported."""
        try:
            self._tmp.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s (%s); the next backup removes it", self._tmp, exc.strerror or exc)
        self._close()


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"

    def key(self, identifier: str, env: str, backup_id: str) -> str:
        return _base_key("", identifier, env, backup_id)

    def uri(self, key: str) -> str:
        return str(self.root / key)

    def start_upload(self, key: str, storage_class: str) -> Upload:
        return _FileUpload(self.root / key)

    def clean_leftovers(
        self, identifier: str, env: str, now: datetime, abandoned: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Remove hidden partial files of this target whose lock is free: runs that died mid-backup."""
        folder = self.root / identifier / env
        removed: list[str] = []
        try:
            children = sorted(folder.iterdir()) if folder.is_dir() else []
        except OSError as exc:
            log.warning("could not look for leftovers in %s (%s)", folder, exc.strerror or exc)
            return removed
        for child in children:
            if not (child.name.startswith(".") and child.name.endswith(".partial")):
                continue
            try:
                info = child.lstat()
                if not stat.S_ISREG(info.st_mode):
                    continue
                if not _RESERVED_PARTIAL.match(child.name) and time.time() - info.st_mtime < STAGING_LEFTOVER_AGE_S:
                    continue
                if _remove_if_dead(child) != "removed":
                    continue
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("could not remove the leftover %s (%s); delete it by hand", child, exc.strerror or exc)
                continue
            log.info("removed %s, a partial file left by a backup that did not finish", child)
            removed.append(str(child))
        return removed

    def put_manifest(self, manifest: Manifest) -> None:
        path = self.root / (manifest.key + ".json")
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            with tmp.open("x", encoding="utf-8") as handle:
                handle.write(manifest.to_json())
                handle.flush()
                os.fsync(handle.fileno())  # the commit marker: on disk before it has its name
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _local_error("writing the manifest", path, exc) from exc

    def read(self, key: str) -> Iterator[bytes]:
        path = self.root / key
        try:
            handle = path.open("rb")
        except FileNotFoundError as exc:
            raise NoBackup(f"{path} does not exist") from exc
        except OSError as exc:
            raise _local_error("opening", path, exc) from exc
        with handle:
            try:
                while chunk := handle.read(READ_CHUNK):
                    yield chunk
            except OSError as exc:
                raise _local_error("reading", path, exc) from exc

    def read_text(self, key: str) -> str | None:
        path = self.root / key
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _local_error("reading", path, exc) from exc

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        path = self.root / prefix
        folder = path if prefix.endswith("/") else path.parent
        found = []
        try:
            if not folder.is_dir():
                return []
            for child in folder.iterdir():
                key = str(child.relative_to(self.root))
                if child.name.startswith(".") or not key.startswith(prefix):
                    continue
                try:
                    info = child.stat()
                except FileNotFoundError:
                    continue  # removed while listing
                if stat.S_ISREG(info.st_mode):
                    found.append((key, info.st_size))
        except OSError as exc:
            raise _local_error("listing", folder, exc) from exc
        return found


# --- S3 ---------------------------------------------------------------------------------------


def part_target(base: int, parts_sent: int) -> int:
    """Part size: fixed for 5,000 parts (78 GiB at 16 MiB), then growing so 10,000 reach ~400 GiB.

    Memory is (parallel + 1) parts, so it stays flat for all but the largest dumps.
    """
    return base * (1 + max(0, parts_sent - 4000) // 1000)


# How long an aborting upload waits for its parts in flight: S3 may keep a part that was still
# arriving when the upload was aborted, so healthy parts (a second or two) are let finish; a part
# stuck on a silent endpoint is left to its daemon thread, which the exit ends.
ABORT_PART_WAIT_S = 2.0


class _S3Upload:
    """Multipart upload from a fixed pool of parallel + 1 part buffers: memory is bounded by design.

    Parts go up in daemon threads of its own, never awaited past ABORT_PART_WAIT_S once failing or
    cancelled: a part stuck on an endpoint that never answers must not hold the process's exit.
    """

    def __init__(
        self, client: S3Client, abort_client: S3Client, bucket: str, key: str, storage_class: str, part_size: int, parallel: int,
    ) -> None:
        self._client = client
        self._abort_client = abort_client
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        self._parallel = parallel
        # Allocated once and recycled: no 16 MB malloc/free churn (which glibc may keep resident).
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(parallel + 1):
            self._free.put(bytearray(part_size))
        self._buf = self._free.get()
        self._fill = 0
        self._sent = 0
        self._parts: list[CompletedPartTypeDef] = []
        self._jobs: queue.SimpleQueue[tuple[int, bytearray, int] | None] = queue.SimpleQueue()
        self._workers = 0
        self._idle = threading.Condition()
        self._in_flight = 0
        self._error: BaseException | None = None
        self._stopped = False
        self._aborted = False
        self._abort_error: str | None = None
        try:
            response = client.create_multipart_upload(Bucket=bucket, Key=key, StorageClass=storage_class)  # type: ignore[arg-type]
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(f"starting the upload to s3://{bucket}/{key}", exc, bucket) from exc
        self.upload_id = response["UploadId"]

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._error is not None:
                self._fail(self._error)
            target = part_target(self._part_size, self._sent)
            if len(self._buf) < target:
                self._buf += bytearray(target - len(self._buf))
            n = min(len(view), target - self._fill)
            self._buf[self._fill:self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == target:
                self._send()

    def _send(self) -> None:
        self._sent += 1
        with self._idle:
            self._in_flight += 1
        if self._workers < self._parallel:
            self._workers += 1
            threading.Thread(target=self._work, name=f"s3-part-{self._workers}", daemon=True).start()
        self._jobs.put((self._sent, self._buf, self._fill))
        self._buf = self._free.get()  # blocks while `parallel` parts are in flight
        self._fill = 0

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            number, buf, size = job
            try:
                if not self._aborted and self._error is None:
                    self._upload_part(number, buf, size)
            except BaseException as exc:
                self._error = self._error or exc
            finally:
                self._free.put(buf)
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()

    def _upload_part(self, number: int, buf: bytearray, size: int) -> None:
        if size < len(buf):
            del buf[size:]  # the last (or a shorter) part: truncate in place, never copy
        response = self._client.upload_part(
            # botocore sends any bytes-like body as is; the stubs only name bytes.
            Bucket=self._bucket, Key=self._key, UploadId=self.upload_id, PartNumber=number, Body=cast("bytes", buf)
        )
        with self._idle:
            self._parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def _wait_for_parts(self, limit_s: float | None) -> None:
        """Until no part is in flight, a part failed (without a limit), or limit_s passed."""
        deadline = None if limit_s is None else time.monotonic() + limit_s
        with self._idle:
            while self._in_flight and (deadline is not None or self._error is None):
                left = 1.0 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return
                self._idle.wait(min(left, 1.0))

    def _stop_workers(self) -> None:
        if not self._stopped:
            self._stopped = True
            for _ in range(self._workers):
                self._jobs.put(None)  # never joined: see the class docstring

    def complete(self) -> None:
        try:
            if self._fill or not self._sent:
                self._send()
            self._wait_for_parts(None)
            if self._error is not None:
                raise self._error
            parts = sorted(self._parts, key=lambda p: p["PartNumber"])
            try:
                self._client.complete_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self.upload_id,
                    MultipartUpload={"Parts": parts}, IfNoneMatch="*",
                )
            except ClientError as exc:
                # botocore retries a request whose answer was lost: the retry then meets the object
                # the first attempt made. That object is ours when its ETag is the one these parts make.
                if error_code(exc) not in ("PreconditionFailed", "NoSuchUpload") or not self._landed(parts):
                    raise
                log.info("s3://%s/%s was completed by an earlier attempt of the same request", self._bucket, self._key)
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._stop_workers()

    def _landed(self, parts: list[CompletedPartTypeDef]) -> bool:
        """The stored object is the one these parts make (S3's multipart ETag: md5 of the parts' md5s)."""
        digests = b"".join(bytes.fromhex(part["ETag"].strip('"')) for part in parts)
        expected = f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"'
        try:
            return self._client.head_object(Bucket=self._bucket, Key=self._key)["ETag"] == expected
        except (ClientError, BotoCoreError, ValueError):
            return False

    def _fail(self, exc: BaseException) -> NoReturn:
        """Abort the upload, then raise: AWS failures as one sentence naming the object (exit 3)."""
        self.abort()
        where = f"s3://{self._bucket}/{self._key}"
        if isinstance(exc, ClientError) and error_code(exc) == "PreconditionFailed":
            raise JobFailed(f"{where} already exists; another backup took this id, run again") from exc
        if not isinstance(exc, (ClientError, BotoCoreError)):
            raise exc  # a cancel or a bug: as it is
        error = _s3_error(f"uploading {where}", exc, self._bucket)
        if self._abort_error is not None:
            # Said here, not only in a log line: an open upload is billed until something removes it.
            error = InfraError(
                f"{error}; its multipart upload could not be aborted either, so the bucket's "
                "AbortIncompleteMultipartUpload lifecycle rule removes it"
            )
        raise error from exc

    def abort(self) -> None:
        """Drop queued parts and abort the multipart upload once, in bounded time; a failure is kept, not raised."""
        if self._aborted:
            return
        self._aborted = True  # workers skip the parts still queued
        try:
            self._wait_for_parts(ABORT_PART_WAIT_S)
        finally:
            self._stop_workers()
        try:
            # One short attempt (aws.abort_client_for): on the way out of a cancel this must not
            # hold the exit; an upload left open is removed by the next backup or the lifecycle rule.
            self._abort_client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self.upload_id)
        except (ClientError, BotoCoreError) as exc:
            self._abort_error = _short_reason(exc)
            log.warning("could not abort the multipart upload of %s (%s); the bucket's lifecycle rule removes it",
                        self._key, self._abort_error)


_URL_QUERY = re.compile(r"(https?://[^\s\"'?]*)\?[^\s\"']*")


def _short_reason(exc: ClientError | BotoCoreError) -> str:
    """The AWS reason without request query strings (uploadId=..., partNumber=...), which only add noise."""
    if isinstance(exc, ClientError):
        return f"{error_code(exc)}: {exc.response.get('Error', {}).get('Message', '')}".rstrip(": ")
    return _URL_QUERY.sub(r"\1", str(exc))


def _s3_error(action: str, exc: Exception, bucket: str) -> InfraError:
    if isinstance(exc, ClientError) and error_code(exc) == "NoSuchBucket":
        return InfraError(f"{action} failed: bucket {bucket} does not exist; check storage in targets.yaml")
    if isinstance(exc, BotoCoreError) and not isinstance(exc, CREDENTIAL_ERRORS):
        # Connection refused, timeouts, a broken response stream: S3 (or the way to it) is unreachable.
        return InfraError(
            f"{action} failed: {_short_reason(exc)}; check the network path to S3 "
            "(and AWS_ENDPOINT_URL if set), then run again"
        )
    return infra_error(action, exc)


class S3Store:
    def __init__(
        self, client: S3Client, bucket: str, prefix: str, part_size: int, parallel: int, abort_client: S3Client | None = None,
    ) -> None:
        self._client = client
        self._abort_client = abort_client or abort_client_for(client)
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._part_size = part_size
        self._parallel = parallel

    def key(self, identifier: str, env: str, backup_id: str) -> str:
        return _base_key(self.prefix, identifier, env, backup_id)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def start_upload(self, key: str, storage_class: str) -> Upload:
        """Reserve the id by opening its multipart upload: of two open uploads of one key, the first wins.

        Every run orders the key's open uploads the same way (Initiated, then UploadId) and keeps its
        own only if it comes first; an object listed after that means a run of this id completed.
        """
        if self.list_keys(key):
            raise IdTaken(f"{self.uri(key)} already exists")
        upload = _S3Upload(self._client, self._abort_client, self.bucket, key, storage_class, self._part_size, self._parallel)
        try:
            rival = self._first_other_upload(key, upload.upload_id) or bool(self.list_keys(key))
        except BaseException as exc:
            upload.abort()
            if isinstance(exc, (ClientError, BotoCoreError)):
                raise _s3_error(f"starting the upload to {self.uri(key)}", exc, self.bucket) from exc
            raise
        if rival:
            upload.abort()
            raise IdTaken(f"another backup is writing or wrote {self.uri(key)}")
        return upload

    def _open_uploads(self, prefix: str) -> list[MultipartUploadTypeDef]:
        found: list[MultipartUploadTypeDef] = []
        for page in self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
            found.extend(page.get("Uploads", []))
        return found

    def _first_other_upload(self, key: str, mine: str) -> bool:
        """Another open upload of exactly this key comes before ours."""
        order = {u["UploadId"]: (u["Initiated"], u["UploadId"]) for u in self._open_uploads(key) if u.get("Key") == key}
        if mine not in order:  # not listed yet: yield to any other, the next id is as good
            return bool(order)
        return any(rank < order[mine] for upload_id, rank in order.items() if upload_id != mine)

    def clean_leftovers(
        self, identifier: str, env: str, now: datetime, abandoned: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Abort this target's multipart uploads that no live backup holds: backups that died mid-upload.

        S3 cannot tell a live upload from a dead one; `abandoned` (the backups' locks on the database
        server, which die with their session) can. Without it nothing is aborted, and the bucket's
        AbortIncompleteMultipartUpload rule removes them in time.
        """
        if abandoned is None:
            return []
        prefix = self.key(identifier, env, "x").rsplit("/", 1)[0] + "/"
        aborted: list[str] = []
        try:
            for upload in self._open_uploads(prefix):
                key, upload_id, initiated = upload["Key"], upload["UploadId"], upload["Initiated"]
                if not abandoned(self.uri(key)):
                    continue
                try:
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                except ClientError as exc:
                    if error_code(exc) == "NoSuchUpload":
                        continue  # another run cleaned it first
                    raise
                log.info("aborted the multipart upload of %s opened %s UTC: its backup no longer runs",
                         self.uri(key), f"{initiated:%Y-%m-%d %H:%M}")
                aborted.append(f"{self.uri(key)} {upload_id}")
        except (ClientError, BotoCoreError) as exc:
            # Not this backup's problem: it goes on, and the bucket's lifecycle rule removes them later.
            log.warning("could not clean up unfinished uploads under %s (%s)", self.uri(prefix), _short_reason(exc))
        return aborted

    def put_manifest(self, manifest: Manifest) -> None:
        text = manifest.to_json()
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=manifest.key + ".json", Body=text.encode(),
                ContentType="application/json", IfNoneMatch="*",
            )
        except ClientError as exc:
            # A retried request whose first attempt landed meets its own manifest: that is success.
            if error_code(exc) == "PreconditionFailed" and self._read_quietly(manifest.key + ".json") == text:
                return
            raise _s3_error(f"writing the manifest of {self.uri(manifest.key)}", exc, self.bucket) from exc
        except BotoCoreError as exc:
            raise _s3_error(f"writing the manifest of {self.uri(manifest.key)}", exc, self.bucket) from exc

    def _read_quietly(self, key: str) -> str | None:
        try:
            return self.read_text(key)
        except InfraError:
            return None

    def read(self, key: str) -> Iterator[bytes]:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                raise NoBackup(f"{self.uri(key)} does not exist") from exc
            if error_code(exc) == "InvalidObjectState":
                raise InfraError(f"{self.uri(key)} is archived; restore it from its storage class first") from exc
            raise _s3_error(f"reading {self.uri(key)}", exc, self.bucket) from exc
        except BotoCoreError as exc:
            raise _s3_error(f"reading {self.uri(key)}", exc, self.bucket) from exc
        try:
            yield from body.iter_chunks(READ_CHUNK)
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(f"reading {self.uri(key)}", exc, self.bucket) from exc
        finally:
            body.close()

    def read_text(self, key: str) -> str | None:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode("utf-8")
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise _s3_error(f"reading {self.uri(key)}", exc, self.bucket) from exc
        except BotoCoreError as exc:
            raise _s3_error(f"reading {self.uri(key)}", exc, self.bucket) from exc

    def list_keys(self, prefix: str) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                found.extend((obj["Key"], obj["Size"]) for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(f"listing s3://{self.bucket}/{prefix}", exc, self.bucket) from exc
        return found


def open_store(url: str, s3: Callable[[], S3Client], part_size_mb: int = 16, parallel: int = 2) -> BackupStore:
    if url.startswith("file://"):
        return LocalStore(Path(url.removeprefix("file://")))
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    return S3Store(s3(), bucket, f"{prefix}/" if prefix else "", part_size_mb << 20, parallel)


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
