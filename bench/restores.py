"""Restore steps: db-backup's modes, plain pg_restore baselines and floors, a client on one core."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .basics import BenchError, log, run, run_pipeline
from .engine import ENV_NAME, ident
from .measures import Measure, measured

if TYPE_CHECKING:
    from .runs import Bench

Stages = Callable[[str], list[list[str]]]  # the pipeline that restores into a database name


def restore_cli(bench: Bench, scale: int, compression: str, mode: str, expected: dict[str, int],
                key: str, label: str, repeat: int, pin: int | None = None) -> Measure:
    """`db-backup restore` in DB_BACKUP_RESTORE_MODE `mode`; the note says what it ran."""
    m = bench.measure(key, label)
    dest = f"restored_s{scale}"
    url = bench.server.url(dest)  # no password in it: PGPASSWORD in the child's environment
    extra = {"DB_BACKUP_RESTORE_MODE": mode}
    if bench.server.password is not None:
        extra["PGPASSWORD"] = bench.server.password
    for _ in range(repeat):
        bench.server.drop_db(dest)
        bench.server.settle()
        sample, out = bench.engine.run(
            ["restore", ident(scale, compression), "--from", ENV_NAME, "--to-url", url], extra, pin=pin)
        m.samples.append(sample)
        # "... (125.7 MB, 9.6s, parallel -j2, sha256 verified)": the mode it chose
        details = out.rsplit("(", 1)[-1].split(",")
        m.note = details[2].strip() if len(details) > 2 else ""
        bench.verify(dest, expected, label)
        bench.server.drop_db(dest)
        log(f"  {label}: {sample.wall:.1f}s ({m.note}), rss {(sample.rss_kib or 0) / 1024:.0f} MB")
    return m


def restore_plain(bench: Bench, key: str, label: str, dbname: str, expected: dict[str, int],
                  stages_for: Stages, source: Path | None = None, repeat: int | None = None) -> Measure:
    """CREATE DATABASE + a pg_restore pipeline, timed together (like db-backup's restore)."""
    m = bench.measure(key, label)
    for _ in range(bench.repeat if repeat is None else repeat):
        bench.server.drop_db(dbname)
        bench.server.settle()

        def go() -> None:
            bench.server.create_db(dbname)
            with contextlib.ExitStack() as stack:
                src = stack.enter_context(open(source, "rb")) if source else subprocess.DEVNULL
                run_pipeline(stages_for(dbname), bench.server.env(dbname), source=src)

        sample, _ = measured(go)
        m.samples.append(sample)
        bench.verify(dbname, expected, label)
        bench.server.drop_db(dbname)
        log(f"  {label}: {sample.wall:.1f}s")
    return m


def pg_restore(bench: Bench, *extra: str, pin: int | None = None) -> Stages:
    """pg_restore as a one-stage pipeline; pin = a CPU to run it (and its workers) on."""
    taskset = ["taskset", "-c", str(pin)] if pin is not None else []

    def stages(dbname: str) -> list[list[str]]:
        return [[*taskset, bench.server.tool("pg_restore"), "--no-password", "--exit-on-error",
                 f"--dbname={dbname}", *extra]]
    return stages


def restore_pinned(bench: Bench, scale: int, dbname: str, expected: dict[str, int], seek: Path) -> None:
    """Restores with the client on one core, the server not.

    pg_restore -j1 and -j2 of the -f file, then db-backup's own restore of the default backup
    in stream and parallel mode. The production case: a 1-vCPU task restoring into a
    multi-core database server. taskset pins pg_restore (or the db-backup CLI), and every
    child and forked worker inherits the affinity; the PostgreSQL server and the in-process
    moto S3 server were started by this (unpinned) process, so they may use every core. The
    engine counts the cores it may run on, so its parallel mode still runs its minimum of
    pg_restore -j2 on the one core.
    """
    if not shutil.which("taskset"):
        bench.pinned_skip = "taskset (util-linux) is not installed"
    elif bench.cores < 2:
        bench.pinned_skip = "this machine gives the benchmark only 1 core"
    if bench.pinned_skip:
        log(f"  client pinned to 1 core: skipped: {bench.pinned_skip}")
        bench.results["scales"][str(scale)]["pinned_restore_skipped"] = bench.pinned_skip
        return
    cpu = min(os.sched_getaffinity(0))  # CPU 0 unless a cpuset excludes it
    for jobs in (1, 2):
        m = restore_plain(bench, f"s{scale}/restore/pinned-j{jobs}",
                          f"client pinned to 1 core: pg_restore -j{jobs} of the -f file",
                          dbname, expected, pg_restore(bench, f"--jobs={jobs}", str(seek), pin=cpu))
        m.note = f"taskset -c {cpu}; {bench.server_where()}"
    default = bench.default
    for mode in ("stream", "parallel"):
        m = restore_cli(bench, scale, default, mode, expected, f"s{scale}/restore/pinned-{mode}",
                        f"db-backup restore {default} ({mode}), client pinned to 1 core",
                        bench.repeat, pin=cpu)
        # m.note is what db-backup reported ("stream", "parallel -j2")
        m.note = f"{m.note}; taskset -c {cpu}; {bench.server_where(s3=True)}"


def restore_floor(bench: Bench, scale: int, expected: dict[str, int], repeat: int, keep: bool = False) -> Path:
    """The restore floor: pg_restore -j2 of a local, uncompressed archive written with -f (it has data offsets)."""
    seek = bench.work / f"seek-s{scale}.dump"
    run([bench.server.tool("pg_dump"), "-Fc", "-Z0", "-f", str(seek)],
        env=bench.server.env(f"bench_s{scale}"))
    restore_plain(bench, f"s{scale}/restore/seek-j2",
                  "restore floor: pg_restore -j2 of a -Z0 dump file written with -f (has offsets)",
                  f"plain_s{scale}", expected, pg_restore(bench, "--jobs=2", str(seek)), repeat=repeat)
    if not keep:
        seek.unlink(missing_ok=True)
    return seek


def restores_full(bench: Bench, scale: int, expected: dict[str, int], old_dump: Path) -> None:
    """Every restore step at the first scale, each checked against the source's row counts."""
    default = bench.default
    scratch = f"plain_s{scale}"
    restore_plain(bench, f"s{scale}/restore/old-j1", "pg_restore -j1 of the old dump (gzip:6)",
                  scratch, expected, pg_restore(bench, "--jobs=1", str(old_dump)))
    # The old system's whole restore also downloaded its dump first.
    bench.upload(old_dump, f"old-way/s{scale}/restore.dump")
    fetched = bench.work / f"old-fetched-s{scale}.dump"
    down = bench.measure(f"s{scale}/old/download", "old: boto3 download_file of its dump")
    for _ in range(bench.repeat):
        fetched.unlink(missing_ok=True)
        bench.server.settle()
        down.samples.append(bench.download(bench.s3.key(f"old-way/s{scale}/restore.dump"), fetched))
    fetched.unlink(missing_ok=True)
    bench.s3.delete_prefix(f"old-way/s{scale}/")
    for mode in ("stream", "parallel", "auto"):
        restore_cli(bench, scale, default, mode, expected, f"s{scale}/restore/{mode}",
                    f"db-backup restore {default} ({mode})", bench.repeat)
    # The same (pipe-written) default dump restored by plain tools.
    zst = bench.work / f"pipe-s{scale}.dump.zst"
    raw = bench.work / f"pipe-s{scale}.dump"
    bench.download(bench.latest_key(scale, default), zst)
    restore_plain(bench, f"s{scale}/restore/plain-stream",
                  f"zstd -dc | pg_restore (same {default} dump)", scratch, expected,
                  lambda db: [["zstd", "-d", "-q", "-c"], *pg_restore(bench)(db)], source=zst)
    dec = bench.measure(f"s{scale}/decompress", f"zstd -d of the {default} dump to a file")
    for _ in range(bench.repeat):
        raw.unlink(missing_ok=True)
        bench.server.settle()
        sample, _ = measured(lambda: run(["zstd", "-d", "-q", "-f", str(zst), "-o", str(raw)]))
        dec.samples.append(sample)
    dec.size = raw.stat().st_size
    label = "pg_restore -j2 of that decompressed file (no data offsets)"
    j2 = bench.measure(f"s{scale}/restore/pipe-j2", label)
    try:
        restore_plain(bench, f"s{scale}/restore/pipe-j2", label, scratch, expected,
                      pg_restore(bench, "--jobs=2", str(raw)))
        j2.note = "works: exit 0, same rows"
    except BenchError as exc:
        j2.note = f"FAILS: {str(exc).splitlines()[-1]}"
        log(f"  pg_restore -j2 of the pipe-written archive failed: {exc}")
    raw.unlink(missing_ok=True)
    zst.unlink(missing_ok=True)
    # Floors: the same data as a seekable, uncompressed archive with data offsets.
    seek = restore_floor(bench, scale, expected, bench.repeat, keep=True)
    restore_plain(bench, f"s{scale}/restore/seek-j1",
                  "pg_restore -j1 of a -Z0 dump file (no decompression)",
                  scratch, expected, pg_restore(bench, "--jobs=1", str(seek)))
    restore_pinned(bench, scale, scratch, expected, seek)
    seek.unlink(missing_ok=True)
    if not bench.args.skip_legacy:
        # The old dump, stored the old way (no manifest), restored through db-backup.
        legacy = ident(scale, "legacy")
        bench.upload(old_dump, f"{legacy}/{ENV_NAME}/2020-01-01_00-00-00.dump")
        restore_cli(bench, scale, "legacy", "auto", expected, f"s{scale}/restore/legacy",
                    "db-backup restore of the old dump (legacy, auto)", bench.repeat)
        bench.s3.delete_prefix(f"{legacy}/")
