"""The manifest written next to each dump: what it holds, and how it is written and read back."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config

from .words import plural


@with_config(ConfigDict(extra="ignore"))  # a manifest written by a newer db-backup still reads
@dataclass(frozen=True)
class Manifest:
    """One backup's record; the defaults fill in what manifests of older db-backup versions lack."""

    identifier: str
    env: str
    id: str
    key: str
    created_at: datetime
    duration_s: float
    size_bytes: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    format: str = "custom"
    compression: str = "gzip:6"
    compressed_by: str = "pg_dump"
    pg_dump_version: str = ""
    server_version: str = ""
    database: str = ""
    tool_version: str = ""
    request_id: str | None = None
    uncompressed_bytes: int | None = None  # pg_dump's own output; known for zstd and none
    # The roles and globals file beside the dump (`{id}.globals.sql`); absent in older manifests.
    globals_sha256: Annotated[str | None, Field(pattern=r"^[0-9a-f]{64}$")] = None
    globals_bytes: Annotated[int | None, Field(ge=0)] = None
    globals_missing: str | None = None  # what could not be captured, and why
    roles: tuple[str, ...] | None = None  # the roles the database's objects refer to

    def to_json(self) -> str:
        data = asdict(self)
        for name in _OPTIONAL:
            if data[name] is None:
                del data[name]  # a manifest without them reads, and is written, as before they existed
        data["created_at"] = self.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


_OPTIONAL = ("globals_sha256", "globals_bytes", "globals_missing", "roles")
_SCHEMA = TypeAdapter(Manifest)


def globals_key(dump_key: str) -> str:
    """Where a backup's roles and globals (pg_dumpall's output) live: beside its dump."""
    return dump_key.removesuffix(".dump") + ".globals.sql"


def parse_manifest(text: str) -> Manifest | str:
    """The manifest, or the reason it cannot be read (what `list` shows for a damaged backup)."""
    try:
        return _SCHEMA.validate_json(text)
    except ValidationError as exc:
        errors = exc.errors()
        if any(error["type"] == "json_invalid" for error in errors):
            return "manifest is not valid JSON"
        fields = sorted({".".join(str(part) for part in error["loc"]) or "the whole document" for error in errors})
        return f"manifest does not follow the manifest schema ({plural(exc.error_count(), 'problem')}: {', '.join(fields)})"
