"""Where the backups go: moto's S3 emulator in the bench process, or a real bucket (--s3-bucket)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from runner.pg import cluster

from .basics import BenchError, log

BUCKET = "bench-bucket"
S3_PREFIX_ROOT = "db-backup-bench"  # --s3-bucket: everything goes under ROOT/<run-id>/ by default

# The old system's upload and a download, each in a fresh Python process (so the old way pays
# for its interpreter and boto3 import, as it did): boto3's default transfer settings.
UPLOAD = "import sys, boto3; boto3.client('s3', region_name=sys.argv[3]).upload_file(sys.argv[1], sys.argv[2], sys.argv[4])"
DOWNLOAD = "import sys, boto3; boto3.client('s3', region_name=sys.argv[2]).download_file(sys.argv[1], sys.argv[3], sys.argv[4])"


class S3Base:
    """What the bench needs of S3: its keys all go under `root` in `bucket`."""

    emulated = True  # is there an emulator whose CPU the "cpu S3" column measures?
    label = "moto"
    bucket = BUCKET
    root = ""  # key prefix of everything this run writes ("" or "a/b/")
    region = "us-east-1"
    _client: Any = None

    def describe(self) -> str:
        raise NotImplementedError

    def where(self) -> str:
        """What it is, for the first log line once started."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = boto3.client("s3", region_name=self.region)
        return self._client

    def storage_url(self) -> str:
        """targets.yaml `storage:`, s3://BUCKET[/PREFIX] (the engine keys PREFIX/ID/ENV/...)."""
        return f"s3://{self.bucket}" + (f"/{self.root.rstrip('/')}" if self.root else "")

    def key(self, relative: str) -> str:
        return self.root + relative

    def objects(self, prefix: str) -> list[tuple[str, int]]:
        """(full key, size) under root + prefix."""
        found: list[tuple[str, int]] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.root + prefix):
            found.extend((o["Key"], int(o["Size"])) for o in page.get("Contents", []))
        return sorted(found)

    def delete_prefix(self, prefix: str, keep: Sequence[str] = ()) -> None:
        for key, _size in self.objects(prefix):
            if key not in keep:
                self.client.delete_object(Bucket=self.bucket, Key=key)


class Moto(S3Base):
    """moto's ThreadedMotoServer in this process; every child and boto3 call is pointed at it."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = cluster.free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._client: Any = None

    def describe(self) -> str:
        return f"moto S3 emulator in the bench process, s3://{BUCKET}"

    def where(self) -> str:
        return f"moto S3 on {self.endpoint}"

    def start(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines
        self.server.start()
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1",
                          AWS_ENDPOINT_URL=self.endpoint)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        self.client.create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.server.stop()


class RealS3(S3Base):
    """A real bucket: boto3's default credential chain and region, no endpoint override.

    The environment stays as it is (the db-backup children inherit it). Everything goes under a
    prefix that must be empty at the start, so everything under it at the end was written by this
    run: stop() deletes exactly that and aborts its multipart uploads.
    """

    emulated = False
    label = "S3"

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self.root = prefix.strip("/") + "/"
        self.region = ""
        self._client = None
        self.started = False

    def describe(self) -> str:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        inherited = f"; AWS_ENDPOINT_URL from the environment: {endpoint}" if endpoint else ""
        return (f"s3://{self.bucket}/{self.root} (boto3 default credentials and region, no "
                f"endpoint override{inherited}); cpu S3: n/a (no emulator to measure)")

    def where(self) -> str:
        return f"S3 {self.storage_url()}/ (bucket region {self.region})"

    def uploads(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.root):
            found.extend((u["Key"], u["UploadId"]) for u in page.get("Uploads", []))
        return found

    def start(self) -> None:
        probe = boto3.client("s3", region_name=boto3.session.Session().region_name or "us-east-1")
        try:
            head = probe.head_bucket(Bucket=self.bucket)
            headers = head.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            self.region = (head.get("BucketRegion") or headers.get("x-amz-bucket-region")
                           or probe.meta.region_name)
            self._client = None
            present, pending = self.objects(""), self.uploads()
        except (BotoCoreError, ClientError) as exc:
            raise BenchError(f"cannot use s3://{self.bucket}/{self.root}: {exc}") from exc
        if present or pending:
            raise BenchError(f"s3://{self.bucket}/{self.root} is not empty ({len(present)} "
                             f"objects, {len(pending)} multipart uploads); the bench deletes "
                             "everything under its prefix at the end, so it needs an empty one: "
                             "choose another --s3-prefix")
        self.started = True

    def stop(self) -> None:
        """Delete what this run wrote (everything under the prefix) and abort its uploads."""
        if not self.started:
            return
        self.started = False
        where = f"s3://{self.bucket}/{self.root}"
        try:
            aborted = 0
            for key, upload_id in self.uploads():
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id)
                aborted += 1
            keys = [k for k, _size in self.objects("")]
            for start in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[start:start + 1000]]
                answer = self.client.delete_objects(Bucket=self.bucket,
                                                    Delete={"Objects": batch, "Quiet": True})
                if answer.get("Errors"):
                    error = answer["Errors"][0]
                    raise BenchError(f"{error.get('Key')}: {error.get('Code')} "
                                     f"{error.get('Message', '')}".strip())
            left, pending = self.objects(""), self.uploads()
        except Exception as exc:  # never hide the run's own error
            print(f"WARNING: cleaning up {where} failed: {exc}; delete it by hand",
                  file=sys.stderr, flush=True)
            return
        if left or pending:
            print(f"WARNING: {where} still holds {len(left)} objects and {len(pending)} "
                  "multipart uploads (written during the cleanup?); delete them by hand",
                  file=sys.stderr, flush=True)
        else:
            log(f"S3 cleanup: deleted {len(keys)} objects and aborted {aborted} multipart "
                f"uploads under {where}; nothing is left there")
