"""Alerts of `db-backup report`: a webhook message (Slack or JSON) and the nightly heartbeat, through the real CLI
against a local HTTP server that records what it was sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runner import alerts
from runner.catalog import make_id
from runner.pg.cluster import free_port
from runner.records import DrillRecord, put_record
from runner.report import Failing, Outcome
from runner.settings import GithubEnv
from runner.stores.local import LocalStore
from runner.targets import AlertsConfig
from tests.helpers.backups import write_manifest
from tests.helpers.cli import CliRun, run_main
from tests.helpers.targets import write_targets_file

HOOK_TOKEN = "T0ALERTS/B0HOOK/xoxSecretHookToken4711"
PING_TOKEN = "ping-Secret-5b1e9c"
DB_PASSWORD = "db-Secret-Password-0815"
RUN_URL = "https://github.com/acme/db-backup/actions/runs/4242"
STALL_LIMIT_S = 5.0  # a stalled request is let go after this, whatever the client does


@dataclass
class Received:
    method: str
    path: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """Answers every request with `status` (after `stall`, when set) and records it."""

    port: int
    status: int = 200
    stall: bool = False
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def hook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/{HOOK_TOKEN}"

    @property
    def ping_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{PING_TOKEN}"

    def to(self, path_part: str) -> list[Received]:
        return [r for r in self.received if path_part in r.path]


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(port=0)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            state.received.append(Received(self.command, self.path, self.rfile.read(length)))
            if state.stall:
                state.release.wait(STALL_LIMIT_S)
                return
            self.send_response(state.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A GitHub Actions step as the report job sees it, no proxy in the way, short retries."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "DB_BACKUP_TARGETS_JSON", "DB_BACKUP_WEBHOOK_URL", "DB_BACKUP_HEARTBEAT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/db-backup")
    monkeypatch.setenv("GITHUB_RUN_ID", "4242")
    monkeypatch.setenv("GITHUB_RUN_ATTEMPT", "1")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    monkeypatch.setenv("APP_DB_PASSWORD", DB_PASSWORD)
    monkeypatch.setattr(alerts, "RETRY_PAUSE_S", 0.0)


@dataclass
class Setup:
    tmp: Path
    store: LocalStore
    results: Path

    def targets(self, alerts_yaml: str | None) -> Path:
        path = write_targets_file(self.tmp / "targets.yaml", [f'storage: "file://{self.store.root}"'], [
            "- identifier: app",
            "  env: production",
            "  schedule: nightly",
            '  database: {host: db.internal, name: app, user: app, password: "env:APP_DB_PASSWORD"}',
            "- {identifier: app, env: beta, schedule: nightly}",
            "- {identifier: crm, env: beta}",
        ])
        if alerts_yaml:
            path.write_text(path.read_text() + "alerts:\n" + "".join(f"  {line}\n" for line in alerts_yaml.splitlines()))
        return path

    def backed_up(self, env: str, *, result: str = "success", age: timedelta = timedelta(hours=1),
                  error: str | None = None) -> str:
        """A stored backup of app/ENV that old, and tonight's result file saying `result`."""
        when = datetime.now(UTC).replace(microsecond=0) - age
        write_manifest(self.store, "app", env, when, None)
        backup_id = make_id(when)
        data: dict[str, object] = {"identifier": "app", "env": env, "result": result, "duration_s": 12,
                                   "run_url": f"{RUN_URL}/job/1"}
        if result == "success":
            data.update(backup_id=backup_id, size_bytes=1234)
        if error:
            data["error"] = error
        path = self.results / f"db-backup-result-app--{env}" / f"app--{env}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        return backup_id


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path, LocalStore(tmp_path / "store"), tmp_path / "results")


SLACK = "webhook: env:DB_BACKUP_WEBHOOK_URL\nheartbeat_url: env:DB_BACKUP_HEARTBEAT_URL"
PG_DUMP_FAILED = "error: pg_dump: connection to server at db.internal failed: timeout expired"


def _report(capsys: pytest.CaptureFixture[str], targets: Path, results: Path, *more: str) -> CliRun:
    run = run_main(["--targets", str(targets), "report", str(results), *more], capsys)
    for secret in (HOOK_TOKEN, PING_TOKEN, DB_PASSWORD):
        assert secret not in run.output, run.output
    return run


def _urls(monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    monkeypatch.setenv("DB_BACKUP_WEBHOOK_URL", server.hook_url)
    monkeypatch.setenv("DB_BACKUP_HEARTBEAT_URL", server.ping_url)


def _one_failed_night(setup: Setup) -> None:
    setup.backed_up("production")
    setup.backed_up("beta", result="failure", age=timedelta(hours=20), error=PG_DUMP_FAILED)


def _no_secret_in(received: Received) -> None:
    body = received.body.decode()
    for secret in (HOOK_TOKEN, PING_TOKEN, DB_PASSWORD, "127.0.0.1"):
        assert secret not in body, body


# --- the message --------------------------------------------------------------------------------


def test_a_failed_target_is_posted_to_slack_with_its_reason_and_the_run_link(
    setup: Setup, server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _one_failed_night(setup)
    _urls(monkeypatch, server)
    run = _report(capsys, setup.targets(SLACK), setup.results)

    assert run.code == 1  # as without alerts: the report's verdict
    assert "Nightly backups: 1 of 2 succeeded" in run.out
    [posted] = server.to("/services/")
    assert posted.method == "POST"
    _no_secret_in(posted)
    message = posted.json()
    assert set(message) == {"text", "blocks"}
    assert "app/beta" in message["text"] and PG_DUMP_FAILED in message["text"]
    header, *sections = message["blocks"]
    assert header["type"] == "header" and header["text"]["text"] == "❌ Nightly backups: 1 of 2 targets failed"
    lines = [b["text"]["text"] for b in sections if b["type"] == "section"]
    assert lines == [f"*app/beta*: {PG_DUMP_FAILED}"]
    links = [e["text"] for b in sections if b["type"] == "context" for e in b["elements"]]
    assert links == [f"<{RUN_URL}|GitHub Actions run>"]
    assert not server.to(PING_TOKEN)  # never a heartbeat for a failing night
    assert "webhook message sent" in run.err


def test_json_format_carries_status_failing_targets_and_the_run(
    setup: Setup, server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup.backed_up("production")  # app/beta: no result file at all
    _urls(monkeypatch, server)
    run = _report(capsys, setup.targets("webhook: env:DB_BACKUP_WEBHOOK_URL\nwebhook_format: json"), setup.results)

    assert run.code == 1
    [posted] = server.to("/services/")
    _no_secret_in(posted)
    assert posted.json() == {
        "source": "db-backup", "report": "nightly", "status": "failure",
        "summary": "❌ Nightly backups: 1 of 2 targets failed", "targets": 2,
        "failing": [{"target": "app/beta", "result": "missing",
                     # and, as `status` says, it has no backup at all
                     "reason": "no result: the job did not report (cancelled, timed out or never started); "
                               "no good backup newer than 26h"}],
        "problems": [], "repository": "acme/db-backup", "run_url": RUN_URL,
    }


def test_a_successful_night_pings_the_heartbeat_and_posts_nothing(
    setup: Setup, server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup.backed_up("production")
    setup.backed_up("beta")
    _urls(monkeypatch, server)
    run = _report(capsys, setup.targets(SLACK), setup.results)

    assert run.code == 0, run.output
    assert not server.to("/services/")  # notify: failures
    [ping] = server.to(PING_TOKEN)
    assert ping.method == "GET"
    assert "heartbeat ping sent" in run.err


def test_notify_always_posts_a_success_and_the_command_line_wins_over_the_file(
    setup: Setup, server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup.backed_up("production")
    setup.backed_up("beta")
    _urls(monkeypatch, server)
    always = setup.targets("webhook: env:DB_BACKUP_WEBHOOK_URL\nwebhook_format: json\nnotify: always")

    assert _report(capsys, always, setup.results).code == 0
    [posted] = server.to("/services/")
    assert posted.json()["status"] == "success" and posted.json()["failing"] == []
    assert posted.json()["summary"] == "✅ Nightly backups: all 2 targets succeeded"

    assert _report(capsys, always, setup.results, "--notify", "failures").code == 0
    assert len(server.to("/services/")) == 1  # nothing new

    failures = setup.targets("webhook: env:DB_BACKUP_WEBHOOK_URL")
    assert _report(capsys, failures, setup.results).code == 0
    assert len(server.to("/services/")) == 1
    assert _report(capsys, failures, setup.results, "--notify", "always").code == 0
    assert len(server.to("/services/")) == 2
    assert server.to("/services/")[1].json()["blocks"][0]["text"]["text"] == "✅ Nightly backups: all 2 targets succeeded"


def test_a_stale_target_is_alerted_and_stops_the_heartbeat_while_the_table_is_unchanged(
    setup: Setup, server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """app/beta's result says success, but its newest good backup in the store is three days old."""
    setup.backed_up("production")
    setup.backed_up("beta", age=timedelta(days=3))
    _urls(monkeypatch, server)
    run = _report(capsys, setup.targets(SLACK.replace("\n", "\nwebhook_format: json\n")), setup.results)

    assert run.code == 0 and "Nightly backups: 2 of 2 succeeded" in run.out  # the report's own verdict
    [posted] = server.to("/services/")
    message = posted.json()
    assert message["status"] == "failure" and message["summary"] == "❌ Nightly backups: 1 stale"
    [stale] = message["failing"]
    assert stale["target"] == "app/beta" and stale["result"] == "stale"
    assert stale["reason"].startswith("no good backup newer than 26h (the newest is 3d")
    assert not server.to(PING_TOKEN)


def test_no_heartbeat_when_the_backup_ages_could_not_be_read(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every result succeeded, but the store did not answer `status`'s question: the missing ping is the alert."""
    _urls(monkeypatch, server)
    config = AlertsConfig(heartbeat_url="env:DB_BACKUP_HEARTBEAT_URL")
    alerts.deliver(Outcome("nightly", 2), config, GithubEnv(), stale=lambda: None)
    assert server.received == []
    alerts.deliver(Outcome("nightly", 2), config, GithubEnv(), stale=lambda: {})
    assert len(server.to(PING_TOKEN)) == 1


def test_without_alerts_nothing_is_sent(
    setup: Setup, server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _one_failed_night(setup)
    _urls(monkeypatch, server)
    run = _report(capsys, setup.targets(None), setup.results)
    assert run.code == 1
    assert server.received == []
    assert "alerts" not in run.err


def test_a_long_night_stays_within_slacks_limits() -> None:
    """Slack takes at most 50 blocks and a header of 150 characters: 20 targets are listed, the rest counted."""
    outcome = Outcome("nightly", 30, tuple(Failing(f"db{i}/production", "failure", "error: " + "x" * 2000) for i in range(25)))
    message = alerts.slack_message(outcome, RUN_URL)
    sections = [b for b in message["blocks"] if b["type"] == "section"]
    assert len(sections) == 20 and len(message["blocks"]) <= 50
    assert all(len(b["text"]["text"]) < 600 for b in sections)  # each reason cut short
    assert {"type": "mrkdwn", "text": "and 5 more: see the run"} in message["blocks"][-2]["elements"]
    assert "and 5 more" in message["text"]


# --- when sending fails -------------------------------------------------------------------------


def _baseline(setup: Setup, capsys: pytest.CaptureFixture[str]) -> int:
    return _report(capsys, setup.targets(None), setup.results).code


def _warned(run: CliRun, words: str) -> None:
    assert f"WARNING alerts: {words}" in run.err, run.err
    assert f"::warning title=db-backup alerts::{words}" in run.out, run.out


def test_a_webhook_answering_500_is_tried_twice_and_warns(
    setup: Setup, server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _one_failed_night(setup)
    _urls(monkeypatch, server)
    server.status = 500
    run = _report(capsys, setup.targets(SLACK), setup.results)
    assert run.code == _baseline(setup, capsys) == 1
    assert len(server.to("/services/")) == 2
    _warned(run, "webhook post failed: HTTP 500")


def test_a_failing_heartbeat_warns_and_the_run_stays_green(
    setup: Setup, server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup.backed_up("production")
    setup.backed_up("beta")
    _urls(monkeypatch, server)
    server.status = 503
    run = _report(capsys, setup.targets(SLACK), setup.results)
    assert run.code == 0
    assert len(server.to(PING_TOKEN)) == 2
    _warned(run, "heartbeat ping failed: HTTP 503")


def test_a_refused_connection_warns(
    setup: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _one_failed_night(setup)
    monkeypatch.setenv("DB_BACKUP_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/services/{HOOK_TOKEN}")
    run = _report(capsys, setup.targets(SLACK), setup.results)
    assert run.code == _baseline(setup, capsys) == 1
    _warned(run, "webhook post failed: connection refused")


def test_a_stalled_webhook_times_out_and_warns(
    setup: Setup, server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _one_failed_night(setup)
    _urls(monkeypatch, server)
    server.stall = True
    monkeypatch.setattr(alerts, "TIMEOUT_S", 0.3)
    started = datetime.now(UTC)
    run = _report(capsys, setup.targets(SLACK), setup.results)
    assert datetime.now(UTC) - started < timedelta(seconds=STALL_LIMIT_S)  # the client gave up, not the server
    assert run.code == _baseline(setup, capsys) == 1
    assert len(server.to("/services/")) == 2
    _warned(run, "webhook post failed: timed out")


def test_an_unset_variable_is_a_warning_naming_it(
    setup: Setup, server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _one_failed_night(setup)
    monkeypatch.setenv("DB_BACKUP_HEARTBEAT_URL", server.ping_url)  # the webhook's variable stays unset
    run = _report(capsys, setup.targets(SLACK), setup.results)
    assert run.code == 1
    _warned(run, "DB_BACKUP_WEBHOOK_URL is not set, so no webhook message was sent")
    assert server.received == []


def test_a_variable_that_is_not_a_url_is_a_warning_without_its_value(
    setup: Setup, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _one_failed_night(setup)
    monkeypatch.setenv("DB_BACKUP_WEBHOOK_URL", HOOK_TOKEN)
    run = _report(capsys, setup.targets(SLACK), setup.results)
    assert run.code == 1
    _warned(run, "DB_BACKUP_WEBHOOK_URL does not hold an http(s) URL, so no webhook message was sent")


# --- drills -------------------------------------------------------------------------------------


def _drill_result(setup: Setup, env: str, result: str, error: str | None = None) -> None:
    path = setup.results / f"db-backup-drill-app--{env}" / f"app--{env}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"identifier": "app", "env": env, "command": "drill", "result": result,
                                **({"error": error} if error else {})}))


def test_a_failed_drill_is_alerted_with_the_records_reason_and_never_pings_the_heartbeat(
    setup: Setup, server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    manifest = write_manifest(setup.store, "app", "beta", when, None)
    put_record(setup.store, manifest.key, DrillRecord(
        backup_id=manifest.id, checked_at=when + timedelta(hours=1), ok=False, problem="role app_reader does not exist",
        restore_duration_s=3.0, server="throwaway cluster (PostgreSQL 17.2)"))
    _drill_result(setup, "production", "success")
    _drill_result(setup, "beta", "failure", "error: drill of app/beta failed")
    _urls(monkeypatch, server)
    run = _report(capsys, setup.targets(SLACK), setup.results, "--drills")

    assert run.code == 1
    [posted] = server.to("/services/")
    _no_secret_in(posted)
    blocks = posted.json()["blocks"]
    assert blocks[0]["text"]["text"] == "❌ Restore drills: 1 of 2 targets failed"
    assert blocks[1]["text"]["text"] == "*app/beta*: role app_reader does not exist"
    assert not server.to(PING_TOKEN)


def test_passed_drills_post_only_with_notify_always_and_never_ping(
    setup: Setup, server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _drill_result(setup, "production", "success")
    _drill_result(setup, "beta", "success")
    _urls(monkeypatch, server)
    targets = setup.targets(SLACK.replace("\n", "\nwebhook_format: json\n"))
    assert _report(capsys, targets, setup.results, "--drills").code == 0
    assert server.received == []
    assert _report(capsys, targets, setup.results, "--drills", "--notify", "always").code == 0
    [posted] = server.received
    assert posted.json()["report"] == "drill" and posted.json()["status"] == "success"
    assert posted.json()["summary"] == "✅ Restore drills: all 2 targets passed"
