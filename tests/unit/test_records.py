"""Records beside a backup are advice: one that cannot be read counts as none and never breaks a command."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runner.catalog import list_backups
from runner.history import RecordIndex
from runner.records import AckRecord, DrillRecord, VerifyRecord, put_record, read_record, record_key
from runner.stores.local import LocalStore
from tests.helpers.backups import write_manifest

WHEN = datetime(2024, 5, 1, 2, 0, tzinfo=UTC)
GOOD_DRILL = DrillRecord(backup_id="2024-05-01_02-00-00", checked_at=WHEN, ok=True, problem=None,
                         restore_duration_s=1.5, server="throwaway cluster (PostgreSQL 17.2)", tables={"public.t": 3})


def _store(tmp_path: Path) -> tuple[LocalStore, str]:
    store = LocalStore(tmp_path)
    manifest = write_manifest(store, "curation", "production", WHEN, None)
    return store, manifest.key


def test_a_record_reads_back_as_written(tmp_path: Path) -> None:
    store, key = _store(tmp_path)
    put_record(store, key, GOOD_DRILL)
    assert read_record(store, key, DrillRecord) == GOOD_DRILL
    assert read_record(store, key, VerifyRecord) is None  # another kind: not there


@pytest.mark.parametrize("text", [
    b'{"backup_id": "x", "checked_at": "2024-05-01T02:00:00", "ok": true, "problem": null,'
    b' "restore_duration_s": 1, "server": "s"}',  # no time zone: ages could not be computed
    b'{"backup_id": "x", "checked_at": "2024-05-01T02:00:00Z", "ok": true, "problem": null,'
    b' "restore_duration_s": NaN, "server": "s"}',
    b'{"backup_id": "x", "checked_at": "2024-05-01T02:00:00Z", "ok": true, "problem": null,'
    b' "restore_duration_s": -1, "server": "s"}',
    b"\xff\xfe not text",
    b"{not json",
], ids=["naive-time", "nan", "negative", "not-utf8", "not-json"])
def test_an_odd_record_counts_as_none(tmp_path: Path, text: bytes) -> None:
    store, key = _store(tmp_path)
    (tmp_path / record_key(key, "drill")).write_bytes(text)
    assert read_record(store, key, DrillRecord) is None


def test_a_damaged_acknowledgement_neither_silences_nor_resets_the_alarm(tmp_path: Path) -> None:
    store, key = _store(tmp_path)
    (entry,) = list_backups(store, "curation", "production")
    index = RecordIndex.of(store, "curation", "production")
    assert not index.acknowledged(entry)
    (tmp_path / record_key(key, "ack")).write_text('{"backup_id": "2024-05-01_02-00-00"}')  # no time, no author
    assert not RecordIndex.of(store, "curation", "production").acknowledged(entry)
    put_record(store, key, AckRecord(backup_id=entry.id, acknowledged_at=WHEN, by="alice"))
    assert RecordIndex.of(store, "curation", "production").acknowledged(entry)


class _TagRefusingStore(LocalStore):
    """A stub store: tags on the dump, and a write that carries tags refused as S3 refuses a caller without s3:PutObjectTagging."""

    def get_tags(self, key: str) -> dict[str, str]:
        return {"db-backup-tier": "monthly"}

    def put_text(self, key: str, text: str, tags: Mapping[str, str] | None = None, *, action: str = "writing") -> None:
        if tags:
            from runner.errors import TaggingDenied

            raise TaggingDenied(f"writing {key} failed: AccessDenied: Access Denied")
        super().put_text(key, text, tags, action=action)


def test_a_record_whose_tags_are_refused_is_written_untagged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from runner.errors import TaggingDenied
    from runner.records import PinRecord

    store = _TagRefusingStore(tmp_path)
    (tmp_path / "app" / "production").mkdir(parents=True)
    when = datetime(2026, 11, 30, tzinfo=UTC)
    put_record(store, "app/production/x.dump", AckRecord(backup_id="x", acknowledged_at=when, by="ops"))
    assert read_record(store, "app/production/x.dump", AckRecord) is not None
    assert "writing the record without its retention tags" in caplog.text
    with pytest.raises(TaggingDenied):  # a pin is nothing without its tags
        put_record(store, "app/production/x.dump", PinRecord(backup_id="x", pinned=True, changed_at=when, by="ops"),
                   {"db-backup-tier": "pinned"})
