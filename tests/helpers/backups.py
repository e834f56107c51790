"""Manifests and stored backups made up for tests that need a backup to exist, not a real dump."""

from __future__ import annotations

from datetime import UTC, datetime

from runner.catalog import make_id
from runner.manifest import Manifest
from runner.stores.local import LocalStore


def sample_manifest(
    key: str, *, identifier: str = "curation", env: str = "production", backup_id: str | None = None,
    created_at: datetime = datetime(2024, 5, 1, 2, 0, tzinfo=UTC), size: int = 1234, sha256: str = "ab" * 32,
    duration_s: float = 1.0, compression: str = "zstd:1", compressed_by: str = "zstd", pg_dump_version: str = "17.2",
    server_version: str = "16.4", tool_version: str = "0.1.0", request_id: str | None = None,
) -> Manifest:
    return Manifest(
        identifier=identifier, env=env, id=backup_id or make_id(created_at), key=key, created_at=created_at,
        duration_s=duration_s, size_bytes=size, sha256=sha256, format="custom", compression=compression,
        compressed_by=compressed_by, pg_dump_version=pg_dump_version, server_version=server_version,
        database=identifier, tool_version=tool_version, request_id=request_id,
    )


def write_manifest(store: LocalStore, identifier: str, env: str, when: datetime, request_id: str | None, size: int = 1234) -> Manifest:
    """A stored dump of `size` bytes and its manifest, as a finished backup leaves them."""
    key = store.key(identifier, env, make_id(when))
    (store.root / key).parent.mkdir(parents=True, exist_ok=True)
    (store.root / key).write_bytes(b"x" * size)
    manifest = sample_manifest(key, identifier=identifier, env=env, created_at=when, size=size, request_id=request_id)
    store.put_manifest(manifest)
    return manifest
