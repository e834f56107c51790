"""The progress line's words, its displays (log lines, a live terminal line), and pg_restore's verbose lines."""

from __future__ import annotations

import io
import logging
import threading
import time

import pytest
from rich.console import Console

from runner.errors import BadInput
from runner.pg.pipeline import Tail
from runner.pg.restore_proc import TableWatch
from runner.progress import Progress, Stage
from runner.settings import Settings, load_settings
from tests.helpers.clock import FakeClock

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


def _wait_for(predicate: object, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.01)


def test_plain_lines_come_every_interval_and_stop_with_the_stage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runner.progress")
    progress = Progress(FakeClock(), 0.02, "lines")
    with progress.stage("download of X") as stage:
        stage.meter("downloaded", 10).add(5)
        _wait_for(lambda: len(caplog.records) >= 3)
    shown = len(caplog.records)
    assert shown >= 3 and all(r.getMessage().startswith("download of X: downloaded 5 B of 10 B (50%)") for r in caplog.records)
    time.sleep(0.1)  # the thread is gone: nothing more comes
    assert len(caplog.records) == shown
    assert not [t for t in threading.enumerate() if t.name == "progress"]


def test_a_failed_stage_stops_its_thread_without_a_closing_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runner.progress")
    with pytest.raises(RuntimeError), Progress(FakeClock(), 0.02, "lines").stage("backup of X") as stage:
        _wait_for(lambda: len(caplog.records) >= 1)
        stage.meter("read").add(1)
        raise RuntimeError("pg_dump failed")
    shown = len(caplog.records)
    time.sleep(0.1)
    assert len(caplog.records) == shown and not [t for t in threading.enumerate() if t.name == "progress"]


def test_on_a_terminal_the_line_is_live() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with Progress(FakeClock(), 15.0, "live", console=console).stage("backup of app/production") as stage:
        stage.meter("read").add(3 * MIB)
        console.file.flush()
        time.sleep(0.3)  # the live display redraws four times a second
    assert "backup of app/production: read 3.0 MiB" in out.getvalue()


def test_plain_lines_unless_stderr_is_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    settings = Settings(progress_interval=0.5)
    assert Progress.of(settings, FakeClock(), io.StringIO())._mode == "lines"
    assert Progress.of(settings, FakeClock(), Terminal())._mode == "live"


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_an_interval_that_is_not_a_positive_number_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DB_BACKUP_PROGRESS_INTERVAL", value)
    with pytest.raises(BadInput, match=f"DB_BACKUP_PROGRESS_INTERVAL='{value}' is not valid: it must be (more than 0|a number)"):
        load_settings()


def test_the_interval_defaults_to_15_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DB_BACKUP_PROGRESS_INTERVAL", raising=False)
    assert load_settings().progress_interval == 15.0


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
