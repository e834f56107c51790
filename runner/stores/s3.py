"""An S3 bucket as the backup store: multipart uploads that reserve their id, retry-safe writes, listing.

Longer than most modules because its one job is S3's write path: the upload's bounded pool of part
buffers and its threads, the first-upload-wins id reservation, and completions whose answer was lost.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, NoReturn, cast

from botocore.exceptions import BotoCoreError, ClientError

from ..aws import CREDENTIAL_ERRORS, abort_client_for, error_code, infra_error
from ..catalog import backup_key, folder_key
from ..errors import IdTaken, InfraError, JobFailed, NoBackup, TaggingDenied
from ..manifest import Manifest
from . import READ_CHUNK, Upload, s3_tags

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.literals import StorageClassType
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, MultipartUploadTypeDef

log = logging.getLogger(__name__)


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
        tags: Mapping[str, str] | None = None,
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
            response = client.create_multipart_upload(
                Bucket=bucket, Key=key, StorageClass=cast("StorageClassType", storage_class), **s3_tags.tagging_header(tags),
            )
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
        self.expires_itself = True
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self._part_size = part_size
        self._parallel = parallel

    def key(self, identifier: str, env: str, backup_id: str) -> str:
        return backup_key(self.prefix, identifier, env, backup_id)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def start_upload(self, key: str, storage_class: str, tags: Mapping[str, str] | None = None) -> Upload:
        """Reserve the id by opening its multipart upload: of two open uploads of one key, the first wins.

        Every run orders the key's open uploads the same way (Initiated, then UploadId) and keeps its
        own only if it comes first; an object listed after that means a run of this id completed.
        """
        if self.list_keys(key):
            raise IdTaken(f"{self.uri(key)} already exists")
        upload = _S3Upload(self._client, self._abort_client, self.bucket, key, storage_class, self._part_size, self._parallel, tags)
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
        prefix = folder_key(self.prefix, identifier, env)
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

    def put_manifest(self, manifest: Manifest, tags: Mapping[str, str] | None = None) -> None:
        text = manifest.to_json()
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=manifest.key + ".json", Body=text.encode(),
                ContentType="application/json", IfNoneMatch="*", **s3_tags.tagging_header(tags),
            )
        except ClientError as exc:
            # A retried request whose first attempt landed meets its own manifest: that is success.
            if error_code(exc) == "PreconditionFailed" and self._read_quietly(manifest.key + ".json") == text:
                return
            raise _s3_error(f"writing the manifest of {self.uri(manifest.key)}", exc, self.bucket) from exc
        except BotoCoreError as exc:
            raise _s3_error(f"writing the manifest of {self.uri(manifest.key)}", exc, self.bucket) from exc

    def put_text(self, key: str, text: str, tags: Mapping[str, str] | None = None) -> None:
        content_type = "application/json" if key.endswith(".json") else "text/plain; charset=utf-8"
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=text.encode(), ContentType=content_type, **s3_tags.tagging_header(tags),
            )
        except (ClientError, BotoCoreError) as exc:
            error = _s3_error(f"writing {self.uri(key)}", exc, self.bucket)
            if tags and isinstance(exc, ClientError) and error_code(exc) == "AccessDenied":
                raise TaggingDenied(str(error)) from exc
            raise error from exc

    def get_tags(self, key: str) -> dict[str, str]:
        return s3_tags.get_tags(self._client, self.bucket, key)

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None:
        s3_tags.set_tags(self._client, self.bucket, key, tags)

    def lifecycle(self, identifier: str, env: str) -> s3_tags.Lifecycle | None:
        return s3_tags.read_lifecycle(self._client, self.bucket, folder_key(self.prefix, identifier, env))

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
