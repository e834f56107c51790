"""Fixed costs: what db-backup adds to the pg_dump / pg_restore it runs, on an empty database."""

from __future__ import annotations

import os
import shutil
from functools import partial
from typing import TYPE_CHECKING

from .backups import dump_stages
from .basics import log, run, run_pipeline, venv_python
from .engine import EMPTY, EMPTY_DB, ENV_NAME
from .measures import measured

if TYPE_CHECKING:
    from .runs import Bench

# typer builds its parameters with pydantic (typer._adapters); targets.yaml is YAML read into pydantic models.
STACK = "typer._adapters, pydantic, yaml, psycopg"
S3_CLIENT = "import boto3; boto3.session.Session().client('s3', region_name='us-east-1')"


def fixed_costs(bench: Bench) -> None:
    """`--help`; backup of an empty database (folder, S3) against its dump pipeline; restore against pg_restore."""
    server, default = bench.server, bench.default
    server.create_db(EMPTY_DB)
    help_m = bench.measure("fixed/help", "db-backup --help")
    for _ in range(bench.repeat):
        sample, _out = bench.engine.run(["--help"])
        help_m.samples.append(sample)
    # What no db-backup run can go below: the interpreter and the libraries it is built on, nothing of its own.
    stack = bench.measure("fixed/stack", f"python -c 'import {STACK}' (every backup and restore loads these)")
    stack_s3 = bench.measure("fixed/stack-s3", "the same + boto3 and one S3 client (every run on S3)")
    for _ in range(bench.repeat):
        sample, _ = measured(partial(run, [venv_python(), "-c", f"import {STACK}"]))
        stack.samples.append(sample)
        sample, _ = measured(partial(run, [venv_python(), "-c", f"import {STACK}; {S3_CLIENT}"]))
        stack_s3.samples.append(sample)
    dump_floor = bench.measure("fixed/floor-dump", f"dump pipeline of an empty database ({default}) > /dev/null")
    folder = bench.measure("fixed/backup-folder", "db-backup backup of an empty database to a local folder")
    s3 = bench.measure("fixed/backup-s3", "db-backup backup of an empty database to S3")
    stages = dump_stages(bench, default)
    for _ in range(bench.repeat):
        with open(os.devnull, "wb") as sink:
            sample, _ = measured(partial(run_pipeline, stages, server.env(EMPTY_DB), sink))
        dump_floor.samples.append(sample)
        sample, _out = bench.engine.run(["--targets", str(bench.engine.folder_targets_file), "backup", EMPTY, ENV_NAME])
        folder.samples.append(sample)
        sample, _out = bench.engine.run(["backup", EMPTY, ENV_NAME])
        s3.samples.append(sample)
    archive = bench.work / "empty.dump"
    run([server.tool("pg_dump"), "-Fc", "-Z0", "-f", str(archive)], env=server.env(EMPTY_DB))
    restore_floor = bench.measure("fixed/floor-restore", "CREATE DATABASE + pg_restore of an empty database's dump")
    restore = bench.measure("fixed/restore-folder", "db-backup restore of an empty database from a local folder")
    dest = "bench_empty_restored"
    extra = {"PGPASSWORD": server.password} if server.password is not None else {}
    for _ in range(bench.repeat):
        server.drop_db(dest)

        def plain() -> None:
            server.create_db(dest)
            run([server.tool("pg_restore"), "--no-password", "--exit-on-error", f"--dbname={dest}", str(archive)],
                env=server.env(dest))

        sample, _ = measured(plain)
        restore_floor.samples.append(sample)
        server.drop_db(dest)
        sample, _out = bench.engine.run(["--targets", str(bench.engine.folder_targets_file), "restore", EMPTY,
                                         "--from", ENV_NAME, "--to-url", server.url(dest)], extra)
        restore.samples.append(sample)
        server.drop_db(dest)
    archive.unlink(missing_ok=True)
    shutil.rmtree(bench.work / "folder-store", ignore_errors=True)
    bench.s3.delete_prefix(f"{EMPTY}/")
    server.drop_db(EMPTY_DB)
    stat = bench.args.stat
    log(f"  fixed costs: libraries {stack.value(stat):.2f}s (+S3 client {stack_s3.value(stat):.2f}s); --help {help_m.value(stat):.2f}s; backup folder {folder.value(stat):.2f}s / S3 "
        f"{s3.value(stat):.2f}s vs pipeline {dump_floor.value(stat):.2f}s; restore {restore.value(stat):.2f}s "
        f"vs pg_restore {restore_floor.value(stat):.2f}s")
