"""Restore drills through the CLI: a throwaway cluster of their own (or --to-url), real backups, real checks."""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from runner import drill
from runner.archive import header_version
from runner.pg import cluster as cluster_module
from runner.pg.cluster import throwaway_cluster
from tests.conftest import PgCluster, fill_rich, run_cli, run_until, write_targets
from tests.helpers.cli import run_main


def _source_counts(pg: PgCluster, dbname: str) -> dict[str, int]:
    counts = {}
    with pg.connect(dbname) as conn:
        tables = conn.execute("SELECT schemaname, tablename FROM pg_tables "
                              "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')").fetchall()
        for schema, table in tables:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))).fetchone()
            assert row is not None
            counts[f"{schema}.{table}"] = row[0]
    return counts


def _servers_under(folder: Path) -> list[str]:
    """Command lines of processes whose command line names `folder` (a throwaway server's data directory)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in text and "pytest" not in text:
            found.append(text)
    return found


@pytest.fixture
def work() -> Iterator[Path]:
    """The drill's work folder, where its throwaway cluster lives: outside pytest's private tmp, since
    under root the server runs as postgres and must reach it."""
    folder = Path(tempfile.mkdtemp(prefix="drill-work-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def drill_env(pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], work: Path) -> dict[str, str]:
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, "file://./backups")
    return {**pg_env, "DB_BACKUP_TARGETS": str(targets), "DB_BACKUP_WORK_DIR": str(work)}


def _without_globals(tmp_path: Path) -> None:
    """Make the stored backup one of an older db-backup: no globals file, and a manifest that names none."""
    folder = tmp_path / "backups" / "app" / "production"
    for path in folder.glob("*.globals.sql"):
        path.unlink()
    (path,) = folder.glob("*.dump.json")
    manifest = json.loads(path.read_text())
    for name in ("globals_sha256", "globals_bytes", "globals_missing", "roles"):
        manifest.pop(name, None)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _record(tmp_path: Path) -> dict[str, object]:
    records = list((tmp_path / "backups" / "app" / "production").glob("*.dump.drill.json"))
    assert len(records) == 1, records
    loaded: dict[str, object] = json.loads(records[0].read_text())
    return loaded


@pytest.mark.parametrize("compression", ["zstd:3", "gzip:6", "none"])
def test_drill_of_a_good_backup_passes_with_the_sources_row_counts(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], work: Path, compression: str,
) -> None:
    fill_rich(pg, dbname)
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, "file://./backups",
                            extra=f"compression: {compression}")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "DB_BACKUP_WORK_DIR": str(work)}
    assert (backed := run_cli("backup", "app", "production", env=env)).returncode == 0, backed.stderr

    drilled = run_cli("drill", "app", "production", "--json", env=env)

    assert drilled.returncode == 0, drilled.stderr
    shown = json.loads(drilled.stdout)
    record = _record(tmp_path)
    expected = _source_counts(pg, dbname)
    assert expected == {"shop.customer": 2001, "shop.orders": 5000}
    assert record["ok"] is True and record["problem"] is None
    assert record["tables"] == expected and record["restored_tables"] == expected
    assert record["missing_extensions"] == []
    assert str(record["server"]).startswith("throwaway cluster (PostgreSQL ")
    assert isinstance(record["database_bytes"], int) and record["database_bytes"] > 0
    assert isinstance(record["restore_duration_s"], float) and record["restore_duration_s"] > 0
    assert shown["backup_id"] == record["backup_id"] and shown["record"].endswith(".dump.drill.json")
    assert list(work.iterdir()) == [] and _servers_under(work) == []
    assert pg.password not in drilled.stderr + drilled.stdout


def test_drill_of_an_unrestorable_backup_fails_names_why_and_leaves_nothing(
    pg: PgCluster, dbname: str, tmp_path: Path, drill_env: dict[str, str],
) -> None:
    """The archive is whole, but a table's owner is a role only the source server has, and the backup is one
    from before db-backup stored roles beside the dump (no globals file), so the drill cannot create it."""
    with pg.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS drill_owner_x")
        conn.execute("CREATE ROLE drill_owner_x")
    try:
        with pg.connect(dbname) as conn:
            conn.execute("CREATE TABLE owned (id int PRIMARY KEY); INSERT INTO owned SELECT generate_series(1, 10)")
            conn.execute("ALTER TABLE owned OWNER TO drill_owner_x")
        assert (backed := run_cli("backup", "app", "production", env=drill_env)).returncode == 0, backed.stderr
        _without_globals(tmp_path)
        # the role goes with the database; a dropped table keeps the role droppable
    finally:
        with pg.connect(dbname) as conn:
            conn.execute("DROP TABLE IF EXISTS owned")
        with pg.connect() as conn:
            conn.execute("DROP ROLE IF EXISTS drill_owner_x")

    drilled = run_cli("drill", "app", "production", env=drill_env)

    assert drilled.returncode == 1, drilled.stderr
    assert 'role "drill_owner_x" does not exist' in drilled.stderr, drilled.stderr
    assert "pg_restore failed" in drilled.stderr
    record = _record(tmp_path)
    assert record["ok"] is False and 'role "drill_owner_x" does not exist' in str(record["problem"])
    assert record["tables"] == {"public.owned": 10} and record["restored_tables"] == {}
    work = Path(drill_env["DB_BACKUP_WORK_DIR"])
    assert list(work.iterdir()) == [] and _servers_under(work) == []


def test_drill_to_url_checks_on_the_named_server_and_drops_its_database(
    pg: PgCluster, dbname: str, tmp_path: Path, drill_env: dict[str, str],
) -> None:
    fill_rich(pg, dbname)
    assert run_cli("backup", "app", "production", env=drill_env).returncode == 0
    env = {**drill_env, "PGPASSWORD": pg.password}
    before = pg.databases()

    drilled = run_cli("drill", "app", "production", "--to-url", pg.url("postgres", password=False), env=env)

    assert drilled.returncode == 0, drilled.stderr
    record = _record(tmp_path)
    assert record["ok"] is True and record["restored_tables"] == _source_counts(pg, dbname)
    assert str(record["server"]).startswith(f"postgres@{pg.host}:{pg.port} (PostgreSQL ")
    assert pg.databases() == before  # drill_<id> was made and dropped

    refused = run_cli("drill", "app", "production", "--to-url", pg.url(dbname, password=False), env=env)
    assert refused.returncode == 2
    assert "existing database" in refused.stderr and "drill" in refused.stderr


def test_a_dump_needing_an_extension_the_server_lacks_fails_naming_it(
    pg: PgCluster, dbname: str, tmp_path: Path, drill_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The throwaway cluster runs this machine's server, which has citext: here it is made to say it has not."""
    fill_rich(pg, dbname)  # CREATE EXTENSION citext
    assert run_cli("backup", "app", "production", env=drill_env).returncode == 0
    for key, value in drill_env.items():
        monkeypatch.setenv(key, value)
    real = drill._available_extensions
    monkeypatch.setattr(drill, "_available_extensions", lambda db: real(db) - {"citext"})

    run = run_main(["drill", "app", "production"], capsys)

    assert run.code == 1, run.output
    assert "the server lacks the extension citext" in run.err_lines[-1]
    record = _record(tmp_path)
    assert record["ok"] is False and record["missing_extensions"] == ["citext"]
    assert list(Path(drill_env["DB_BACKUP_WORK_DIR"]).iterdir()) == []


def test_a_cancelled_drill_stops_and_removes_its_cluster(
    pg: PgCluster, dbname: str, tmp_path: Path, drill_env: dict[str, str], work: Path,
) -> None:
    fill_rich(pg, dbname)
    assert run_cli("backup", "app", "production", env=drill_env).returncode == 0

    def server_up() -> bool:
        return any(work.glob("dbbackup-pg-*/data/postmaster.pid"))

    code, err = run_until(["drill", "app", "production"], drill_env, server_up, "the drill's server to start",
                          lambda proc: proc.send_signal(signal.SIGTERM))

    assert code == 130, err
    assert list(work.iterdir()) == [] and _servers_under(work) == []
    assert not list((tmp_path / "backups" / "app" / "production").glob("*.drill.json"))  # a cancelled drill says nothing


def test_the_throwaway_server_never_sees_this_processs_secrets(monkeypatch: pytest.MonkeyPatch, work: Path) -> None:
    """The dump's SQL runs there as superuser: pg_read_file('/proc/self/environ') must find no credential."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-4711-drill")
    with throwaway_cluster("pw-for-this-test", parent=work) as made:
        pid = int((made.datadir / "postmaster.pid").read_text().splitlines()[0])
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert cluster_module._is_postmaster_of(pid, made.datadir)  # the pid a failed stop would kill
    assert b"PATH=" in environ and b"aws-secret-4711-drill" not in environ and b"AWS_" not in environ


def test_a_drill_refuses_an_unmarked_drill_database_and_spares_other_drills(
    pg: PgCluster, dbname: str, tmp_path: Path, drill_env: dict[str, str],
) -> None:
    assert run_cli("backup", "app", "production", env=drill_env).returncode == 0
    env = {**drill_env, "PGPASSWORD": pg.password}
    with pg.connect() as conn:
        for name in ("drill_x", "drill_other_run"):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute("COMMENT ON DATABASE drill_other_run IS 'db-backup drill 0123abcd'")  # another drill's, running
    try:
        refused = run_cli("drill", "app", "production", "--to-url", pg.url("drill_x", password=False), env=env)
        assert refused.returncode == 2, refused.stderr
        assert "existing database" in refused.stderr
        assert "drill_x" in pg.databases()
        assert not list((tmp_path / "backups" / "app" / "production").glob("*.drill.json"))

        before = pg.databases()
        drilled = run_cli("drill", "app", "production", "--to-url", pg.url("postgres", password=False), env=env)
        assert drilled.returncode == 0, drilled.stderr
        assert pg.databases() == before  # its own database made and dropped; the other drill's left alone
    finally:
        with pg.connect() as conn:
            for name in ("drill_x", "drill_other_run"):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def test_an_archive_format_db_backup_cannot_read_is_refused_without_a_record(
    pg: PgCluster, dbname: str, tmp_path: Path, pg_env: dict[str, str], work: Path,
) -> None:
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, "file://./backups", extra="compression: none")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "DB_BACKUP_WORK_DIR": str(work)}
    assert (backed := run_cli("backup", "app", "production", env=env)).returncode == 0, backed.stderr
    (dump,) = (tmp_path / "backups" / "app" / "production").glob("*.dump")
    data = bytearray(dump.read_bytes())
    assert header_version(bytes(data[:8])) is not None
    data[6] = 17  # archive format 1.17: newer than db-backup or this pg_restore knows
    dump.write_bytes(bytes(data))

    drilled = run_cli("drill", "app", "production", env=env)

    assert drilled.returncode == 2, drilled.stderr
    assert "format 1.17" in drilled.stderr
    assert not list((tmp_path / "backups" / "app" / "production").glob("*.drill.json"))
    assert list(work.iterdir()) == []
