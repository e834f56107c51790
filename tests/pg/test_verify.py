"""`db-backup verify` on real backups of a real PostgreSQL, in a folder and in S3 (moto)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import MotoServer, PgCluster, fill_rich, run_cli, write_targets

BUCKET = "verify-test"


@pytest.fixture
def folder_env(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str]) -> dict[str, str]:
    fill_rich(pg, dbname)
    return {**pg_env, "DB_BACKUP_TARGETS": str(write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, "file://./backups"))}


def _targets(tmp_path: Path, pg: PgCluster, dbname: str, pg_env: dict[str, str], storage: str, compression: str) -> dict[str, str]:
    path = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, storage, extra=f"compression: {compression}")
    return {**pg_env, "DB_BACKUP_TARGETS": str(path)}


def _backup(env: dict[str, str], cwd: Path) -> str:
    result = run_cli("backup", "app", "production", env=env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]


def _folder(tmp_path: Path) -> Path:
    return tmp_path / "backups" / "app" / "production"


def _record(tmp_path: Path, backup_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((_folder(tmp_path) / f"{backup_id}.dump.verify.json").read_text())
    return data


def _resign(dump: Path) -> None:
    """Rewrite the manifest to promise exactly the bytes now stored, as a careless copy tool would."""
    manifest_path = dump.with_name(dump.name + ".json")
    manifest = json.loads(manifest_path.read_text())
    data = dump.read_bytes()
    manifest.update(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def test_a_good_backup_verifies_and_its_record_leaves_the_manifest_alone(pg: PgCluster, dbname: str, tmp_path: Path,
                                                                         pg_env: dict[str, str]) -> None:
    fill_rich(pg, dbname)
    env = _targets(tmp_path, pg, dbname, pg_env, "file://./backups", "zstd:1")
    backup_id = _backup(env, tmp_path)
    manifest = _folder(tmp_path) / f"{backup_id}.dump.json"
    before = manifest.read_bytes()
    result = run_cli("verify", "app", "production", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"backup {backup_id} of app/production: good (size and sha256 match the manifest;" in result.stdout
    assert "2 tables with data, read to its end" in result.stdout
    record = _record(tmp_path, backup_id)
    assert record["ok"] is True and record["problem"] is None and record["backup_id"] == backup_id
    assert record["sha256"] == json.loads(before)["sha256"]
    assert record["tables_with_data"] == 2 and isinstance(record["toc_entries"], int) and record["toc_entries"] > 10
    assert record["tool_version"] and str(record["pg_restore_version"]).split(".")[0].isdigit()
    assert any("sha256" in check for check in record["checks"])
    assert manifest.read_bytes() == before
    # The record is not a backup: list still shows exactly one.
    listed = json.loads(run_cli("list", "app", "production", "--json", env=env, cwd=tmp_path).stdout)
    assert [e["id"] for e in listed] == [backup_id]
    # A second verify replaces the record; the manifest is still untouched.
    assert run_cli("verify", "app", "production", "--backup", backup_id, env=env, cwd=tmp_path).returncode == 0
    assert manifest.read_bytes() == before


@pytest.mark.parametrize("compression", ["zstd:1", "gzip:6", "none"])
def test_a_truncated_and_re_signed_dump_fails_the_read_through(pg: PgCluster, dbname: str, tmp_path: Path,
                                                               pg_env: dict[str, str], compression: str) -> None:
    fill_rich(pg, dbname)
    env = _targets(tmp_path, pg, dbname, pg_env, "file://./backups", compression)
    backup_id = _backup(env, tmp_path)
    dump = _folder(tmp_path) / f"{backup_id}.dump"
    data = dump.read_bytes()
    dump.write_bytes(data[: len(data) - len(data) // 5])
    _resign(dump)
    listed = json.loads(run_cli("list", "app", "production", "--json", env=env, cwd=tmp_path).stdout)
    assert listed[0]["status"] == "complete"  # size and manifest agree: only reading it through can tell
    result = run_cli("verify", "app", "production", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"backup {backup_id} of app/production: BAD: the archive cannot be read to its end: "), line
    assert "take a new backup (`db-backup backup app production`)" in line
    assert f"1 of 1 backup of app/production failed verification: {backup_id}" in result.stderr
    record = _record(tmp_path, backup_id)
    assert record["ok"] is False and "cannot be read to its end" in str(record["problem"])


def test_a_flipped_byte_fails_on_the_checksum(folder_env: dict[str, str], tmp_path: Path) -> None:
    backup_id = _backup(folder_env, tmp_path)
    dump = _folder(tmp_path) / f"{backup_id}.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x40
    dump.write_bytes(bytes(data))
    result = run_cli("verify", "app", "production", "--json", env=folder_env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    [found] = json.loads(result.stdout)
    assert found["ok"] is False and str(found["problem"]).startswith("checksum mismatch: the manifest promises")
    assert found["sha256"] == hashlib.sha256(data).hexdigest()
    assert "the stored bytes changed after the backup was written" in found["fix"]
    assert found["record"] == f"app/production/{backup_id}.dump.verify.json"
    assert _record(tmp_path, backup_id)["ok"] is False


def test_all_checks_every_backup_and_fails_if_one_is_bad(folder_env: dict[str, str], tmp_path: Path) -> None:
    ids = [_backup(folder_env, tmp_path) for _ in range(3)]
    (_folder(tmp_path) / f"{ids[1]}.dump.json").write_text("{not json")
    result = run_cli("verify", "app", "production", "--backup", "all", env=folder_env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert [line.split()[1] for line in lines] == ids[::-1]
    bad = next(line for line in lines if ids[1] in line)
    assert "BAD: the catalog judges it damaged: manifest is not valid JSON" in bad
    assert sum("good" in line for line in lines) == 2
    assert f"1 of 3 backups of app/production failed verification: {ids[1]}" in result.stderr
    assert [_record(tmp_path, i)["ok"] for i in ids] == [True, False, True]
    # By id, the damaged one fails the same way; latest passes over it to the newest good one.
    assert run_cli("verify", "app", "production", "--backup", ids[1], env=folder_env, cwd=tmp_path).returncode == 1
    assert run_cli("verify", "app", "production", env=folder_env, cwd=tmp_path).returncode == 0
    # With every backup damaged, `latest` verifies the newest and says why it is bad.
    for backup_id in (ids[0], ids[2]):
        (_folder(tmp_path) / f"{backup_id}.dump").write_bytes(b"")
    result = run_cli("verify", "app", "production", env=folder_env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.startswith(f"backup {ids[2]} of app/production: BAD: the catalog judges it damaged: dump is empty")


def test_a_legacy_dump_is_read_through_but_its_checksum_cannot_be_checked(pg: PgCluster, dbname: str, tmp_path: Path,
                                                                          folder_env: dict[str, str]) -> None:
    folder = _folder(tmp_path)
    folder.mkdir(parents=True)
    legacy = folder / "2021-03-04_05-06-07.dump"
    subprocess.run(
        [str(pg.bindir / "pg_dump"), "-Fc", "-h", pg.host, "-p", str(pg.port), "-U", pg.user, "-f", str(legacy), dbname],
        env={**os.environ, "PGPASSWORD": pg.password}, check=True, timeout=120,
    )
    result = run_cli("verify", "app", "production", "--backup", "2021-03-04_05-06-07", env=folder_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "legacy dump without a manifest, so its checksum cannot be checked" in result.stdout
    record = _record(tmp_path, "2021-03-04_05-06-07")
    assert record["ok"] is True and record["checks"][0] == "no manifest: a legacy dump"
    legacy.write_bytes(legacy.read_bytes()[:-100])
    result = run_cli("verify", "app", "production", "--backup", "2021-03-04_05-06-07", env=folder_env, cwd=tmp_path)
    assert result.returncode == 1
    assert "BAD: the archive cannot be read to its end" in result.stdout


def test_no_backup_is_bad_input(folder_env: dict[str, str], tmp_path: Path) -> None:
    for which in ("latest", "all"):
        result = run_cli("verify", "app", "production", "--backup", which, env=folder_env, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr


def test_verify_in_s3_reads_the_object_and_writes_the_record_beside_it(pg: PgCluster, dbname: str, tmp_path: Path,
                                                                       pg_env: dict[str, str], aws: MotoServer) -> None:
    fill_rich(pg, dbname)
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    env = _targets(tmp_path, pg, dbname, pg_env, f"s3://{BUCKET}/nightly", "zstd:3")
    backup_id = _backup(env, tmp_path)
    key = f"nightly/app/production/{backup_id}.dump"
    manifest_before = s3.get_object(Bucket=BUCKET, Key=key + ".json")["Body"].read()
    result = run_cli("verify", "app", "production", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "good (size and sha256 match the manifest" in result.stdout
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=key + ".verify.json")["Body"].read())
    assert record["ok"] is True and record["sha256"] == json.loads(manifest_before)["sha256"]
    assert s3.get_object(Bucket=BUCKET, Key=key + ".json")["Body"].read() == manifest_before
    # Truncated and re-signed in the bucket: the read-through catches it.
    data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()[:-500]
    manifest = json.loads(manifest_before)
    manifest.update(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    s3.put_object(Bucket=BUCKET, Key=key + ".json", Body=json.dumps(manifest).encode())
    result = run_cli("verify", "app", "production", "--backup", backup_id, env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "BAD: the archive cannot be read to its end: zstd failed" in result.stdout
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=key + ".verify.json")["Body"].read())
    assert record["ok"] is False


def test_listing_the_toc_stops_reading_once_pg_restore_has_it(pg: PgCluster, dbname: str, tmp_path: Path,
                                                              pg_env: dict[str, str]) -> None:
    from runner.catalog import resolve_backup
    from runner.pg.tools import find_tool
    from runner.stores.local import LocalStore
    from runner.verify import list_toc

    fill_rich(pg, dbname)
    with pg.connect(dbname) as conn:
        conn.execute("CREATE TABLE bulk AS SELECT g, md5(g::text) || md5((g * 7)::text) AS h FROM generate_series(1, 300000) g")
    env = _targets(tmp_path, pg, dbname, pg_env, "file://./backups", "none")
    _backup(env, tmp_path)

    class Counting(LocalStore):
        fed = 0

        def read(self, key: str) -> Iterator[bytes]:
            for chunk in super().read(key):
                Counting.fed += len(chunk)
                yield chunk

    store = Counting(tmp_path / "backups")
    entry = resolve_backup(store, "app", "production", "latest")
    toc = list_toc(store, entry, find_tool("pg_restore"))
    assert toc.table_data == 3
    assert entry.size_bytes > 20 << 20 and Counting.fed <= 4 << 20, (entry.size_bytes, Counting.fed)
