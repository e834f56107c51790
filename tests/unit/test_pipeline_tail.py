"""A child's stderr read through a pipe: spliced pg_restore -j lines, the first error, and the tables counted."""

from __future__ import annotations

import os
from collections.abc import Iterable

import pytest

from runner.pg.pipeline import InfoLines, Tail
from runner.pg.restore_proc import TableWatch
from runner.progress import Stage
from tests.helpers.clock import FakeClock

P = b"pg_restore:"  # PostgreSQL's tools write the prefix, the space, the level and the message as separate writes


def _tail(writes: Iterable[bytes], name: str = "pg_restore", info: InfoLines | None = None) -> Tail:
    read, write = os.pipe()
    with os.fdopen(read, "rb") as stream:
        tail = Tail(stream, name, info=info)
        with os.fdopen(write, "wb", buffering=0) as sink:
            for chunk in writes:
                sink.write(chunk)
        tail.join()
    return tail


def _message(text: str, level: str = "") -> list[bytes]:
    return [P, b" ", *([f"{level}: ".encode()] if level else []), f"{text}\n".encode()]


def _watch() -> tuple[Stage, TableWatch]:
    stage = Stage("restore into app", FakeClock())
    return stage, TableWatch(stage)


COPY_FAILED = 'COPY failed for table "bad_rows": ERROR:  boom at restore\nCONTEXT:  PL/pgSQL function public.ok_here(integer) line 2 at RAISE\nCOPY bad_rows, line 1: "1"'

# As pg_restore -j8 wrote them (seen on PostgreSQL 15): three processes' writes interleaved.
SPLICED = [
    *_message("entering main parallel loop"),
    *_message("launching item 3868 TABLE DATA error_4"),
    *_message("launching item 3869 TABLE DATA error_5"),
    P, b" ", P,  # worker A's prefix and space, then worker B's prefix...
    b'processing data for table "public.error_4"\n',  # ...A's message
    b" ", b'processing data for table "other.error_5"\n',  # B's space and message, on a line of their own
    P, P, b" ", b" ", b"finished item 3868 TABLE DATA error_4\n", P,
    b'creating CONSTRAINT "public.error_4 error_4_pkey"\n',
    b" ", b"finished item 3869 TABLE DATA error_5\n",
    *_message("launching item 3906 TABLE DATA bad_rows"),
    *_message('processing data for table "public.bad_rows"'),
    *_message("while PROCESSING TOC:"),
    *_message("from TOC entry 3906; 0 16950 TABLE DATA error_4 postgres"),
    *_message(COPY_FAILED, "error"),
    *_message("a worker process died unexpectedly", "error"),
]


def test_spliced_chatter_naming_error_tables_is_no_error() -> None:
    stage, watch = _watch()
    tail = _tail(SPLICED, info=watch)
    assert tail.last_error() == (
        'pg_restore: error: COPY failed for table "bad_rows": ERROR:  boom at restore; '
        "CONTEXT:  PL/pgSQL function public.ok_here(integer) line 2 at RAISE"
    )
    # The chatter is neither the message nor the lines kept for it.
    assert not any("processing" in line or "finished" in line or "creating" in line for line in tail.lines), tail.lines
    assert tail.lines[-1] == "pg_restore: error: a worker process died unexpectedly"
    watch.close(succeeded=False)
    line = stage.line()
    assert "2 tables loaded" in line and "done: public.error_4, other.error_5" in line, line


def test_an_error_whose_message_another_process_cut_off_is_put_back_together() -> None:
    tail = _tail([
        P, b" ", b"error: ",  # worker A's error...
        *_message('processing data for table "public.error_2"'),  # ...cut by worker B's chatter
        b"could not execute query: ERROR:  duplicate key value violates unique constraint\n",
        b"Command was: CREATE UNIQUE INDEX error_2_idx ON public.error_2 USING btree (id);\n",
    ], info=_watch()[1])
    assert tail.last_error() == (
        "pg_restore: error: could not execute query: ERROR:  duplicate key value violates unique constraint; "
        "Command was: CREATE UNIQUE INDEX error_2_idx ON public.error_2 USING btree (id);"
    )


def test_a_prefix_inside_a_line_starts_a_message_of_its_own() -> None:
    tail = _tail([b'pg_restore: processing data for table "public.error_7"pg_restore: error: could not read input file\n'],
                 info=_watch()[1])
    assert tail.last_error() == "pg_restore: error: could not read input file"


@pytest.mark.parametrize("said", [
    "from TOC entry 3906; 0 16950 TABLE DATA error_log postgres",
    "while PROCESSING TOC:",
    "warning: errors ignored on restore: 1",
    'processing data for table "public.fatal_errors"',
])
def test_what_only_mentions_an_error_is_none(said: str) -> None:
    tail = _tail([*_message(said), *_message("done, the last line")])
    assert not tail.first_error
    assert tail.last_error() == "pg_restore: done, the last line"


# What each tool of a pipeline writes when it fails (zstd -d, gzip -d and pg_dump run with bad input).
@pytest.mark.parametrize(("name", "stderr", "shown"), [
    ("zstd", b"zstd: /*stdin*\\: unsupported format \n", "zstd: /*stdin*\\: unsupported format"),
    ("zstd", b"/*stdin*\\ : Read error (39) : premature end \n", "/*stdin*\\ : Read error (39) : premature end"),
    ("zstd", b"zstd: error 70 : Write error : cannot write block : No space left on device \n",
     "zstd: error 70 : Write error : cannot write block : No space left on device"),
    ("gzip", b"\ngzip: stdin: unexpected end of file\n", "gzip: stdin: unexpected end of file"),
    ("pg_dump", b'pg_dump: error: connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
                b"\tIs the server running on that host and accepting TCP/IP connections?\n",
     'pg_dump: error: connection to server at "127.0.0.1", port 1 failed: Connection refused'),
    ("pg_dump", b"pg_dump: error: query failed: ERROR:  canceling statement due to lock timeout\n"
                b"pg_dump: detail: Query was: LOCK TABLE public.error_1 IN ACCESS SHARE MODE\n",
     "pg_dump: error: query failed: ERROR:  canceling statement due to lock timeout; "
     "detail: Query was: LOCK TABLE public.error_1 IN ACCESS SHARE MODE"),
    ("pg_dump", b"pg_dump: fatal: could not open output file: No such file or directory\n",
     "pg_dump: fatal: could not open output file: No such file or directory"),
    ("pg_restore", b"pg_restore: [archiver (db)] could not execute query: ERROR:  must be owner of table marker\n"
                   b"    Command was: ALTER TABLE public.marker OWNER TO postgres;\n",
     "pg_restore: [archiver (db)] could not execute query: ERROR:  must be owner of table marker; "
     "Command was: ALTER TABLE public.marker OWNER TO postgres;"),
    ("pg_restore", b"pg_restore: creating TABLE public.t\nERROR:  out of memory\n", "ERROR:  out of memory"),
    ("pg_restore", b"pg_restore: could not write to file: No space left on device\n",
     "pg_restore: could not write to file: No space left on device"),
])
def test_each_tools_error_is_recognised(name: str, stderr: bytes, shown: str) -> None:
    tail = _tail([stderr], name)
    assert tail.last_error() == shown


def test_a_serial_restore_counts_its_last_table_only_when_it_succeeded() -> None:
    serial = [*_message('processing data for table "public.a"'), *_message('processing data for table "public.b"')]
    stage, watch = _watch()
    _tail(serial, info=watch)
    watch.close(succeeded=False)
    line = stage.line()
    assert "1 table loaded" in line and "done: public.a" in line and "public.b" not in line, line
    stage, watch = _watch()
    _tail(serial, info=watch)
    watch.close(succeeded=True)
    assert "2 tables loaded" in stage.line()


def test_same_names_in_two_schemas_each_counted_once_by_dump_id() -> None:
    odd = 'dot.ted "q'
    stage, watch = _watch()
    _tail([
        *_message("entering main parallel loop"),
        *_message(f"launching item 10 TABLE DATA {odd}"),
        *_message(f"launching item 11 TABLE DATA {odd}"),
        *_message("launching item 12 TABLE DATA new\nline"),
        *_message(f'processing data for table "other.{odd}"'),
        *_message(f'processing data for table "public.{odd}"'),
        *_message('processing data for table "public.new\nline"'),
        *_message(f"finished item 11 TABLE DATA {odd}"),
        *_message(f"finished item 11 TABLE DATA {odd}"),  # said twice: counted once
        *_message("finished item 12 TABLE DATA new\nline"),
        *_message(f"finished item 10 TABLE DATA {odd}"),
        *_message("finished item 13 INDEX error_1_idx"),
    ], info=watch)
    watch.close()
    line = stage.line()
    assert "3 tables loaded" in line, line
    assert f'done: public.{odd}, public.new, other.{odd}' in line, line
