"""Storage that stops answering: a cancel is obeyed within 15 s whatever S3 is doing, a dead endpoint fails in bounded time."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from tests.conftest import (
    DB_BACKUP,
    MotoServer,
    PgCluster,
    fill_small,
    fingerprint,
    free_port,
    restore_leftovers,
    run_cli,
    wait_for,
    write_targets,
)

BUCKET = "stalled-backups"
CANCEL_LIMIT_S = 15.0
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}
PART_REQUEST = re.compile(rb"PUT /[^ ]*partNumber=")
DUMP_REQUEST = re.compile(rb"GET /[^ ]*\.dump(?:\?[^ ]*)? HTTP/1\.1")


class StallingProxy:
    """A TCP endpoint on 127.0.0.1 that accepts connections and never answers.

    With an upstream, it relays to it until a request matches `stall` (and `when()` holds), then
    swallows everything on that connection: the request is sent, and no answer ever comes.
    """

    def __init__(self, upstream: tuple[str, int] | None = None, stall: re.Pattern[bytes] | None = None,
                 when: Callable[[], bool] = lambda: True) -> None:
        self._upstream = upstream
        self._stall = stall
        self._when = when
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.connected = threading.Event()  # a client sent its first bytes
        self.stalled = threading.Event()  # a request is being held
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _recv(self, sock: socket.socket) -> bytes | None:
        """The next bytes, b"" at EOF, None once the proxy closes."""
        while not self._closing.is_set():
            try:
                return sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return b""
        return None

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(0.2)
            self._sockets.append(client)
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        upstream = None
        if self._upstream is not None:
            upstream = socket.create_connection(self._upstream, timeout=5)
            upstream.settimeout(0.2)
            self._sockets.append(upstream)
        held = threading.Event()
        if upstream is not None:
            self._spawn(self._answers, upstream, client, held)
        tail = b""
        while data := self._recv(client):
            self.connected.set()
            if upstream is None or held.is_set():
                self.stalled.set()
                continue  # read and dropped: the client waits for an answer that never comes
            window = tail + data
            if self._stall is not None and any(m.end() > len(tail) for m in self._stall.finditer(window)) and self._when():
                held.set()
                self.stalled.set()
                continue
            upstream.sendall(data)
            tail = window[-1024:]

    def _answers(self, upstream: socket.socket, client: socket.socket, held: threading.Event) -> None:
        while data := self._recv(upstream):
            if not held.is_set():
                with contextlib.suppress(OSError):
                    client.sendall(data)

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@contextlib.contextmanager
def stalling_proxy(upstream: str | None = None, stall: re.Pattern[bytes] | None = None,
                   when: Callable[[], bool] = lambda: True) -> Iterator[StallingProxy]:
    address = None
    if upstream is not None:
        host, port = upstream.removeprefix("http://").split(":")
        address = (host, int(port))
    proxy = StallingProxy(address, stall, when)
    try:
        yield proxy
    finally:
        proxy.close()


def cancel_when(argv: list[str], env: dict[str, str], ready: Callable[[], bool], what: str,
                signum: signal.Signals = signal.SIGTERM) -> tuple[int, str, float]:
    """Run the CLI, wait (bounded) until `ready`, send `signum`: its exit code, stderr, and seconds to exit."""
    proc = subprocess.Popen([DB_BACKUP, *argv], env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: ready() or proc.poll() is not None, what, timeout=60)
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1]}"
        proc.send_signal(signum)
        sent = time.monotonic()
        try:
            _, err = proc.communicate(timeout=CANCEL_LIMIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"db-backup {argv[0]} did not exit within {CANCEL_LIMIT_S:.0f} s of {signum.name}")
        return proc.returncode, err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)


def _open_uploads() -> list[str]:
    s3 = boto3.client("s3", region_name="us-east-1")
    return [u["Key"] for u in s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def _objects() -> list[str]:
    s3 = boto3.client("s3", region_name="us-east-1")
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def _fill_bulk(pg: PgCluster, dbname: str) -> None:
    """About 25 MB of dump: several 5 MB parts while pg_dump still writes."""
    with pg.connect(dbname) as conn:
        conn.execute("CREATE TABLE bulk AS SELECT g, md5(g::text) || md5((g * 7)::text) AS h FROM generate_series(1, 350000) g")


def test_backup_cancelled_while_s3_never_answers_exits_130_within_15_s(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str],
) -> None:
    """SIGTERM while S3 accepts the connection but never answers: exit 130 within 15 s."""
    fill_small(pg, dbname, "prod")
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, f"s3://{BUCKET}")
    with stalling_proxy() as proxy:
        env = {**pg_env, **AWS, "DB_BACKUP_TARGETS": str(targets), "AWS_ENDPOINT_URL": proxy.url}
        code, err, took = cancel_when(["backup", "app", "production"], env, proxy.connected.is_set,
                                      "the backup to send its first request to S3")
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "error: cancelled by SIGTERM"
    assert took < CANCEL_LIMIT_S


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda signum: signum.name)
def test_backup_cancelled_while_part_uploads_hang_exits_130_and_aborts_the_upload(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], aws: MotoServer, signum: signal.Signals,
) -> None:
    """Cancel while every part upload hangs: exit 130 within 15 s, no object stored, the multipart upload aborted."""
    _fill_bulk(pg, dbname)
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, f"s3://{BUCKET}", extra="compression: none")
    with stalling_proxy(aws.endpoint, PART_REQUEST) as proxy:
        env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "AWS_ENDPOINT_URL": proxy.url, "DB_BACKUP_PART_SIZE_MB": "5"}
        code, err, took = cancel_when(["backup", "app", "production"], env, lambda: proxy.stalled.is_set() and bool(_open_uploads()),
                                      "a part upload to hang", signum)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == f"error: cancelled by {signum.name}"
    assert took < CANCEL_LIMIT_S
    assert _objects() == [] and _open_uploads() == []


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_restore_cancelled_while_the_download_hangs_exits_130_and_leaves_the_target(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], aws: MotoServer, mode: str,
) -> None:
    """SIGTERM while the dump's download hangs: exit 130 within 15 s, the target unchanged, no __restore_ database left."""
    fill_small(pg, dbname, "prod")
    beta = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(f'CREATE DATABASE "{beta}"')
    fill_small(pg, beta, "beta")
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta}, f"s3://{BUCKET}")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "DB_BACKUP_RESTORE_MODE": mode, "TMPDIR": str(tmp),
           "DB_BACKUP_PARALLEL_THRESHOLD_MB": "0"}
    stored = run_cli("backup", "app", "production", env=env)
    assert stored.returncode == 0, stored.stderr
    before = fingerprint(pg, beta)

    def work_folders() -> list[str]:
        return [p.name for p in tmp.iterdir() if p.name.startswith("db-backup-restore-")]

    # Not the first read of the dump (its header, checked before anything is touched): streaming
    # hangs the fetch made once the fresh database exists, parallel the copy into its work folder.
    when = (lambda: bool(restore_leftovers(pg))) if mode == "stream" else (lambda: bool(work_folders()))
    with stalling_proxy(aws.endpoint, DUMP_REQUEST, when) as proxy:
        code, err, took = cancel_when(["restore", "app", "--from", "production", "--to", "beta"],
                                      {**env, "AWS_ENDPOINT_URL": proxy.url}, proxy.stalled.is_set, "the dump's download to hang")
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "error: cancelled by SIGTERM"
    assert took < CANCEL_LIMIT_S
    assert fingerprint(pg, beta) == before
    assert not any(name.startswith(f"{beta}__restore_") for name in pg.databases())
    assert work_folders() == []


def test_list_against_a_dead_endpoint_exits_3_within_a_minute(tmp_path: Path, pg: PgCluster) -> None:
    """Nothing listens where S3 should be: `list` fails with exit 3 naming the network path, within a minute."""
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": "app"}, f"s3://{BUCKET}")
    began = time.monotonic()
    result = run_cli("list", "app", "production", env={**AWS, "DB_BACKUP_TARGETS": str(targets),
                                                      "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, timeout=120)
    took = time.monotonic() - began
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: listing s3://{BUCKET}/app/production/ failed: Could not connect to the endpoint URL")
    assert "check the network path to S3" in last
    assert took < 60
