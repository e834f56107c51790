"""The progress line's words, its displays (log lines, a live terminal line), and pg_restore's verbose lines."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from runner.backup import SIZE_QUERY_WAIT_S, _expected_size
from runner.compression import parse_compression
from runner.credentials import Connection
from runner.errors import BadInput
from runner.pg.dump import plan_dump
from runner.pg.pipeline import Tail
from runner.pg.restore_proc import TableWatch
from runner.progress import Progress, Stage
from runner.settings import Settings, load_settings
from runner.stores.local import LocalStore
from tests.helpers.clock import FakeClock
from tests.helpers.targets import folder_registry

MIB = 2**20


def test_the_line_shows_bytes_rate_elapsed_and_time_left() -> None:
    clock = FakeClock()
    stage = Stage("backup of app/production", clock)
    read = stage.meter("read", 400 * MIB, estimate=True)
    stored = stage.meter("stored")
    read.add(100 * MIB)
    stored.add(25 * MIB)
    clock.sleep(10)
    assert stage.line() == (
        "backup of app/production: read 100.0 MiB of ~400.0 MiB (25%), stored 25.0 MiB, 10.0 MiB/s, 10.0s elapsed, about 30.0s left"
    )


def test_past_its_estimate_the_line_gives_no_time_left() -> None:
    clock = FakeClock()
    stage = Stage("backup of app/production", clock)
    stage.meter("read", 10 * MIB, estimate=True).add(20 * MIB)
    clock.sleep(4)
    line = stage.line()
    assert "read 20.0 MiB of ~10.0 MiB (100%)" in line and "left" not in line


def test_the_closing_line_gives_totals_not_a_share_of_the_estimate_or_time_left() -> None:
    clock = FakeClock()
    stage = Stage("backup of app/production", clock)
    read = stage.meter("read", 400 * MIB, estimate=True)
    stored = stage.meter("stored")
    read.add(100 * MIB)
    stored.add(25 * MIB)
    stage.doing("dumping public.orders")
    clock.sleep(10)
    assert "about 30.0s left" in stage.line(drain=False)  # mid-way, the same counts give a share and an ETA
    assert stage.totals() == "backup of app/production finished: read 100.0 MiB, stored 25.0 MiB, 10.0 MiB/s, 10.0s in all"


def test_the_closing_line_counts_items_and_names_the_last_ones_done() -> None:
    clock = FakeClock()
    stage = Stage("restore into app", clock)
    stage.meter("read", 8 * MIB).add(8 * MIB)
    tables = stage.meter("tables loaded", unit="items", one="table loaded")
    tables.add(1)
    stage.finished("public.a")
    clock.sleep(2)
    assert stage.line(drain=False) == "restore into app: read 8.0 MiB of 8.0 MiB (100%), 1 table loaded, 4.0 MiB/s, 2.0s elapsed, done: public.a"
    assert stage.totals() == "restore into app finished: read 8.0 MiB, 1 table loaded, 4.0 MiB/s, 2.0s in all, done: public.a"
    # A known total that was not reached stays in the closing line: it is a fact, not a guess.
    short = Stage("restore into app", clock)
    short.meter("tables loaded", 4, unit="items").add(3)
    assert short.totals() == "restore into app finished: 3 of 4 tables loaded, 0.0s in all"


def test_finished_items_are_named_once_then_the_line_moves_on() -> None:
    clock = FakeClock()
    stage = Stage("restore into app", clock)
    tables = stage.meter("tables loaded", unit="items")
    for name in ("public.a", "public.b", "public.c", "public.d", "public.e"):
        tables.add(1)
        stage.finished(name)
    stage.doing("loading public.f")
    clock.sleep(1)
    assert stage.line() == "restore into app: 5 tables loaded, 1.0s elapsed, done: public.c, public.d, public.e and 2 more, loading public.f"
    assert stage.line() == "restore into app: 5 tables loaded, 1.0s elapsed, loading public.f"


def _wait_for(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "waited in vain"
        time.sleep(0.01)


def _progress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "progress"]


@pytest.fixture
def shown(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The progress lines logged so far."""
    caplog.set_level(logging.INFO, logger="runner.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "runner.progress" and r.levelno == logging.INFO]


def test_plain_lines_come_every_interval_then_the_totals(shown: Callable[[], list[str]]) -> None:
    interval = 0.05
    progress = Progress(FakeClock(), interval, "lines")
    began = time.monotonic()
    with progress.stage("download of X") as stage:
        meter = stage.meter("downloaded", 10)
        for _ in range(5):
            meter.add(1)  # counting shows nothing: only the interval does
        _wait_for(lambda: len(shown()) >= 3)
    took = time.monotonic() - began
    *lines, last = shown()
    assert len(lines) <= took / interval + 1, lines  # lines come at the interval, not as fast as they can
    assert all(line.startswith("download of X: downloaded 5 B of 10 B (50%)") for line in lines), lines
    assert last == "download of X finished: downloaded 5 B, 0.0s in all"
    assert not _progress_threads()
    time.sleep(3 * interval)  # the thread is gone: nothing more comes
    assert shown()[-1] == last and len(shown()) == len(lines) + 1


def test_a_failed_stage_stops_its_thread_without_a_closing_line(shown: Callable[[], list[str]]) -> None:
    with pytest.raises(RuntimeError), Progress(FakeClock(), 0.02, "lines").stage("backup of X") as stage:
        stage.meter("read").add(1)
        _wait_for(lambda: len(shown()) >= 1)  # lines were shown: a success would end with its totals
        raise RuntimeError("pg_dump failed")
    assert shown() and all(line.startswith("backup of X: read 1 B") for line in shown()), shown()
    assert not _progress_threads()


def test_a_stage_shorter_than_the_interval_shows_nothing(shown: Callable[[], list[str]]) -> None:
    with Progress(FakeClock(), 60, "lines").stage("download of X") as stage:
        stage.meter("downloaded").add(1)
    assert shown() == [] and not _progress_threads()  # not even totals: nothing was shown to close


def test_a_line_that_fails_never_ends_the_job(caplog: pytest.LogCaptureFixture, shown: Callable[[], list[str]]) -> None:
    caplog.set_level(logging.DEBUG, logger="runner.progress")

    def broken() -> int:
        raise ValueError("no size yet")

    with Progress(FakeClock(), 0.02, "lines").stage("download of X") as stage:
        stage.meter("decompressed", probe=broken)
        _wait_for(lambda: caplog.text.count("progress line failed: no size yet") >= 2)  # the thread goes on after a failure
    assert shown() == [] and not _progress_threads()


def test_on_a_terminal_the_line_is_live() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with Progress(FakeClock(), 15.0, "live", console=console).stage("backup of app/production") as stage:
        stage.meter("read").add(3 * MIB)
    assert "backup of app/production: read 3.0 MiB" in out.getvalue()


def test_a_live_line_that_fails_shows_its_title_and_the_job_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="runner.progress")

    def broken() -> int:
        raise ValueError("no size yet")

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with Progress(FakeClock(), 15.0, "live", console=console).stage("download of X") as stage:
        stage.meter("decompressed", probe=broken)
        console.print("the job goes on")
    assert "the job goes on" in out.getvalue()
    assert "download of X: working (no progress figures)" in out.getvalue()
    assert "progress line failed: ValueError: no size yet" in caplog.text


def test_plain_lines_unless_stderr_is_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    settings = Settings(progress_interval=60)
    lines = Progress.of(settings, FakeClock(), io.StringIO())
    assert (lines._mode, lines._interval) == ("lines", 60)
    assert Progress.of(settings, FakeClock(), Terminal())._mode == "live"


@pytest.mark.parametrize("value", ["0", "-5", "0.5", "1e-6", "3601", "1e300"])
def test_an_interval_outside_1_to_3600_seconds_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DB_BACKUP_PROGRESS_INTERVAL", value)
    with pytest.raises(BadInput) as refused:
        load_settings()
    assert str(refused.value) == (
        f"DB_BACKUP_PROGRESS_INTERVAL='{value}' is not valid: it must be a number of seconds from 1 to 3600; fix or unset it"
    )


@pytest.mark.parametrize(("value", "rule"), [("soon", "a number"), ("inf", "a finite number"), ("nan", "a finite number")])
def test_an_interval_that_is_no_number_is_refused(monkeypatch: pytest.MonkeyPatch, value: str, rule: str) -> None:
    monkeypatch.setenv("DB_BACKUP_PROGRESS_INTERVAL", value)
    with pytest.raises(BadInput, match=f"DB_BACKUP_PROGRESS_INTERVAL='{value}' is not valid: it must be {rule}; "):
        load_settings()


@pytest.mark.parametrize(("value", "seconds"), [("1", 1.0), ("2.5", 2.5), ("3600", 3600.0)])
def test_an_interval_within_the_range_is_read(monkeypatch: pytest.MonkeyPatch, value: str, seconds: float) -> None:
    monkeypatch.setenv("DB_BACKUP_PROGRESS_INTERVAL", value)
    assert load_settings().progress_interval == seconds


def test_the_interval_defaults_to_15_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DB_BACKUP_PROGRESS_INTERVAL", raising=False)
    assert load_settings().progress_interval == 15.0


def test_a_server_that_does_not_answer_delays_a_first_backup_by_seconds_only(tmp_path: Path) -> None:
    # A listening socket that never answers: the connection's start-up waits for a reply that never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        conn = Connection(host="127.0.0.1", port=silent.getsockname()[1], dbname="app", user="app")
        target = folder_registry(tmp_path / "backups").get("app", "production")
        plan = plan_dump("pg_dump", parse_compression("none"))  # the stored stream is pg_dump's own: its size is estimated
        began = time.monotonic()
        assert _expected_size(LocalStore(tmp_path / "backups"), target, conn, plan) is None
        took = time.monotonic() - began
    assert took < 2 * SIZE_QUERY_WAIT_S + 1, f"the size estimate held the backup for {took:.1f}s"


VERBOSE_SERIAL = b"""pg_restore: connecting to database for restore
pg_restore: creating TABLE "public.error_log"
pg_restore: processing data for table "public.error_log"
pg_restore: processing data for table "public.orders"
pg_restore: executing SEQUENCE SET orders_id_seq
pg_restore: creating CONSTRAINT "public.orders orders_pkey"
pg_restore: while PROCESSING TOC:
pg_restore: from TOC entry 3 INDEX orders_id_idx
pg_restore: error: could not execute query: ERROR:  could not create unique index "orders_id_idx"
DETAIL:  Key (id)=(1) is duplicated.
Command was: CREATE UNIQUE INDEX orders_id_idx ON public.orders USING btree (id);
pg_restore: creating INDEX "public.another_error_idx"
"""


def _read(data: bytes, watch: TableWatch) -> Tail:
    tail = Tail(io.BytesIO(data), "pg_restore", info=watch)
    tail.join()
    return tail


def test_pg_restore_tables_are_counted_and_its_chatter_is_no_error() -> None:
    stage = Stage("restore into app", FakeClock())
    watch = TableWatch(stage)
    tail = _read(VERBOSE_SERIAL, watch)
    watch.close()
    # A table named error_log is no error: the first error is pg_restore's own, with its context.
    assert tail.last_error() == (
        'pg_restore: error: could not execute query: ERROR:  could not create unique index "orders_id_idx"; '
        "DETAIL:  Key (id)=(1) is duplicated.; Command was: CREATE UNIQUE INDEX orders_id_idx ON public.orders USING btree (id);"
    )
    assert not any("creating" in line for line in tail.lines)
    line = stage.line()
    assert "2 tables loaded" in line and "done: public.error_log, public.orders" in line


def test_pg_restore_jobs_count_the_tables_it_says_finished() -> None:
    stage = Stage("restore into app", FakeClock())
    watch = TableWatch(stage)
    _read(b"""pg_restore: entering main parallel loop
pg_restore: launching item 3401 TABLE DATA big
pg_restore: launching item 3402 TABLE DATA small
pg_restore: processing data for table "public.big"
pg_restore: processing data for table "shop.small"
pg_restore: finished item 3402 TABLE DATA small
pg_restore: launching item 3403 INDEX big_pkey
""", watch)
    assert "1 table loaded" in stage.line(drain=False) and "done: shop.small" in stage.line()
    _read(b"pg_restore: finished item 3401 TABLE DATA big\n", watch)
    watch.close()
    line = stage.line()
    assert "2 tables loaded" in line and "done: public.big" in line and "small" not in line
