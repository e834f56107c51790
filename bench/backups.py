"""Backup steps at the first scale: the old way, db-backup per compression, floors, start-up."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from runner.compression import parse_compression
from runner.pg.dump import plan_dump

from .basics import log, mib, run, run_pipeline
from .engine import ENV_NAME, ident
from .measures import Measure, Sample, measured

if TYPE_CHECKING:
    from .runs import Bench


def dump_stages(bench: Bench, compression: str) -> list[list[str]]:
    """What db-backup runs for a compression, from the engine's own plan (zstd: a pipe)."""
    plan = plan_dump(bench.server.tool("pg_dump"), parse_compression(compression))
    return [list(plan.argv), *([list(plan.compressor.argv)] if plan.compressor else [])]


def old_way(bench: Bench, scale: int, dbname: str) -> Path:
    """pg_dump -Fc (default compression: gzip level 6) to a file, then upload_file."""
    path = bench.work / f"old-s{scale}.dump"
    dump = bench.measure(f"s{scale}/old/dump", "old: pg_dump -Fc (gzip:6) -f FILE")
    upload = bench.measure(f"s{scale}/old/upload", "old: boto3 upload_file(FILE)")
    total = bench.measure(f"s{scale}/old", "old way: pg_dump -Fc to file + upload_file")
    for attempt in range(bench.repeat):
        path.unlink(missing_ok=True)
        bench.server.settle()
        d, _ = measured(lambda: run([bench.server.tool("pg_dump"), "-Fc", "-f", str(path)],
                                    env=bench.server.env(dbname)))
        u = bench.upload(path, f"old-way/s{scale}/{attempt}.dump")
        dump.samples.append(d)
        upload.samples.append(u)
        total.samples.append(Sample(d.wall + u.wall, d.cpu_tools + u.cpu_tools, d.cpu_s3 + u.cpu_s3))
        bench.s3.delete_prefix(f"old-way/s{scale}/")
        log(f"  old way: dump {d.wall:.1f}s + upload {u.wall:.1f}s = {d.wall + u.wall:.1f}s")
    total.size = dump.size = path.stat().st_size
    return path


def backup(bench: Bench, scale: int, compression: str, repeat: int) -> Measure:
    target = ident(scale, compression)
    m = bench.measure(f"s{scale}/backup/{compression}", f"db-backup backup ({compression})")
    for _ in range(repeat):
        bench.server.settle()
        sample, _out = bench.engine.run(["backup", target, ENV_NAME])
        m.samples.append(sample)
        dumps = [(k, s) for k, s in bench.s3.objects(f"{target}/") if k.endswith(".dump")]
        m.size = dumps[-1][1]
        # keep only the newest backup (and its manifest) in the in-memory S3
        bench.s3.delete_prefix(f"{target}/", keep=[dumps[-1][0], dumps[-1][0] + ".json"])
        log(f"  db-backup {compression}: {sample.wall:.1f}s, {mib(m.size)}, "
            f"rss {(sample.rss_kib or 0) / 1024:.0f} MB, cpu tools {sample.cpu_tools:.1f}s "
            f"s3 {f'{sample.cpu_s3:.1f}s' if bench.s3.emulated else 'n/a'}")
    return m


def backup_to_folder(bench: Bench, scale: int) -> None:
    """The default backup into a local folder: the engine without the S3 emulator."""
    default = bench.default
    m = bench.measure(f"s{scale}/backup-folder/{default}",
                      f"db-backup backup ({default}) to a local folder")
    store = bench.work / "folder-store"
    for _ in range(bench.repeat):
        shutil.rmtree(store, ignore_errors=True)
        bench.server.settle()
        sample, _out = bench.engine.run(["--targets", str(bench.engine.folder_targets_file), "backup",
                                         ident(scale, default), ENV_NAME])
        m.samples.append(sample)
        m.size = sum(p.stat().st_size for p in store.rglob("*.dump"))
        log(f"  db-backup {default} to a folder: {sample.wall:.1f}s")
    shutil.rmtree(store, ignore_errors=True)


def startup(bench: Bench, scale: int) -> None:
    """Fixed cost of starting the CLI: interpreter, imports, targets.yaml (`db-backup targets`)."""
    m = bench.measure(f"s{scale}/startup", "db-backup targets (start-up cost)")
    for _ in range(bench.repeat):
        sample, _out = bench.engine.run(["targets"])
        m.samples.append(sample)


def floor(bench: Bench, scale: int, dbname: str, compression: str, repeat: int | None = None) -> None:
    """The pipeline floor: db-backup's dump pipeline to /dev/null, and upload_file of its result."""
    stages = dump_stages(bench, compression)
    tools = " | ".join(s[0].rsplit("/", 1)[-1] for s in stages)
    dump = bench.measure(f"s{scale}/floor-dump/{compression}",
                         f"floor: {tools} ({compression}) > /dev/null")
    upload = bench.measure(f"s{scale}/floor-upload/{compression}",
                           f"floor: upload_file of the finished {compression} dump")
    local = bench.work / f"floor-s{scale}.dump"
    bench.download(bench.latest_key(scale, compression), local)
    for attempt in range(bench.repeat if repeat is None else repeat):
        bench.server.settle()
        with open(os.devnull, "wb") as sink:
            d, _ = measured(partial(run_pipeline, stages, bench.server.env(dbname), sink))
        dump.samples.append(d)
        bench.server.settle()
        u = bench.upload(local, f"floor/s{scale}/{attempt}.dump")
        upload.samples.append(u)
        bench.s3.delete_prefix(f"floor/s{scale}/")
        log(f"  floor {compression}: dump to /dev/null {d.wall:.1f}s, upload {u.wall:.1f}s")
    dump.size = upload.size = local.stat().st_size
    local.unlink(missing_ok=True)
