"""Backup stores (S3 and a local folder): keys, streaming uploads, manifests, listing."""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import re
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, cast

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pydantic import BaseModel, ConfigDict, ValidationError

from .aws import error_code, infra_error
from .errors import InfraError, JobFailed, NoBackup

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

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
    size_bytes: int
    sha256: str
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

    @staticmethod
    def from_json(text: str | bytes, where: str) -> Manifest:
        try:
            model = ManifestModel.model_validate_json(text)
        except ValidationError as exc:
            raise JobFailed(f"manifest {where} is not valid ({exc.error_count()} problems); the backup cannot be trusted") from exc
        return Manifest(**model.model_dump())


@dataclass(frozen=True)
class BackupEntry:
    id: str
    key: str
    created_at: datetime
    size_bytes: int
    manifest: Manifest | None = None

    @property
    def verified(self) -> bool:
        return self.manifest is not None and self.manifest.size_bytes == self.size_bytes

    @property
    def status(self) -> str:
        if self.manifest is None:
            return "legacy"
        return "verified" if self.verified else "mismatch"

    @property
    def sha256(self) -> str | None:
        return self.manifest.sha256 if self.manifest else None


@dataclass(frozen=True)
class _Listed:
    id: str
    key: str
    size_bytes: int
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

    def start_upload(self, key: str, storage_class: str) -> Upload: ...

    def put_manifest(self, manifest: Manifest) -> None: ...

    def read(self, key: str) -> Iterator[bytes]: ...

    def read_text(self, key: str) -> str | None: ...

    def list_keys(self, prefix: str) -> list[tuple[str, int]]: ...


def _base_key(prefix: str, identifier: str, env: str, backup_id: str) -> str:
    return f"{prefix}{identifier}/{env}/{backup_id}{DUMP_SUFFIX}"


def list_backups(
    store: BackupStore, identifier: str, env: str, limit: int | None = None, manifests: bool = True
) -> list[BackupEntry]:
    """Backups newest first; manifests are read only for the entries returned."""
    folder = store.key(identifier, env, "x").rsplit("/", 1)[0] + "/"
    objects = dict(store.list_keys(folder))
    listed = []
    for key, size in objects.items():
        name = key[len(folder):]
        if not name.endswith(DUMP_SUFFIX) or "/" in name:
            continue
        backup_id = name.removesuffix(DUMP_SUFFIX)
        parsed = parse_id(backup_id)
        if parsed is None:
            continue
        listed.append(_Listed(backup_id, key, size, key + ".json" in objects, parsed))
    listed.sort(key=lambda item: item.sort_key, reverse=True)
    entries = []
    for index, item in enumerate(listed):
        manifest = None
        if manifests and item.has_manifest and (limit is None or index < limit):
            manifest = load_manifest(store, item.key)
        entries.append(BackupEntry(item.id, item.key, item.sort_key[0], item.size_bytes, manifest))
    return entries if limit is None else entries[:limit]


def load_manifest(store: BackupStore, dump_key: str) -> Manifest | None:
    text = store.read_text(dump_key + ".json")
    return Manifest.from_json(text, store.uri(dump_key + ".json")) if text is not None else None


def resolve_backup(store: BackupStore, identifier: str, env: str, which: str) -> BackupEntry:
    """`latest` is the newest verified backup; legacy dumps only when none is verified."""
    where = f"{identifier}/{env} in {store.url}"
    if which != "latest":
        if parse_id(which) is None:
            raise NoBackup(f"backup id {which!r} is not of the form YYYY-MM-DD_HH-MM-SS; run `db-backup list {identifier} {env}`")
        key = store.key(identifier, env, which)
        for key_found, size in store.list_keys(key):
            if key_found == key:
                parsed = parse_id(which)
                assert parsed is not None
                return BackupEntry(which, key, parsed[0], size, load_manifest(store, key))
        raise NoBackup(f"no backup {which} for {where}; run `db-backup list {identifier} {env}` to see the ids")
    entries = list_backups(store, identifier, env, manifests=False)
    legacy: BackupEntry | None = None
    for entry in entries:
        text = store.read_text(entry.key + ".json")
        if text is None:
            legacy = legacy or entry
            continue
        manifest = Manifest.from_json(text, store.uri(entry.key + ".json"))
        candidate = BackupEntry(entry.id, entry.key, entry.created_at, entry.size_bytes, manifest)
        if candidate.verified:
            return candidate
        log.warning("skipping backup %s: its size differs from its manifest", entry.id)
    if legacy is not None:
        log.warning("no verified backup for %s; falling back to the newest legacy dump %s", where, legacy.id)
        return legacy
    raise NoBackup(f"no backup to restore for {where}; run `db-backup backup {identifier} {env}` first")


# --- local folder -----------------------------------------------------------------------------


def _local_error(action: str, path: Path, exc: OSError, hint: str = "check the folder's free space and permissions") -> InfraError:
    """An OSError on the backup folder: storage, not the job, failed (exit 3), so say where and why."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return InfraError(f"{action} {path} failed: {reason}; {hint}, then run again")


# link() fails so on filesystems without hard links (some FUSE, SMB and FAT mounts).
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV)


class _FileUpload:
    def __init__(self, final: Path) -> None:
        self._final = final
        self._tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._tmp.open("xb")
        except OSError as exc:
            raise _local_error("creating", self._tmp, exc) from exc

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
            self._file.close()
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
                hint = ("check the folder's permissions; its filesystem must support hard links, "
                        "which db-backup uses so that no backup is ever overwritten")
                raise _local_error("completing", self._final, exc, hint) from exc
            raise _local_error("completing", self._final, exc) from exc
        except BaseException:
            self.abort()
            raise
        try:
            self._tmp.unlink()
        except OSError as exc:
            # The backup itself is complete; the partial is a second name for the same bytes.
            log.warning("could not remove %s (%s); delete it by hand", self._tmp, exc.strerror or exc)

    def abort(self) -> None:
        """Close and delete the partial; never raises, so the error that led here is the one reported."""
        try:
            if not self._file.closed:
                self._file.close()  # may fail to flush (ENOSPC): the descriptor is closed regardless
        except OSError:
            pass
        try:
            self._tmp.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s (%s); delete it by hand", self._tmp, exc.strerror or exc)


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


class _S3Upload:
    """Multipart upload from a fixed pool of parallel + 1 part buffers: memory is bounded by design."""

    def __init__(self, client: S3Client, bucket: str, key: str, storage_class: str, part_size: int, parallel: int) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        # Allocated once and recycled: no 16 MB malloc/free churn (which glibc may keep resident).
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(parallel + 1):
            self._free.put(bytearray(part_size))
        self._buf = self._free.get()
        self._fill = 0
        self._parts: list[CompletedPartTypeDef] = []
        self._futures: list[Future[None]] = []
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="s3-part")
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._aborted = False
        self._abort_error: str | None = None
        try:
            response = client.create_multipart_upload(Bucket=bucket, Key=key, StorageClass=storage_class)  # type: ignore[arg-type]
        except (ClientError, BotoCoreError) as exc:
            self._pool.shutdown()
            raise _s3_error(f"starting the upload to s3://{bucket}/{key}", exc, bucket) from exc
        self._upload_id = response["UploadId"]

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._error is not None:
                self._fail(self._error)
            target = part_target(self._part_size, len(self._futures))
            if len(self._buf) < target:
                self._buf += bytearray(target - len(self._buf))
            n = min(len(view), target - self._fill)
            self._buf[self._fill:self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == target:
                self._send()

    def _send(self) -> None:
        number = len(self._futures) + 1
        self._futures.append(self._pool.submit(self._upload_part, number, self._buf, self._fill))
        self._buf = self._free.get()  # blocks while `parallel` parts are in flight
        self._fill = 0

    def _upload_part(self, number: int, buf: bytearray, size: int) -> None:
        try:
            if size < len(buf):
                del buf[size:]  # the last (or a shorter) part: truncate in place, never copy
            response = self._client.upload_part(
                # botocore sends any bytes-like body as is; the stubs only name bytes.
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=cast("bytes", buf)
            )
            with self._lock:
                self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self._free.put(buf)

    def complete(self) -> None:
        try:
            if self._fill or not self._futures:
                self._send()
            for future in self._futures:
                future.result()
            parts = sorted(self._parts, key=lambda p: p["PartNumber"])
            self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id,
                MultipartUpload={"Parts": parts}, IfNoneMatch="*",
            )
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._pool.shutdown(wait=True)

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
        """Cancel queued parts and abort the multipart upload once; a failure is kept, not raised."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._aborted:
            return
        self._aborted = True
        try:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
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
    if isinstance(exc, BotoCoreError) and not isinstance(exc, NoCredentialsError):
        # Connection refused, timeouts, a broken response stream: S3 (or the way to it) is unreachable.
        return InfraError(
            f"{action} failed: {_short_reason(exc)}; check the network path to S3 "
            "(and AWS_ENDPOINT_URL if set), then run again"
        )
    return infra_error(action, exc)


class S3Store:
    def __init__(self, client: S3Client, bucket: str, prefix: str, part_size: int, parallel: int) -> None:
        self._client = client
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
        return _S3Upload(self._client, self.bucket, key, storage_class, self._part_size, self._parallel)

    def put_manifest(self, manifest: Manifest) -> None:
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=manifest.key + ".json", Body=manifest.to_json().encode(),
                ContentType="application/json", IfNoneMatch="*",
            )
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(f"writing the manifest of {self.uri(manifest.key)}", exc, self.bucket) from exc

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
        "size_bytes": entry.size_bytes,
        "sha256": entry.sha256,
        "status": entry.status,
        "verified": entry.verified,
        "compression": entry.manifest.compression if entry.manifest else None,
    }
