"""Where backups are kept: the interface every store offers, and the store a targets.yaml URL names."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from ..manifest import Manifest
    from .s3_tags import Lifecycle

READ_CHUNK = 1 << 20


class Upload(Protocol):
    def write(self, data: bytes) -> None: ...

    def complete(self) -> None: ...

    def abort(self) -> None: ...


class BackupStore(Protocol):
    url: str
    # True where the store removes expired backups itself by their tags (S3 lifecycle); a folder is pruned.
    expires_itself: bool

    def key(self, identifier: str, env: str, backup_id: str) -> str: ...

    def uri(self, key: str) -> str: ...

    def start_upload(self, key: str, storage_class: str, tags: Mapping[str, str] | None = None) -> Upload:
        """Reserve the key's id and start writing it; IdTaken if another backup has or holds it."""
        ...

    def clean_leftovers(
        self, identifier: str, env: str, now: datetime, abandoned: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Remove what backups of this target that did not finish left behind; what was removed.

        `abandoned(uri)` says whether no live run holds an upload, where the store cannot tell itself.
        """
        ...

    def put_manifest(self, manifest: Manifest, tags: Mapping[str, str] | None = None) -> None: ...

    def put_text(self, key: str, text: str, tags: Mapping[str, str] | None = None) -> None:
        """Write a small object beside the backups (a record), replacing what was there."""
        ...

    def get_tags(self, key: str) -> dict[str, str]:
        """The object's tags; always empty where the store has none (a folder)."""
        ...

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None:
        """Replace the object's tags; nothing where the store has none."""
        ...

    def lifecycle(self, identifier: str, env: str) -> Lifecycle | None:
        """What the store's own rules expire in a target's folder, per tier; None where nothing expires on its own (a folder)."""
        ...

    def read(self, key: str) -> Iterator[bytes]: ...

    def read_text(self, key: str) -> str | None: ...

    def list_keys(self, prefix: str) -> list[tuple[str, int]]: ...


def open_store(url: str, s3: Callable[[], S3Client], part_size_mb: int = 16, parallel: int = 2) -> BackupStore:
    """The store at a `file://PATH` or `s3://BUCKET[/PREFIX]` URL; only its own implementation is imported."""
    if url.startswith("file://"):
        from .local import LocalStore

        return LocalStore(Path(url.removeprefix("file://")))
    from .s3 import S3Store

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    return S3Store(s3(), bucket, f"{prefix}/" if prefix else "", part_size_mb << 20, parallel)
