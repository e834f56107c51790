"""A restore keeps the target's database-level state: privileges, settings (per role too), comment.

These live in shared catalogs keyed by the database, not in the dump, so they must be copied from
the database being replaced onto the restored one before the swap.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import PgCluster, fill_small, fingerprint, restore_leftovers, run_cli, write_targets

ROLE_PASSWORD = "role-pw-4242"


@pytest.fixture
def beta(pg: PgCluster, dbname: str) -> str:
    name = f"{dbname}__beta"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    fill_small(pg, dbname, "prod")
    fill_small(pg, name, "beta")
    return name


@pytest.fixture
def roles(pg: PgCluster, dbname: str) -> Iterator[tuple[str, str, str]]:
    """An application role, a role it may grant to, and an outsider; all can log in with a password."""
    names = (f"{dbname}_app", f"{dbname}_helper", f"{dbname}_outsider")
    with pg.connect() as conn:
        for role in names:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(ROLE_PASSWORD)))
    yield names
    # Privileges and per-database settings tie the roles to the databases: those go first.
    for other in pg.databases():
        if other.startswith(dbname):
            pg.drop(other)
    with pg.connect() as conn:
        for role in names:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _env(pg: PgCluster, dbname: str, beta: str, tmp_path: Path, pg_env: dict[str, str], mode: str = "stream") -> dict[str, str]:
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta}, "file://./backups")
    return {**pg_env, "DB_BACKUP_TARGETS": str(targets), "DB_BACKUP_RESTORE_MODE": mode}


def _state(pg: PgCluster, name: str) -> dict[str, object]:
    """What `\\l+`, `\\drds` and the catalogs show a user about one database."""
    with pg.connect() as conn:
        row = conn.execute(
            """SELECT d.datacl::text[], shobj_description(d.oid, 'pg_database'), d.datconnlimit, pg_get_userbyid(d.datdba)
               FROM pg_database d WHERE d.datname = %s""",
            (name,),
        ).fetchone()
        assert row is not None, f"{name} does not exist"
        settings = conn.execute(
            """SELECT coalesce(r.rolname, '(all roles)'), s.setconfig FROM pg_db_role_setting s
               JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole
               WHERE d.datname = %s ORDER BY 1""",
            (name,),
        ).fetchall()
    acl = None if row[0] is None else sorted(row[0])
    return {"acl": acl, "comment": row[1], "connlimit": row[2], "owner": row[3], "settings": settings}


def _connect_as(pg: PgCluster, role: str, dbname: str) -> psycopg.Connection:
    return psycopg.connect(host=pg.host, port=pg.port, user=role, password=ROLE_PASSWORD, dbname=dbname, connect_timeout=10, autocommit=True)


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_privileges_role_settings_and_comment_survive_a_restore(
    pg: PgCluster, dbname: str, beta: str, roles: tuple[str, str, str], tmp_path: Path, pg_env: dict[str, str], mode: str
) -> None:
    app, helper, outsider = roles
    db = sql.Identifier(beta)
    with pg.connect() as conn:
        conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(db))
        conn.execute(sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {} WITH GRANT OPTION").format(db, sql.Identifier(app)))
        conn.execute(sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(db, sql.Identifier(app)))
        # A grant made by a role other than the owner is recorded with that role as the grantor.
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(app)))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, sql.Identifier(helper)))
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET work_mem = '64MB'").format(sql.Identifier(app), db))
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = \"a,b\", public").format(sql.Identifier(app), db))
        conn.execute(sql.SQL("ALTER DATABASE {} SET statement_timeout = '5min'").format(db))
        conn.execute(sql.SQL("ALTER DATABASE {} WITH CONNECTION LIMIT 40").format(db))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal("beta's copy of production; ask #data")))
    before = _state(pg, beta)
    assert f"{helper}=c/{app}" in before["acl"]  # type: ignore[operator]
    env = _env(pg, dbname, beta, tmp_path, pg_env, mode)
    assert run_cli("backup", "app", "production", env=env).returncode == 0

    restored = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)

    assert restored.returncode == 0, restored.stderr
    assert "differ" not in restored.stderr
    assert fingerprint(pg, beta) == fingerprint(pg, dbname)
    assert _state(pg, beta) == before
    assert _state(pg, f"{beta}__previous") == before  # a rollback by rename gets them back as well
    # What the users notice: who may connect, and the session they get.
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        _connect_as(pg, outsider, beta).close()
    with _connect_as(pg, app, beta) as conn:
        assert conn.execute("SHOW work_mem").fetchone() == ("64MB",)
        assert conn.execute("SHOW search_path").fetchone() == ('"a,b", public',)
        assert conn.execute("SELECT current_database()").fetchone() == (beta,)
    with _connect_as(pg, helper, beta) as conn:
        assert conn.execute("SHOW work_mem").fetchone() != ("64MB",)
    assert restore_leftovers(pg) == set()


@pytest.mark.parametrize(
    "revoke",
    [None, "REVOKE ALL ON DATABASE {db} FROM PUBLIC", "REVOKE ALL ON DATABASE {db} FROM PUBLIC, {owner}"],
    ids=["default-privileges", "public-revoked", "everything-revoked"],
)
def test_default_and_emptied_privileges_stay_as_they_were(
    pg: PgCluster, dbname: str, beta: str, tmp_path: Path, pg_env: dict[str, str], revoke: str | None
) -> None:
    if revoke:
        with pg.connect() as conn:
            conn.execute(sql.SQL(revoke).format(db=sql.Identifier(beta), owner=sql.Identifier(pg.user)))
    before = _state(pg, beta)
    assert (before["acl"] is None) == (revoke is None)  # NULL means the built-in defaults; kept NULL
    env = _env(pg, dbname, beta, tmp_path, pg_env)
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    restored = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)
    assert restored.returncode == 0, restored.stderr
    assert _state(pg, beta) == before


def test_list_settings_are_copied_exactly(pg: PgCluster, dbname: str, beta: str, roles: tuple[str, str, str], tmp_path: Path, pg_env: dict[str, str]) -> None:
    app = roles[0]
    db = sql.Identifier(beta)
    with pg.connect() as conn:
        # Elements with a comma, a doubled quote, a space, upper case and the $user placeholder.
        conn.execute(sql.SQL('ALTER DATABASE {} SET search_path = "a,b", "we""ird", "Upper Case", "$user", public').format(db))
        conn.execute(sql.SQL("ALTER DATABASE {} SET temp_tablespaces = ''").format(db))
        conn.execute(sql.SQL("ALTER DATABASE {} SET DateStyle = 'ISO, DMY'").format(db))  # a list GUC the server does not quote
        conn.execute(sql.SQL("ALTER DATABASE {} SET myapp.csv = 'x, \"y\", z'").format(db))  # a custom setting is one string
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = 'one element, with a comma'").format(sql.Identifier(app), db))
    before = _state(pg, beta)
    with pg.connect(beta) as conn:
        shown = conn.execute("SELECT current_setting('search_path'), current_setting('DateStyle'), current_setting('myapp.csv')").fetchone()
    env = _env(pg, dbname, beta, tmp_path, pg_env)
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    restored = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)
    assert restored.returncode == 0, restored.stderr
    assert _state(pg, beta) == before
    with pg.connect(beta) as conn:
        assert conn.execute("SELECT current_setting('search_path'), current_setting('DateStyle'), current_setting('myapp.csv')").fetchone() == shown
    with _connect_as(pg, app, beta) as conn:
        assert conn.execute("SHOW search_path").fetchone() == ('"one element, with a comma"',)


def test_settings_that_cannot_be_copied_fail_before_the_swap(
    pg: PgCluster, dbname: str, beta: str, roles: tuple[str, str, str], tmp_path: Path, pg_env: dict[str, str]
) -> None:
    """A restorer that may create databases but not change other roles' settings: refused, target untouched."""
    app, helper, _ = roles
    with pg.connect() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(app)))
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(beta), sql.Identifier(app)))
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET work_mem = '8MB'").format(sql.Identifier(helper), sql.Identifier(beta)))
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta}, "file://./backups",
                            target_extra="ignore_privileges: true")  # the objects in the dump belong to the superuser
    text = targets.read_text()
    cut = text.index("env: beta")
    targets.write_text(text[:cut] + text[cut:].replace(f"user: {pg.user}", f"user: {app}").replace("env:TEST_PG_PASSWORD", "env:APP_PW"))
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "APP_PW": ROLE_PASSWORD}
    assert run_cli("backup", "app", "production", env=env).returncode == 0
    before, state = fingerprint(pg, beta), _state(pg, beta)

    restored = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)

    assert restored.returncode == 1, restored.stderr
    last = restored.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot copy the settings, privileges or comment of {beta}"), last
    assert "permission denied" in last and "the target is unchanged" in last
    assert fingerprint(pg, beta) == before and _state(pg, beta) == state
    assert restore_leftovers(pg) == set()
    assert f"{beta}__previous" not in pg.databases()


def test_a_grant_the_restorer_cannot_repeat_as_its_grantor_is_made_as_the_restorer(
    pg: PgCluster, dbname: str, beta: str, roles: tuple[str, str, str], tmp_path: Path, pg_env: dict[str, str]
) -> None:
    # A non-superuser restorer (as on RDS) may not act as every grantor: the privilege still matters more.
    app, helper, outsider = roles
    restorer = f"{dbname}_restorer"
    db = sql.Identifier(beta)
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(sql.Identifier(restorer), sql.Literal(ROLE_PASSWORD)))
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(restorer)))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {} WITH GRANT OPTION").format(db, sql.Identifier(app)))
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(app)))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, sql.Identifier(helper)))
        conn.execute("RESET ROLE")
    try:
        targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname, "beta": beta}, "file://./backups",
                                target_extra="ignore_privileges: true")
        text = targets.read_text()
        beta_entry = text.index("env: beta")
        targets.write_text(text[:beta_entry] + text[beta_entry:].replace(f"user: {pg.user}", f"user: {restorer}")
                           .replace("env:TEST_PG_PASSWORD", "env:RESTORER_PASSWORD"))
        env = {**pg_env, "RESTORER_PASSWORD": ROLE_PASSWORD, "DB_BACKUP_TARGETS": str(targets)}
        assert run_cli("backup", "app", "production", env=env).returncode == 0

        restored = run_cli("restore", "app", "--from", "production", "--to", "beta", env=env)

        assert restored.returncode == 0, restored.stderr
        assert f"cannot act as {app}, who granted CONNECT on" in restored.stderr
        assert fingerprint(pg, beta) == fingerprint(pg, dbname)
        _connect_as(pg, helper, beta).close()  # the privilege survived
        with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
            _connect_as(pg, outsider, beta).close()
    finally:
        for other in pg.databases():
            if other.startswith(beta):
                pg.drop(other)
        with pg.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(restorer)))
