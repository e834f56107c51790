"""One benchmark run: its state, and what it does at each scale."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from . import backups, fixed, prove, restores
from .basics import BenchError, log, mib, run
from .data import make_database
from .engine import Engine, ident
from .measures import Measure, Sample, measured
from .s3 import DOWNLOAD, UPLOAD, S3Base
from .server import Server


class Bench:
    """The server, S3, the engine and every measure taken so far, keyed `s<scale>/<step>`."""

    def __init__(self, args: argparse.Namespace, server: Server, s3: S3Base, work: Path) -> None:
        self.args = args
        self.server = server
        self.s3 = s3
        self.work = work
        self.default: str = args.default
        self.engine = Engine(work, server, s3, self.default, args.compressions)
        self.results: dict[str, Any] = {"scales": {}}
        self.measures: dict[str, Measure] = {}
        self.cores = len(os.sched_getaffinity(0))
        self.pinned_skip = ""  # why the pinned-client restores were not measured, if they were not
        self.repeat: int = args.repeat

    def measure(self, key: str, name: str) -> Measure:
        self.measures[key] = self.measures.get(key) or Measure(name)
        return self.measures[key]

    def verify(self, dbname: str, expected: dict[str, int], what: str) -> None:
        got = self.server.counts(dbname)
        if got != expected:
            raise BenchError(f"{what}: restored database differs: {got} != {expected}")

    def _python(self, code: str, *argv: str) -> Sample:
        sample, _ = measured(lambda: run([self.engine.python, "-c", code, *argv],
                                         env=self.engine.env(), timeout=3600))
        return sample

    def upload(self, path: Path, key: str) -> Sample:
        """The old way's upload_file of `path` to `key` (relative to the run's S3 prefix)."""
        return self._python(UPLOAD, str(path), self.s3.bucket, self.s3.region, self.s3.key(key))

    def download(self, key: str, path: Path) -> Sample:
        """download_file of a full key (as objects() and latest_key() return them)."""
        return self._python(DOWNLOAD, self.s3.bucket, self.s3.region, key, str(path))

    def latest_key(self, scale: int, compression: str) -> str:
        dumps = [k for k, _ in self.s3.objects(f"{ident(scale, compression)}/")
                 if k.endswith(".dump")]
        return dumps[-1]

    def server_where(self, s3: bool = False) -> str:
        """Where the database server (and the S3 side) ran, for the pinned-restore notes."""
        server = "server external" if self.server.external else f"server on all {self.cores} cores"
        if not s3:
            return server
        if not self.s3.emulated:
            return f"{server}; real S3"
        if self.server.external:
            return f"server external; moto S3 on all {self.cores} cores"
        return f"server + S3 on all {self.cores} cores"

    def scale(self, scale: int, full: bool) -> None:
        """The first scale gets every step; the others peak RSS and the restore modes."""
        dbname = f"bench_s{scale}"
        log(f"scale {scale}: building {dbname} (pgbench -s {scale} + {self.args.text_rows:,} "
            f"text rows, --data {self.args.data})")
        info = make_database(self.server, dbname, scale, self.args.text_rows, self.args.data)
        expected = info["counts"]
        log(f"  database size {mib(info['size_bytes'])}, rows {expected}")
        self.results["scales"][str(scale)] = {"database": info, "full": full}
        # Warm-up (untimed), so every measurement sees the same warm page cache.
        raw = self.work / "raw-size.dump"
        run([self.server.tool("pg_dump"), "-Fc", "-Z0", "-f", str(raw)], env=self.server.env(dbname))
        info["raw_dump_bytes"] = raw.stat().st_size
        raw.unlink()
        log(f"  uncompressed custom dump: {mib(info['raw_dump_bytes'])}")
        default = self.default
        if full:
            fixed.fixed_costs(self)
            backups.startup(self, scale)
            old_dump = backups.old_way(self, scale, dbname)
            for compression in self.args.compressions:
                backups.backup(self, scale, compression, self.repeat)
                if compression in self.args.floors:
                    backups.floor(self, scale, dbname, compression)
                if compression != default:
                    self.s3.delete_prefix(f"{ident(scale, compression)}/")
            backups.backup_to_folder(self, scale)
            if not self.args.skip_restores:
                restores.restores_full(self, scale, expected, old_dump)
            if self.args.prove:
                prove.prove(self, scale, expected)
            old_dump.unlink(missing_ok=True)
        else:
            # Other sizes: peak RSS of every command, and the two restore modes (one run each).
            for compression in (default, "none"):
                backups.backup(self, scale, compression, 1)
            backups.floor(self, scale, dbname, default, 1)
            self.s3.delete_prefix(f"{ident(scale, 'none')}/")
            for mode in () if self.args.skip_restores else ("stream", "parallel", "auto"):
                restores.restore_cli(self, scale, default, mode, expected, f"s{scale}/restore/{mode}",
                                     f"db-backup restore {default} ({mode})", self.args.repeat_other)
            if not self.args.skip_restores:
                restores.restore_floor(self, scale, expected, self.args.repeat_other)
        self.s3.delete_prefix(f"{ident(scale, default)}/")
        self.server.drop_db(dbname)
