"""A restore into a database that does not exist yet creates it as pg_restore --create would: the source's encoding and locale."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from psycopg import sql

from runner.credentials import parse_url
from runner.pg.admin import DatabaseShape, create_database, shape_of
from runner.pg.session import connect
from tests.conftest import PgCluster, fingerprint, run_cli, write_targets


def _shape(pg: PgCluster, name: str) -> tuple[object, ...] | None:
    with pg.connect() as conn:
        return conn.execute(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database WHERE datname = %s", (name,),
        ).fetchone()


@pytest.fixture
def latin1(pg: PgCluster, dbname: str) -> str:
    """A LATIN1 database (the test cluster's default is UTF8) with text only LATIN1 and UTF8 share."""
    name = f"{dbname}__latin1"  # dropped with dbname by its fixture
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'")
                     .format(sql.Identifier(name)))
    with pg.connect(name) as conn:
        conn.execute("CREATE TABLE words (id int PRIMARY KEY, word text NOT NULL)")
        conn.execute("INSERT INTO words VALUES (1, 'café'), (2, 'naïve'), (3, 'Größe'), (4, 'plain')")
    return name


@pytest.mark.parametrize("compression", ["zstd:1", "gzip:1", "none"])
def test_a_latin1_database_restored_into_a_new_database_is_latin1(
    pg: PgCluster, dbname: str, latin1: str, tmp_path: Path, pg_env: dict[str, str], compression: str,
) -> None:
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": latin1}, "file://./backups",
                            extra=f"compression: {compression}")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    backup = run_cli("backup", "app", "production", env=env)
    assert backup.returncode == 0, backup.stderr
    assert _shape(pg, dbname)[0] == "UTF8"  # type: ignore[index]  # the server's default, which a plain CREATE would take

    new = f"{dbname}__copy"
    restored = run_cli("restore", "app", "--from", "production", "--to-url", pg.url(new, password=False),
                       env={**env, "PGPASSWORD": pg.password})
    assert restored.returncode == 0, restored.stderr
    assert _shape(pg, new) == ("LATIN1", "C", "C")
    assert fingerprint(pg, new) == fingerprint(pg, latin1)
    with pg.connect(new) as conn:
        assert conn.execute("SELECT word FROM words WHERE id = 3").fetchone() == ("Größe",)


def test_an_existing_target_keeps_its_own_shape(
    pg: PgCluster, dbname: str, latin1: str, tmp_path: Path, pg_env: dict[str, str],
) -> None:
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": latin1, "beta": dbname}, "file://./backups")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    before = _shape(pg, dbname)
    restored = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)
    assert restored.returncode == 0, restored.stderr
    assert _shape(pg, dbname) == before and before is not None and before[0] == "UTF8"  # the target's, as always
    # The same words, in the target's encoding (so not byte for byte: md5 checksums of the text would differ).
    with pg.connect(dbname) as restored_db, pg.connect(latin1) as source:
        query = "SELECT id, word FROM words ORDER BY id"
        assert restored_db.execute(query).fetchall() == source.execute(query).fetchall()


def test_the_shape_as_pg_dump_writes_it() -> None:
    assert shape_of("CREATE DATABASE app WITH TEMPLATE = template0 ENCODING = 'LATIN1' LOCALE_PROVIDER = libc LOCALE = 'C';") \
        == DatabaseShape("LATIN1", "C", "C")
    assert shape_of("CREATE DATABASE app WITH TEMPLATE = template0 ENCODING = 'UTF8' LC_COLLATE = 'en_US.UTF-8' "
                    "LC_CTYPE = 'de_DE.UTF-8';") == DatabaseShape("UTF8", "en_US.UTF-8", "de_DE.UTF-8")
    assert shape_of("CREATE DATABASE app WITH TEMPLATE = template0;") is None
    assert shape_of(None) is None


def test_a_locale_the_server_lacks_falls_back_to_its_defaults(pg: PgCluster, caplog: pytest.LogCaptureFixture) -> None:
    name = f"t_{uuid.uuid4().hex[:10]}"
    shape = DatabaseShape("UTF8", "xx_NOWHERE.UTF-8", "xx_NOWHERE.UTF-8")
    try:
        with connect(parse_url(pg.url())) as admin, caplog.at_level(logging.WARNING):
            create_database(admin, name, None, shape)
        assert _shape(pg, name) is not None
        assert "cannot create" in caplog.text and "xx_NOWHERE.UTF-8" in caplog.text and "server's defaults" in caplog.text
    finally:
        pg.drop(name)
