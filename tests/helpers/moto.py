"""The moto server on loopback, and what it must report as S3 does."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer

from runner.pg.cluster import free_port


def start_moto() -> tuple[ThreadedMotoServer, int]:
    """A started moto server on a free loopback port; the caller stops it."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, port


def real_upload_times(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto reports one fixed Initiated time (in 2010) for every open upload; report when each was opened, as S3 does.

    Without this every upload would look 6 h idle to db-backup, a live one's too.
    """
    from moto.s3.models import FakeMultipart

    original_init = FakeMultipart.__init__
    original_list = S3Response.list_multipart_uploads

    def init(self: FakeMultipart, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.initiated = datetime.now(UTC)  # type: ignore[attr-defined]

    def listing(self: S3Response) -> Any:
        status, headers, body = original_list(self)
        uploads = self.backend.list_multipart_uploads(self.bucket_name)

        def initiated(match: re.Match[str]) -> str:
            upload = uploads.get(re.search(r"<UploadId>([^<]+)</UploadId>", match.group(0)).group(1))  # type: ignore[union-attr]
            when: datetime | None = getattr(upload, "initiated", None)
            if when is None:
                return match.group(0)
            stamp = f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond // 1000:03d}Z"
            return re.sub(r"<Initiated>[^<]*</Initiated>", f"<Initiated>{stamp}</Initiated>", match.group(0))

        text = body.decode() if isinstance(body, bytes) else body
        return status, headers, re.sub(r"<Upload>.*?</Upload>", initiated, text, flags=re.DOTALL)

    monkeypatch.setattr(FakeMultipart, "__init__", init)
    monkeypatch.setattr(S3Response, "list_multipart_uploads", listing)
