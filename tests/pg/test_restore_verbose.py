"""pg_restore -j's verbose chatter, spliced by its processes: the real cause of a failure, and each table counted once."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from runner.credentials import Connection
from runner.errors import JobFailed
from runner.pg.restore_proc import pg_restore_argv, run_restore_file
from runner.progress import Progress, Stage
from tests.conftest import PgCluster, fingerprint, restore_leftovers, run_cli, write_targets
from tests.helpers.clock import FakeClock

SCHEMAS = ("public", "other")
PER_SCHEMA = 40
# Same names in both schemas; a dot and a quote in one, a newline in another.
ODD = 'dot.ted "q'
NEWLINE = "new\nline"
JOBS = "8"


def _expected() -> set[str]:
    return {f"{schema}.{name}" for schema in SCHEMAS for name in (*(f"error_{i}" for i in range(1, PER_SCHEMA + 1)), ODD)}


def _fill(pg: PgCluster, dbname: str, failing: bool) -> None:
    with pg.connect(dbname) as conn:
        conn.execute("CREATE SCHEMA other")
        for schema in SCHEMAS:
            for name in (*(f"error_{i}" for i in range(1, PER_SCHEMA + 1)), ODD):
                table = sql.Identifier(schema, name)
                conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text)").format(table))
                conn.execute(sql.SQL("INSERT INTO {} SELECT g, md5(g::text) FROM generate_series(1, 500) g").format(table))
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier("public", NEWLINE)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier("public", NEWLINE)))
        if failing:
            # True here, so the data goes into the dump; an exception in any other database, so its COPY fails there.
            conn.execute(sql.SQL(
                "CREATE FUNCTION public.ok_here(int) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN "
                "IF current_database() <> {} THEN RAISE EXCEPTION 'boom at restore'; END IF; RETURN true; END $$"
            ).format(sql.Literal(dbname)))
            conn.execute("CREATE TABLE public.bad_rows (id int CHECK (public.ok_here(id)))")
            conn.execute("INSERT INTO public.bad_rows VALUES (1)")


class _Recorded(Progress):
    """Shows nothing; keeps every table the restore's stage says it finished."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(FakeClock(), 0.0, "off")
        self.finished: list[str] = []
        original = Stage.finished

        def finished(stage: Stage, item: str) -> None:
            self.finished.append(item)
            original(stage, item)

        monkeypatch.setattr(Stage, "finished", finished)


@pytest.fixture
def archive(pg: PgCluster, dbname: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    _fill(pg, dbname, failing=request.param)
    path = tmp_path / "app.dump"
    env = {"PATH": os.environ.get("PATH", ""), "PGPASSWORD": pg.password, "LC_ALL": "C"}
    subprocess.run([str(pg.bindir / "pg_dump"), "--format=custom", f"--file={path}", "-h", pg.host, "-p", str(pg.port),
                    "-U", pg.user, dbname], env=env, check=True, timeout=120)
    yield path


def _restore(pg: PgCluster, dbname: str, archive: Path, jobs: int, progress: Progress) -> None:
    fresh = f"{dbname}__copy"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(fresh)))
    target = Connection(pg.host, pg.port, fresh, pg.user, pg.password)
    run_restore_file(target, pg_restore_argv(str(pg.bindir / "pg_restore"), fresh, False, jobs, archive), progress)


@pytest.mark.parametrize("archive", [False], indirect=True)
def test_a_parallel_restore_counts_each_table_once_by_its_schema(
    pg: PgCluster, dbname: str, archive: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    progress = _Recorded(monkeypatch)
    _restore(pg, dbname, archive, int(JOBS), progress)
    named = [name for name in progress.finished if not name.startswith("public.new")]
    assert sorted(named) == sorted(_expected())  # each once, schema-qualified, dots and quotes whole
    assert len(progress.finished) == len(named) + 1  # the newline's table too, under at least the start of its name
    assert fingerprint(pg, f"{dbname}__copy") == fingerprint(pg, dbname)


@pytest.mark.parametrize("archive", [True], indirect=True)
def test_a_table_whose_load_failed_is_not_counted(
    pg: PgCluster, dbname: str, archive: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for jobs in (1, int(JOBS)):
        progress = _Recorded(monkeypatch)
        with pytest.raises(JobFailed, match="boom at restore"):
            _restore(pg, dbname, archive, jobs, progress)
        assert "public.bad_rows" not in progress.finished, jobs
        assert len(set(progress.finished)) == len(progress.finished), jobs
        pg.drop(f"{dbname}__copy")


@pytest.mark.parametrize("archive", [True], indirect=True)
def test_a_parallel_restore_that_fails_names_the_real_cause(
    pg: PgCluster, dbname: str, archive: Path, tmp_path: Path, pg_env: dict[str, str],
) -> None:
    beta = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(beta)))
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta}, f"file://{tmp_path / 'backups'}",
                            extra="compression: zstd:1")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "DB_BACKUP_RESTORE_MODE": "parallel", "DB_BACKUP_RESTORE_JOBS": JOBS}
    backup = run_cli("backup", "app", "production", env=env)
    assert backup.returncode == 0, backup.stderr
    before = fingerprint(pg, beta)
    done = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)
    assert done.returncode == 1, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(
        'error: pg_restore failed (exit 1): pg_restore: error: COPY failed for table "bad_rows": ERROR:  boom at restore'
    ), done.stderr
    assert "error_" not in error and "worker process died" not in error, error
    assert "so pg_restore -j seeks to each" in done.stderr, done.stderr  # the local copy, for -j
    assert fingerprint(pg, beta) == before
    assert restore_leftovers(pg) == set()
