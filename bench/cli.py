"""The command line: options, the run header, one run from start to cleanup, the exit code."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from .basics import BenchError, log
from .data import DATA_PROFILES
from .engine import default_compression, runner_location
from .external import ExternalServer, parse_pg_url
from .header import git_head, machine, versions
from .prove import prove_report
from .report import report
from .runs import Bench
from .s3 import S3_PREFIX_ROOT, Moto, RealS3, S3Base
from .server import OwnCluster, Server, pg_bindir
from .verdicts import check_targets

COMPRESSIONS = ("zstd:1", "zstd:3", "gzip:1", "gzip:6", "none")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="db-backup versus the old system's way: backup, restore, peak RSS. "
                    "See bench/README.md.")
    parser.add_argument("--scales", default="20", help="pgbench scales, comma-separated. The first "
                        "gets the full benchmark; the others show peak RSS and the "
                        "restore modes at another size. Default 20; e.g. 20,60")
    parser.add_argument("--scale", type=int, help="shorthand for --scales N")
    parser.add_argument("--text-rows", type=int, default=3_000_000,
                        help="rows of text (bench_docs, see --data) at every scale; default "
                             "3,000,000, as in the reference data")
    parser.add_argument("--data", choices=DATA_PROFILES, default=DATA_PROFILES[0],
                        help="how bench_docs is filled: 'reference' (default) = id + 128 random hex "
                             "characters per row, the data the targets were measured on "
                             "(pgbench scale 20 + 3 M rows of random text); 'mixed' = words, "
                             "timestamptz, jsonb and md5 in half the rows: more compressible, "
                             "dearer for the server to COPY")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each timed step at the first scale (default 1)")
    parser.add_argument("--repeat-other", type=int, default=1,
                        help="runs of each restore mode at the other scales (default 1; backups "
                             "there run once, for peak RSS)")
    parser.add_argument("--stat", choices=("best", "median"), default="best",
                        help="which of the repeated runs is reported (default best)")
    parser.add_argument("--compressions", default=",".join(COMPRESSIONS),
                        help=f"db-backup compressions to measure (default {','.join(COMPRESSIONS)})")
    parser.add_argument("--floors", default="default",
                        help="compressions whose pipeline floor is measured: a list, 'default' "
                             "(the engine's default compression) or 'all'; default: default")
    parser.add_argument("--skip-restores", action="store_true",
                        help="backups (and their peak RSS) only; no restore measurements")
    parser.add_argument("--skip-legacy", action="store_true",
                        help="skip restoring the old dump through db-backup")
    parser.add_argument("--prove", action="store_true",
                        help="also time `db-backup verify` and `drill` of the default backup "
                             "against a restore of it (first scale)")
    parser.add_argument("--pg-bindir", help="PostgreSQL bin directory (default: the newest "
                        "/usr/lib/postgresql/*/bin; with --pg-url client tools suffice, and "
                        "PATH is used if none are there)")
    parser.add_argument("--pg-url", help="use this existing server (e.g. RDS) instead of starting "
                        "a cluster: postgresql://USER@HOST:PORT/DBNAME[?sslmode=require]. The "
                        "password comes from PGPASSWORD or ~/.pgpass, never the URL. The user "
                        "needs CREATEDB; the bench creates bench_sN, restored_sN and plain_sN "
                        "and drops them at the end")
    parser.add_argument("--s3-bucket", help="use this real S3 bucket (boto3's default "
                        "credentials and region, no endpoint override) instead of moto")
    parser.add_argument("--s3-prefix", help="with --s3-bucket: key prefix for everything the "
                        f"bench writes; must be empty; default {S3_PREFIX_ROOT}/<run-id>/. "
                        "Deleted at the end")
    parser.add_argument("--workdir", help="where dump files go (default: a new temp dir)")
    parser.add_argument("--json", dest="json_out", help="also write every number to this file")
    args = parser.parse_args(argv)
    args.scales = [args.scale] if args.scale else [int(s) for s in args.scales.split(",") if s]
    args.compressions = [c.strip() for c in args.compressions.split(",") if c.strip()]
    if args.repeat < 1 or args.repeat_other < 1 or not args.scales:
        parser.error("--repeat must be >= 1 and --scales must name at least one scale")
    if args.s3_prefix is not None and not args.s3_bucket:
        parser.error("--s3-prefix needs --s3-bucket")
    if args.s3_bucket:
        run_id = f"{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        prefix = f"{S3_PREFIX_ROOT}/{run_id}" if args.s3_prefix is None else args.s3_prefix
        args.s3_prefix = prefix.strip("/")
        if not args.s3_prefix:
            parser.error("--s3-prefix must not be empty: the bench deletes everything under it")
    return args


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(f"interrupted by {signal.Signals(signum).name}")


def print_header(argv: list[str], args: argparse.Namespace, bindir: Path, server: Server,
                 s3: S3Base) -> None:
    print("db-backup benchmark")
    print(f"date:     {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC")
    print(f"command:  {shlex.join(['.venv/bin/python', '-m', 'bench', *argv])}")
    print(f"machine:  {machine()}")
    print(f"versions: {versions(bindir)}")
    tuning = {k: v for k, v in os.environ.items() if k.startswith("DB_BACKUP_")}
    print(f"engine:   runner imported from {runner_location()} (repo git {git_head()}); "
          f"default compression {args.default}; DB_BACKUP_* set: {tuning or 'none'}")
    print(f"data:     --data {args.data}, pgbench scales {','.join(map(str, args.scales))} + "
          f"{args.text_rows:,} bench_docs rows each")
    print(f"server:   {server.describe()}")
    print(f"s3:       {s3.describe()}")
    print(flush=True)


def main(argv: list[str]) -> int:
    """0 if every target passes, 3 if any fails; BenchError if the benchmark itself broke."""
    args = parse_args(argv)
    pg_target = parse_pg_url(args.pg_url) if args.pg_url else None  # refuses a password first
    args.default = default_compression()
    if args.default not in args.compressions:
        args.compressions.insert(0, args.default)
    floors = args.compressions if args.floors == "all" else args.floors.split(",")
    floors = [args.default if c.strip() == "default" else c.strip() for c in floors]
    args.floors = [c for c in args.compressions if c in floors]
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    for tool in ("zstd", "runuser" if os.geteuid() == 0 and pg_target is None else "true"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} is not installed")
    started = time.perf_counter()
    bindir = pg_bindir(args.pg_bindir, server=pg_target is None)
    # The databases the bench creates: with --pg-url, exactly these are dropped at the end.
    planned = [f"{kind}_s{scale}" for scale in args.scales for kind in ("bench", "restored", "plain")]
    server: Server = (OwnCluster(bindir) if pg_target is None
                      else ExternalServer(bindir, *pg_target, planned))
    s3: S3Base = RealS3(args.s3_bucket, args.s3_prefix) if args.s3_bucket else Moto()
    print_header(argv, args, bindir, server, s3)
    work = Path(tempfile.mkdtemp(prefix="dbbackup-bench-", dir=args.workdir))
    code = 1
    try:
        server.start()
        s3.start()
        log(f"{server.where()}, {s3.where()}")
        bench = Bench(args, server, s3, work)
        bench.engine.write_targets(args.scales)
        for index, scale in enumerate(args.scales):
            bench.scale(scale, full=index == 0)
        report(bench, args.scales)
        prove_report(bench, args.scales[0])
        targets = check_targets(bench, args.scales)
        print(f"\ntotal benchmark time {time.perf_counter() - started:.0f}s")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({
                "args": vars(args), "results": bench.results,
                "setup": {"server": server.describe(), "s3": s3.describe()},
                "measures": {k: m.as_json(args.stat, s3.emulated) for k, m in bench.measures.items()},
                "targets": [t.as_json() for t in targets],
            }, indent=2, default=str))
        code = 0 if all(t.ok for t in targets) else 3
    finally:
        s3.stop()  # moto: stopped; real S3: what this run wrote deleted, its uploads aborted
        server.stop()  # own cluster: stopped and deleted; --pg-url: the bench's databases dropped
        shutil.rmtree(work, ignore_errors=True)
    return code
