"""The engine against S3 and SSM on a moto server over HTTP, with a real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
import pytest
from botocore.awsrequest import AWSPreparedRequest
from botocore.config import Config
from moto.s3.responses import S3Response

from runner.pg import session
from tests.conftest import (
    MotoServer,
    PgCluster,
    backup_with_database_dropped_mid_dump,
    fill_rich,
    fill_small,
    fingerprint,
    free_port,
    lock_waiters,
    restore_leftovers,
    run_cli,
    run_until,
    table_locked,
    wait_for,
)
from tests.helpers.cli import run_main
from tests.helpers.moto import real_upload_times, start_moto

BUCKET = "agr-db-backups-test"


def _targets(path: Path, pg: PgCluster, prod: str, beta: str, storage_class: str = "STANDARD", compression: str = "zstd:1") -> Path:
    # production uses the old system's SSM layout; beta names its database explicitly.
    path.write_text(f"""version: 1
defaults:
  storage: s3://{BUCKET}/nightly
  region: us-east-1
  storage_class: {storage_class}
  compression: {compression}
environments:
  production: {{protected: true}}
  beta: {{}}
targets:
  - identifier: app
    env: production
    schedule: nightly
    database: {{port: {pg.port}}}
  - identifier: app
    env: beta
    database: {{host: {pg.host}, port: {pg.port}, name: {beta}, user: {pg.user}, password: "ssm:/app/beta/db/backup/password"}}
""")
    return path


def _ssm_layout(pg: PgCluster, dbname: str, password: str | None = None) -> None:
    ssm = boto3.client("ssm", region_name="us-east-1")
    values = {"host": pg.host, "name": dbname, "user": pg.user}
    for name, value in values.items():
        ssm.put_parameter(Name=f"/app/production/db/backup/{name}", Value=value, Type="String", Overwrite=True)
    for env in ("production", "beta"):
        ssm.put_parameter(Name=f"/app/{env}/db/backup/password", Value=password or pg.password, Type="SecureString", Overwrite=True)


def _objects() -> list[str]:
    s3 = boto3.client("s3", region_name="us-east-1")
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def _open_uploads() -> list[str]:
    s3 = boto3.client("s3", region_name="us-east-1")
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


@pytest.fixture
def env(aws: MotoServer, pg: PgCluster, dbname: str, tmp_path: Path) -> dict[str, str]:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    beta = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{beta}"')
    fill_small(pg, beta, "beta")
    return {"DB_BACKUP_TARGETS": str(_targets(tmp_path / "targets.yaml", pg, dbname, beta)), "PORT_HINT": str(pg.port)}


def test_backup_to_s3_with_ssm_credentials_and_restore(pg: PgCluster, dbname: str, env: dict[str, str], tmp_path: Path) -> None:
    fill_rich(pg, dbname)
    with pg.connect(dbname) as conn:  # enough data for several 5 MB parts
        conn.execute("CREATE TABLE bulk AS SELECT g, md5(g::text) || md5((g * 7)::text) AS h FROM generate_series(1, 250000) g")
    _ssm_layout(pg, dbname)
    _targets(Path(env["DB_BACKUP_TARGETS"]), pg, dbname, f"{dbname}__beta", storage_class="GLACIER_IR", compression="none")
    result = run_cli("backup", "app", "production", env={**env, "DB_BACKUP_PART_SIZE_MB": "5"})
    assert result.returncode == 0, result.stderr
    keys = _objects()
    assert len(keys) == 3 and keys[0].startswith("nightly/app/production/") and keys[1] == keys[0] + ".json"
    assert keys[2] == keys[0].removesuffix(".dump") + ".globals.sql"  # the roles, beside the dump
    s3 = boto3.client("s3", region_name="us-east-1")
    roles = s3.get_object(Bucket=BUCKET, Key=keys[2])["Body"].read()
    assert b"CREATE ROLE" in roles and b"SCRAM" not in roles
    tagging = {key: s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"] for key in keys}
    assert tagging[keys[2]] == tagging[keys[0]] == tagging[keys[1]]  # they expire together
    head = s3.head_object(Bucket=BUCKET, Key=keys[0])
    assert head["StorageClass"] == "GLACIER_IR"
    assert head["ContentLength"] > 10 << 20 and "-" in head["ETag"]  # a real multipart object
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=keys[1])["Body"].read())
    assert manifest["size_bytes"] == head["ContentLength"] and manifest["database"] == dbname
    assert manifest["globals_sha256"] == hashlib.sha256(roles).hexdigest()
    assert manifest["server_version"].startswith(str(pg.bindir).split("/")[4])
    listed = json.loads(run_cli("list", "app", "production", "--json", env=env).stdout)
    assert [(e["id"], e["status"], e["sha256"]) for e in listed] == [(manifest["id"], "complete", manifest["sha256"])]
    restored = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(pg, f"{dbname}__beta") == fingerprint(pg, dbname)
    assert _open_uploads() == []


def test_failed_dump_aborts_the_upload(pg: PgCluster, dbname: str, env: dict[str, str]) -> None:
    fill_small(pg, dbname, "prod")
    _ssm_layout(pg, dbname)
    code, err = backup_with_database_dropped_mid_dump(pg, dbname, env, lambda: bool(_open_uploads()))
    assert code == 1, err
    assert "pg_dump failed" in err
    assert _objects() == [] and _open_uploads() == []


def test_wrong_password_from_ssm(pg: PgCluster, dbname: str, env: dict[str, str]) -> None:
    _ssm_layout(pg, dbname, password="Wrong-Horse-Battery")
    result = run_cli("backup", "app", "production", env=env)
    assert result.returncode == 1
    assert "password authentication failed" in result.stderr
    assert "Wrong-Horse-Battery" not in result.stderr + result.stdout
    assert _objects() == [] and _open_uploads() == []


def test_missing_ssm_parameter_is_bad_input(env: dict[str, str]) -> None:
    result = run_cli("backup", "app", "production", env=env)
    assert result.returncode == 2
    assert "SSM parameter /app/production/db/backup/" in result.stderr and "does not exist" in result.stderr
    assert _objects() == []


def test_missing_bucket_is_infrastructure(pg: PgCluster, dbname: str, env: dict[str, str]) -> None:
    _ssm_layout(pg, dbname)
    boto3.client("s3", region_name="us-east-1").delete_bucket(Bucket=BUCKET)
    result = run_cli("backup", "app", "production", env=env)
    assert result.returncode == 3, result.stderr
    assert f"bucket {BUCKET} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("status", env=env)
    assert result.returncode == 3, result.stderr


def test_legacy_s3_dump_restores_by_id(pg: PgCluster, dbname: str, env: dict[str, str]) -> None:
    fill_rich(pg, dbname)
    dump = subprocess.run(
        [str(pg.bindir / "pg_dump"), "-Fc", "-h", pg.host, "-p", str(pg.port), "-U", pg.user, dbname],
        env={**os.environ, "PGPASSWORD": pg.password}, capture_output=True, check=True, timeout=120,
    ).stdout
    boto3.client("s3", region_name="us-east-1").put_object(Bucket=BUCKET, Key="nightly/app/production/2022-02-02_02-02-02.dump", Body=dump)
    _ssm_layout(pg, dbname)
    listed = json.loads(run_cli("list", "app", "production", "--json", env=env).stdout)
    assert [(e["id"], e["status"]) for e in listed] == [("2022-02-02_02-02-02", "legacy")]
    result = run_cli("restore", "app", "--from", "production", "--to", "beta", "--backup", "2022-02-02_02-02-02", env=env)
    assert result.returncode == 0, result.stderr
    assert fingerprint(pg, f"{dbname}__beta") == fingerprint(pg, dbname)
    assert restore_leftovers(pg) == set()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_dump_aborts_the_upload_and_exits_130(pg: PgCluster, dbname: str, env: dict[str, str],
                                                         signum: signal.Signals) -> None:
    # GitHub cancels a job with SIGINT, then SIGTERM; ECS stops a task with SIGTERM.
    fill_small(pg, dbname, "prod")
    _ssm_layout(pg, dbname)
    with table_locked(pg, dbname, "marker"):
        code, err = run_until(["backup", "app", "production"], env,
                              lambda: lock_waiters(pg, dbname) > 0 and bool(_open_uploads()),
                              "pg_dump to block with the upload open", lambda proc: proc.send_signal(signum))
    assert code == 130, err
    assert err.strip().splitlines()[-1] == f"error: cancelled by {signum.name}"
    assert _objects() == [] and _open_uploads() == []
    wait_for(lambda: _sessions(pg, dbname) == 0, "pg_dump's session to end")


def test_signal_while_fetching_the_dump_leaves_the_target(pg: PgCluster, dbname: str, env: dict[str, str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # The signal lands inside a boto3 request, which once turned it into a retried HTTP error and lost it.
    fill_small(pg, dbname, "prod")
    _ssm_layout(pg, dbname)
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    beta = f"{dbname}__beta"
    before = fingerprint(pg, beta)
    fetching, release = threading.Event(), threading.Event()
    original = S3Response._key_response_get
    gets: list[str] = []

    def stalled_get(self: S3Response, query: dict[str, Any], key_name: str) -> Any:
        if key_name.endswith(".dump"):
            gets.append(key_name)
            # The first GET reads the archive's header (checked before anything is touched); the
            # second streams the dump into the fresh database.
            if len(gets) == 2 and not fetching.is_set():
                fetching.set()
                release.wait(timeout=60)
        return original(self, query, key_name)

    monkeypatch.setattr(S3Response, "_key_response_get", stalled_get)
    try:
        code, err = run_until(["restore", "app", "--from", "production", "--to", "beta"],
                              {**env, "DB_BACKUP_RESTORE_MODE": "stream"},
                              lambda: fetching.is_set() and bool(restore_leftovers(pg)),
                              "the restore to fetch the dump into a fresh database", lambda proc: proc.send_signal(signal.SIGTERM))
    finally:
        release.set()
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "error: cancelled by SIGTERM"
    assert fingerprint(pg, beta) == before
    assert restore_leftovers(pg) == set()


def _sessions(pg: PgCluster, dbname: str) -> int:
    with pg.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                           (dbname,)).fetchone()
    return int(row[0]) if row else 0


def test_restore_into_a_url_honours_its_query_port_host_and_password(pg: PgCluster, dbname: str, env: dict[str, str]) -> None:
    # libpq reads ?port=, ?host= (a socket directory too), ?user= and ?password=; db-backup once
    # dropped them and restored into localhost:5432, a server the user never named.
    fill_small(pg, dbname, "prod")
    _ssm_layout(pg, dbname)
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    over_tcp, over_socket = f"{dbname}__tcp", f"{dbname}__socket"
    with pg.connect() as conn:
        row = conn.execute("SHOW unix_socket_directories").fetchone()
    assert row is not None
    socket_dir = str(row[0]).split(",")[0].strip()
    urls = {
        over_tcp: f"postgresql://{pg.user}@{pg.host}/{over_tcp}?port={pg.port}&password={pg.password}",
        over_socket: f"postgresql:///{over_socket}?host={socket_dir}&port={pg.port}&user={pg.user}",  # trust on the socket
    }
    clean_env = {**env, "PGHOST": "", "PGPORT": "", "PGPASSWORD": ""}
    for name, url in urls.items():
        result = run_cli("restore", "app", "--from", "production", "--to-url", url, env=clean_env)
        assert result.returncode == 0, result.stderr
        assert pg.password not in result.stdout + result.stderr
        assert fingerprint(pg, name) == fingerprint(pg, dbname)
    assert restore_leftovers(pg) == set()


def test_restore_into_a_url_with_a_parameter_it_cannot_pass_on_is_refused(pg: PgCluster, dbname: str, env: dict[str, str]) -> None:
    fill_small(pg, dbname, "prod")
    _ssm_layout(pg, dbname)
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    databases = pg.databases()
    url = f"postgresql://{pg.user}:{pg.password}@{pg.host}:{pg.port}/{dbname}__copy?sslrootcert=/etc/ca.pem"
    result = run_cli("restore", "app", "--from", "production", "--to-url", url, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --to-url parameter sslrootcert is not passed on by db-backup; "
        "remove it from the URL and export PGSSLROOTCERT=<its value> instead"
    ]
    assert pg.databases() == databases


# --- S3 unreachable: exit 3, one line naming the object, nothing half-written ---------------------


def _s3_calls_to_a_closed_port(monkeypatch: pytest.MonkeyPatch, operation: str, when: Callable[[str], bool]) -> list[str]:
    """Fault injection: the S3 requests `operation` whose URL satisfies `when` go to a port nothing listens on.

    Every other request reaches the moto server as usual. Clients get one attempt per request, so
    the refused connection surfaces at once rather than after botocore's retries.
    """
    closed = free_port()
    redirected: list[str] = []
    real_client = boto3.session.Session.client

    def redirect(request: AWSPreparedRequest, **_: Any) -> None:
        if when(request.url):
            redirected.append(request.url)
            request.url = urlunsplit(urlsplit(request.url)._replace(netloc=f"127.0.0.1:{closed}"))

    def client(self: boto3.session.Session, service: str, *args: Any, **kwargs: Any) -> Any:
        if service == "s3":
            kwargs["config"] = (kwargs.get("config") or Config()).merge(Config(retries={"max_attempts": 1}))
        made = real_client(self, service, *args, **kwargs)
        if service == "s3":
            made.meta.events.register(f"before-send.s3.{operation}", redirect)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client)
    return redirected


def test_s3_unreachable_for_a_part_mid_backup_exits_3_and_aborts_the_upload(
    pg: PgCluster, dbname: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    with pg.connect(dbname) as conn:  # about 30 MB: parts fail while pg_dump is still writing
        conn.execute("CREATE TABLE bulk AS SELECT g, md5(g::text) || md5((g * 7)::text) AS h FROM generate_series(1, 400000) g")
    _ssm_layout(pg, dbname)
    _targets(Path(env["DB_BACKUP_TARGETS"]), pg, dbname, f"{dbname}__beta", compression="none")
    for name, value in {**env, "DB_BACKUP_PART_SIZE_MB": "5"}.items():
        monkeypatch.setenv(name, value)
    redirected = _s3_calls_to_a_closed_port(monkeypatch, "UploadPart", lambda url: "partNumber=1&" not in url + "&")
    run = run_main(["backup", "app", "production"], capsys)
    code, err = run.code, run.err_lines
    assert redirected
    assert code == 3, err
    assert err[-1].startswith(f"error: uploading s3://{BUCKET}/nightly/app/production/")
    assert "failed: Could not connect to the endpoint URL" in err[-1]
    assert "check the network path to S3" in err[-1]
    assert "uploadId" not in err[-1] and "could not be aborted" not in err[-1]
    assert not any("unexpected" in line or "Traceback" in line for line in err)
    assert _objects() == [] and _open_uploads() == []


def test_s3_down_during_backup_exits_3_and_names_the_upload_it_could_not_abort(
    pg: PgCluster, dbname: str, env: dict[str, str],
) -> None:
    # A real outage: the CLI talks to its own moto server, which is stopped while pg_dump waits on a
    # lock with the multipart upload already started. moto's state lives in this process, so the
    # session's server still shows what was left behind.
    fill_small(pg, dbname, "prod")
    _ssm_layout(pg, dbname)
    server, port = start_moto()
    locker = pg.connect(dbname, autocommit=False)
    try:
        locker.execute("LOCK TABLE marker IN ACCESS EXCLUSIVE MODE")

        def outage(_proc: subprocess.Popen[str]) -> None:
            server.stop()
            locker.close()  # pg_dump goes on, and its data has nowhere to go

        code, err = run_until(["backup", "app", "production"], {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"},
                              lambda: lock_waiters(pg, dbname) > 0 and bool(_open_uploads()),
                              "pg_dump to block on its lock with the upload started", outage)
    finally:
        locker.close()
        server.stop()
    last = err.strip().splitlines()[-1]
    assert code == 3, err
    assert last.startswith(f"error: uploading s3://{BUCKET}/nightly/app/production/") and "check the network path to S3" in last
    assert "its multipart upload could not be aborted either" in last and "AbortIncompleteMultipartUpload" in last
    assert "Traceback" not in err and "unexpected" not in err
    assert _objects() == []  # no dump, no manifest: the open upload is the one thing left, and it is named


def test_s3_unreachable_while_fetching_the_dump_exits_3_and_leaves_the_target(
    pg: PgCluster, dbname: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    fill_small(pg, dbname, "prod")
    _ssm_layout(pg, dbname)
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    beta = f"{dbname}__beta"
    before = fingerprint(pg, beta)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    redirected = _s3_calls_to_a_closed_port(monkeypatch, "GetObject", lambda url: urlsplit(url).path.endswith(".dump"))
    for mode in ("stream", "parallel"):
        monkeypatch.setenv("DB_BACKUP_RESTORE_MODE", mode)
        run = run_main(["restore", "app", "--from", "production", "--to", "beta"], capsys)
        code, err = run.code, run.err_lines
        assert code == 3, err
        assert err[-1].startswith(f"error: reading s3://{BUCKET}/nightly/app/production/") and ".dump failed: Could not connect" in err[-1]
        assert "check the network path to S3" in err[-1]
        assert fingerprint(pg, beta) == before
        assert restore_leftovers(pg) == set()
        assert redirected
        redirected.clear()


# --- uploads left open by backups that died: the next backup aborts them, never a live one's -------


def test_a_backup_aborts_uploads_whose_backup_no_longer_runs_and_keeps_the_rest(
    pg: PgCluster, dbname: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backup start aborts its target's open uploads that no running backup holds; a live run's and another target's stay."""
    real_upload_times(monkeypatch)
    fill_small(pg, dbname, "prod")
    _ssm_layout(pg, dbname)
    s3 = boto3.client("s3", region_name="us-east-1")

    def opened(key: str, parts: int = 0) -> str:
        upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=f"nightly/app/{key}")["UploadId"]
        for number in range(1, parts + 1):
            s3.upload_part(Bucket=BUCKET, Key=f"nightly/app/{key}", UploadId=upload_id, PartNumber=number, Body=b"x" * 1024)
        return upload_id

    dead = opened("production/2020-01-01_00-00-00.dump")
    dead_with_parts = opened("production/2020-01-02_00-00-00.dump", parts=2)
    live = opened("production/2020-01-03_00-00-00.dump", parts=1)
    other_target = opened("beta/2020-01-01_00-00-00.dump")
    # A running backup holds its upload's lock in the backed-up database for as long as its session lives.
    with pg.connect(dbname) as running:
        assert session.UploadLocks(running).claim(f"s3://{BUCKET}/nightly/app/production/2020-01-03_00-00-00.dump")
        result = run_cli("backup", "app", "production", env=env)
    assert result.returncode == 0, result.stderr
    for key in ("2020-01-01_00-00-00", "2020-01-02_00-00-00"):
        assert f"aborted the multipart upload of s3://{BUCKET}/nightly/app/production/{key}.dump" in result.stderr
    assert "2020-01-03" not in result.stderr
    left = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert sorted(u["UploadId"] for u in left) == sorted([live, other_target])
    assert dead not in {u["UploadId"] for u in left} and dead_with_parts not in {u["UploadId"] for u in left}
    listed = json.loads(run_cli("list", "app", "production", "--json", env=env).stdout)
    assert [e["status"] for e in listed] == ["complete"]


class _RetriedAfterLostAnswer:
    """An S3 client whose completing writes land, lose their answer, and are sent again, as botocore's retry does.

    moto accepts a second CompleteMultipartUpload; S3 with If-None-Match answers the retry with
    412, so that answer is stubbed here. The manifest's retry meets moto's own 412.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def complete_multipart_upload(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError

        self._client.complete_multipart_upload(**kwargs)
        raise ClientError({"Error": {"Code": "PreconditionFailed", "Message": "At least one of the pre-conditions you "
                                     "specified did not hold"}}, "CompleteMultipartUpload")

    def put_object(self, **kwargs: Any) -> Any:
        self._client.put_object(**kwargs)
        return self._client.put_object(**kwargs)


def test_a_retried_write_that_already_landed_is_a_success(pg: PgCluster, dbname: str, env: dict[str, str],
                                                           monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The retry of a completed upload or manifest meets its own object: the backup succeeds, complete, not 'id taken'."""
    from runner.aws import AwsClients
    from runner.backup import run_backup
    from runner.clock import SystemClock
    from runner.services import Services
    from runner.settings import Settings
    from runner.targets import load_registry

    fill_small(pg, dbname, "prod")
    _ssm_layout(pg, dbname)
    target = load_registry(Path(env["DB_BACKUP_TARGETS"])).get("app", "production")
    aws = AwsClients()
    real_s3 = aws.s3
    monkeypatch.setattr(aws, "s3", lambda region: _RetriedAfterLostAnswer(real_s3(region)))
    with caplog.at_level(logging.INFO, logger="runner.stores.s3"):
        result = run_backup(target, Services(settings=Settings(), clock=SystemClock(), aws=aws))
    assert "was completed by an earlier attempt of the same request" in caplog.text
    listed = json.loads(run_cli("list", "app", "production", "--json", env=env).stdout)
    assert [(e["id"], e["status"]) for e in listed] == [(result.manifest.id, "complete")]
    assert boto3.client("s3", region_name="us-east-1").list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
