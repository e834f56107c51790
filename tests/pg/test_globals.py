"""Roles and globals beside the dump: stored by every backup, checked by verify, used by restore --with-roles and drills."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from psycopg import sql

from runner.ecs.request import RemoteJob, task_argv
from runner.manifest import Manifest, parse_manifest
from runner.pg.cluster import Cluster, throwaway_cluster
from runner.pg.roles import parse_globals, roles_to_create
from tests.conftest import PgCluster, fingerprint, restore_leftovers, run_cli, write_targets
from tests.helpers.targets import folder_registry

CLUSTER_PASSWORD = "fresh-cluster-Pw-0815"


@dataclass(frozen=True)
class Roles:
    """The non-default roles of one test's source database (unique names: roles are server-wide)."""

    group: str  # NOLOGIN; the owner is a member of it
    owner: str  # owns the schema and the table; LOGIN, CONNECTION LIMIT 7, a password, role settings
    reader: str  # SUPERUSER on the source, granted SELECT; a name that needs quoting

    @property
    def all(self) -> tuple[str, ...]:
        return (self.group, self.owner, self.reader)


@pytest.fixture
def roles(pg: PgCluster, dbname: str) -> Iterator[Roles]:
    tag = uuid.uuid4().hex[:6]
    made = Roles(f"g_grp_{tag}", f"g_own_{tag}", f'G "Rd" {tag}')
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN CREATEROLE").format(sql.Identifier(made.group)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 7 PASSWORD 'owner-Pw-1'").format(sql.Identifier(made.owner)))
        conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER NOLOGIN").format(sql.Identifier(made.reader)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(made.group), sql.Identifier(made.owner)))
        conn.execute(sql.SQL("ALTER ROLE {} SET work_mem = '12MB'").format(sql.Identifier(made.owner)))
        conn.execute(sql.SQL("ALTER ROLE {} SET search_path = app, public").format(sql.Identifier(made.owner)))
        # pg_dumpall writes a value with a backslash as E'...', the backslash doubled.
        conn.execute(sql.SQL("ALTER ROLE {} SET app.pattern = '^\\d+$'").format(sql.Identifier(made.owner)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(made.group), sql.Identifier(made.reader)))
        conn.execute(sql.SQL("GRANT pg_read_server_files TO {}").format(sql.Identifier(made.owner)))
    with pg.connect(dbname) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA app AUTHORIZATION {}").format(sql.Identifier(made.owner)))
        conn.execute("CREATE TABLE app.items (id int PRIMARY KEY, label text NOT NULL)")
        conn.execute("INSERT INTO app.items SELECT g, 'item ' || g FROM generate_series(1, 300) g")
        conn.execute("CREATE TABLE app.plain (id int)")  # owned by postgres, which every server has
        conn.execute(sql.SQL("ALTER TABLE app.items OWNER TO {}").format(sql.Identifier(made.owner)))
        conn.execute(sql.SQL("GRANT SELECT ON app.items TO {}").format(sql.Identifier(made.reader)))
    yield made
    for other in pg.databases():  # the roles own objects there: the databases go first
        if other == dbname or other.startswith(dbname + "__"):
            pg.drop(other)
    with pg.connect() as conn:
        for name in made.all:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def work() -> Iterator[Path]:
    """Throwaway clusters live here: outside pytest's private tmp, since under root the server runs as postgres."""
    folder = Path(tempfile.mkdtemp(prefix="globals-work-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fresh(work: Path) -> Iterator[Cluster]:
    """A second server that has none of the source's roles."""
    with throwaway_cluster(CLUSTER_PASSWORD, parent=work) as made:
        yield made


def _as_pg(cluster: Cluster, user: str = "postgres", password: str = CLUSTER_PASSWORD) -> PgCluster:
    return PgCluster(cluster.host, cluster.port, user, password, cluster.bindir)


def _folder(tmp_path: Path) -> Path:
    return tmp_path / "backups" / "app" / "production"


def _manifest(tmp_path: Path) -> dict[str, object]:
    (path,) = _folder(tmp_path).glob("*.dump.json")
    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


def _globals_file(tmp_path: Path) -> Path:
    (path,) = _folder(tmp_path).glob("*.globals.sql")
    return path


def _ownership(pg: PgCluster, dbname: str) -> list[tuple[object, ...]]:
    """What a user compares after a restore: each relation's owner and ACL, and the table grants by name."""
    with pg.connect(dbname) as conn:
        owners = conn.execute(
            "SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner), c.relacl::text FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'app' ORDER BY 1, 2").fetchall()
        schema = conn.execute("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'app'").fetchall()
        grants = conn.execute(
            "SELECT grantor, grantee, table_name, privilege_type FROM information_schema.role_table_grants "
            "WHERE table_schema = 'app' ORDER BY 1, 2, 3, 4").fetchall()
    return [*owners, *schema, *grants]


def _role(pg: PgCluster, name: str) -> tuple[object, ...] | None:
    with pg.connect() as conn:
        return conn.execute(
            "SELECT rolsuper, rolcanlogin, rolconnlimit, rolpassword IS NULL, "
            "(SELECT setconfig FROM pg_db_role_setting s WHERE s.setrole = a.oid AND s.setdatabase = 0), "
            "ARRAY(SELECT b.rolname FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = a.oid ORDER BY 1) "
            "FROM pg_authid a WHERE rolname = %s", (name,)).fetchone()


@pytest.fixture
def backed_up(pg: PgCluster, dbname: str, roles: Roles, tmp_path: Path, pg_env: dict[str, str]) -> dict[str, str]:
    """A backup of the database with non-default roles; the CLI's environment."""
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, "file://./backups")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets)}
    backup = run_cli("backup", "app", "production", env=env)
    assert backup.returncode == 0, backup.stderr
    return env


def test_a_backup_stores_the_roles_beside_the_dump_without_passwords(
    pg: PgCluster, dbname: str, roles: Roles, tmp_path: Path, backed_up: dict[str, str],
) -> None:
    manifest = _manifest(tmp_path)
    path = _globals_file(tmp_path)
    data = path.read_bytes()
    assert path.name == str(manifest["id"]) + ".globals.sql"
    assert manifest["globals_sha256"] == hashlib.sha256(data).hexdigest() and manifest["globals_bytes"] == len(data)
    assert "globals_missing" not in manifest
    text = data.decode()
    assert f"CREATE ROLE {roles.owner};" in text and 'CREATE ROLE "G ""Rd"" ' in text
    assert "SCRAM" not in text and "md5" not in text and "owner-Pw-1" not in text
    # The roles the database's objects refer to: its owner, the table's owner, the grantee.
    assert set(manifest["roles"]) == {"postgres", roles.owner, roles.reader}  # type: ignore[arg-type]


def test_restore_with_roles_into_a_fresh_server_keeps_owners_and_grants(
    pg: PgCluster, dbname: str, roles: Roles, tmp_path: Path, backed_up: dict[str, str], fresh: Cluster,
) -> None:
    target = _as_pg(fresh)
    env = {**backed_up, "PGPASSWORD": CLUSTER_PASSWORD}
    url = fresh.url("restored")

    # Without --with-roles the fresh server lacks the owner, and the restore fails as it always did.
    plain = run_cli("restore", "app", "--from", "production", "--to-url", url, env=env)
    assert plain.returncode == 1, plain.stderr
    assert f'role "{roles.owner}" does not exist' in plain.stderr
    assert "restored" not in target.databases() and restore_leftovers(target) == set()
    assert _role(target, roles.owner) is None

    restored = run_cli("restore", "app", "--from", "production", "--to-url", url, "--with-roles", env=env)

    assert restored.returncode == 0, restored.stderr
    assert _ownership(target, "restored") == _ownership(pg, dbname)
    assert fingerprint(target, "restored") == fingerprint(pg, dbname)
    # Created with their attributes, settings and memberships; never a superuser, never a password.
    settings = ["work_mem=12MB", "search_path=app, public", "app.pattern=^\\d+$"]
    assert _role(pg, roles.owner)[4] == settings  # type: ignore[index]
    assert _role(target, roles.owner) == (False, True, 7, True, settings, [roles.group])
    assert _role(target, roles.group) == (False, False, -1, True, None, [])
    assert _role(target, roles.reader) == (False, False, -1, True, None, [roles.group])
    assert f"role {roles.reader} is SUPERUSER on the backed-up server; it is created NOSUPERUSER" in restored.stderr
    assert f"role {roles.group} is CREATEROLE on the backed-up server; it is created NOCREATEROLE" in restored.stderr
    # Never a member of a role with power over the server, though the source had it.
    assert f"role {roles.owner} is not made a member of pg_read_server_files" in restored.stderr
    assert CLUSTER_PASSWORD not in restored.stderr + restored.stdout


def test_existing_roles_are_left_as_they_are_and_createrole_is_needed(
    pg: PgCluster, dbname: str, roles: Roles, tmp_path: Path, backed_up: dict[str, str], fresh: Cluster,
) -> None:
    target = _as_pg(fresh)
    with target.connect() as conn:  # the reader exists here, unlike on the source: no membership, other settings
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN CONNECTION LIMIT 3").format(sql.Identifier(roles.reader)))
        conn.execute(sql.SQL("ALTER ROLE {} SET work_mem = '1MB'").format(sql.Identifier(roles.reader)))
        conn.execute("CREATE ROLE restorer LOGIN CREATEDB PASSWORD 'restorer-Pw-9'")
    before = _role(target, roles.reader)
    url = fresh.url("restored")

    refused = run_cli("restore", "app", "--from", "production", "--to-url", url.replace("postgres@", "restorer@"),
                      "--with-roles", env={**backed_up, "PGPASSWORD": "restorer-Pw-9"})
    assert refused.returncode == 2, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert "restorer may not create roles" in last and "ALTER ROLE restorer CREATEROLE" in last and roles.owner in last
    assert "restored" not in target.databases() and restore_leftovers(target) == set()
    assert _role(target, roles.owner) is None

    restored = run_cli("restore", "app", "--from", "production", "--to-url", url, "--with-roles",
                       env={**backed_up, "PGPASSWORD": CLUSTER_PASSWORD})

    assert restored.returncode == 0, restored.stderr
    # The source grants the group to the reader too; an existing role is never changed, memberships included.
    assert _role(target, roles.reader) == before == (False, False, 3, True, ["work_mem=1MB"], [])
    assert _role(target, roles.owner) is not None and _role(target, roles.owner)[5] == [roles.group]  # type: ignore[index]
    assert _ownership(target, "restored") == _ownership(pg, dbname)


def test_a_refused_role_leaves_no_half_made_roles(fresh: Cluster) -> None:
    """Roles are created in one transaction: one the server refuses undoes the others, so a rerun finds none half made."""
    from runner.errors import JobFailed
    from runner.pg.roles import create_roles
    from runner.pg.session import connect

    doc = parse_globals("CREATE ROLE ok_first;\nALTER ROLE ok_first WITH LOGIN;\nALTER ROLE ok_first SET work_mem TO '2MB';\n"
                        "CREATE ROLE bad_second;\nALTER ROLE bad_second WITH NOLOGIN VALID UNTIL 'not a time';\n"
                        "GRANT bad_second TO ok_first;\n")
    with connect(fresh.connection()) as admin, pytest.raises(JobFailed, match="cannot create role bad_second"):
        create_roles(admin, doc, ["ok_first", "bad_second"], "the fresh server")
    assert _role(_as_pg(fresh), "ok_first") is None and _role(_as_pg(fresh), "bad_second") is None


def test_a_tampered_globals_file_fails_verify_and_restore_before_anything_is_touched(
    pg: PgCluster, dbname: str, roles: Roles, tmp_path: Path, backed_up: dict[str, str], fresh: Cluster,
) -> None:
    path = _globals_file(tmp_path)
    text = path.read_text()
    assert "CONNECTION LIMIT 7" in text
    path.write_text(text.replace("CONNECTION LIMIT 7", "CONNECTION LIMIT 99"))  # a role the restore would create

    verified = run_cli("verify", "app", "production", env=backed_up)
    assert verified.returncode == 1, verified.stderr
    assert "globals checksum mismatch" in verified.stdout + verified.stderr

    target = _as_pg(fresh)
    restored = run_cli("restore", "app", "--from", "production", "--to-url", fresh.url("restored"), "--with-roles",
                       env={**backed_up, "PGPASSWORD": CLUSTER_PASSWORD})
    assert restored.returncode == 1, restored.stderr
    assert "globals checksum mismatch" in restored.stderr.strip().splitlines()[-1]
    assert "restored" not in target.databases() and restore_leftovers(target) == set()
    assert _role(target, roles.owner) is None and _role(target, roles.group) is None

    path.unlink()
    missing = run_cli("verify", "app", "production", env=backed_up)
    assert missing.returncode == 1 and "globals file" in missing.stdout + missing.stderr


def test_a_drill_of_a_backup_with_non_default_roles_passes(
    pg: PgCluster, dbname: str, roles: Roles, tmp_path: Path, backed_up: dict[str, str], work: Path,
) -> None:
    drilled = run_cli("drill", "app", "production", "--json", env={**backed_up, "DB_BACKUP_WORK_DIR": str(work)})

    assert drilled.returncode == 0, drilled.stderr
    record = json.loads(drilled.stdout)
    assert record["ok"] is True and record["restored_tables"] == {"app.items": 300, "app.plain": 0}
    assert list(work.iterdir()) == []


def test_pg_dumpall_refused_leaves_the_backup_good_and_says_what_is_missing(tmp_path: Path, work: Path) -> None:
    """A real refusal: the backed-up database's user may not read pg_auth_members, which pg_dumpall needs
    and pg_dump does not."""
    with throwaway_cluster(CLUSTER_PASSWORD, parent=work) as source:
        admin = _as_pg(source)
        with admin.connect() as conn:
            conn.execute("CREATE ROLE app_user LOGIN CREATEDB PASSWORD 'app-user-Pw-3'")
            conn.execute("CREATE DATABASE app OWNER app_user")
        with admin.connect("app") as conn:
            conn.execute("REVOKE SELECT ON pg_catalog.pg_auth_members FROM PUBLIC")
        user = _as_pg(source, "app_user", "app-user-Pw-3")
        with user.connect("app") as conn:
            conn.execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10)")
        targets = write_targets(tmp_path / "targets.yaml", user, {"production": "app"}, "file://./backups")
        env = {"TEST_PG_PASSWORD": "app-user-Pw-3", "DB_BACKUP_TARGETS": str(targets)}

        backup = run_cli("backup", "app", "production", env=env)

        assert backup.returncode == 0, backup.stderr
        manifest = _manifest(tmp_path)
        missing = str(manifest["globals_missing"])
        assert "pg_dumpall failed" in missing and "permission denied for table pg_auth_members" in missing
        assert "globals_sha256" not in manifest and not list(_folder(tmp_path).glob("*.globals.sql"))
        assert manifest["roles"] == ["app_user"]
        assert "pg_auth_members" in backup.stderr  # the warning
        assert run_cli("verify", "app", "production", env=env).returncode == 0
        listed = json.loads(run_cli("list", "app", "production", "--json", env=env).stdout)
        assert [e["status"] for e in listed] == ["complete"]


def test_a_manifest_without_the_globals_fields_is_written_as_before() -> None:
    old = Manifest(identifier="app", env="production", id="2026-01-02_03-04-05", key="app/production/2026-01-02_03-04-05.dump",
                   created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), duration_s=1.5, size_bytes=10, sha256="ab" * 32)
    text = old.to_json()
    assert not any(name in text for name in ("globals", "roles"))
    assert parse_manifest(text) == old and parse_manifest(text).to_json() == text  # type: ignore[union-attr]
    new = replace(old, globals_sha256="cd" * 32, globals_bytes=5, roles=("a",))
    assert parse_manifest(new.to_json()) == new


PG16_GLOBALS = r"""--
-- PostgreSQL database cluster dump
--

\restrict abc

SET default_transaction_read_only = off;

CREATE ROLE "a""b";
ALTER ROLE "a""b" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION BYPASSRLS CONNECTION LIMIT 5 VALID UNTIL '2030-01-01 00:00:00+00';
CREATE ROLE grp;
ALTER ROLE grp WITH NOSUPERUSER NOINHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE top;
ALTER ROLE top WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
COMMENT ON ROLE grp IS 'x; CREATE ROLE evil';
ALTER ROLE "a""b" SET search_path TO 'a', 'b c';
ALTER ROLE "a""b" SET "app.tenant" TO 'it''s';
ALTER ROLE "a""b" IN DATABASE app SET work_mem TO '1MB';
CREATE TABLESPACE fast OWNER grp LOCATION '/x';
GRANT ALL ON TABLESPACE fast TO grp;
GRANT grp TO "a""b" WITH ADMIN OPTION, INHERIT FALSE GRANTED BY postgres;
GRANT top TO grp WITH INHERIT TRUE GRANTED BY postgres;
GRANT pg_read_all_data TO "a""b" GRANTED BY postgres;

\unrestrict abc
"""


def test_pg_dumpalls_statements_are_read_one_by_one() -> None:
    doc = parse_globals(PG16_GLOBALS)
    assert sorted(doc.roles) == ['a"b', "grp", "top"]
    ab = doc.roles['a"b']
    assert ab.flags == ("NOSUPERUSER", "INHERIT", "NOCREATEROLE", "NOCREATEDB", "LOGIN", "NOREPLICATION", "BYPASSRLS")
    assert ab.connection_limit == 5 and ab.valid_until == "2030-01-01 00:00:00+00"
    assert [(s.name, s.values) for s in ab.settings] == [(("search_path",), ("a", "b c")), (("app.tenant",), ("it's",))]
    assert [(m.role, m.member, m.admin, m.options) for m in doc.memberships] == [
        ("grp", 'a"b', True, (("INHERIT", False),)), ("top", "grp", False, (("INHERIT", True),)),
        ("pg_read_all_data", 'a"b', False, ()),
    ]
    assert "evil" not in doc.roles
    # The wanted role, then the roles it is a member of, transitively; existing and reserved ones are not created.
    assert roles_to_create(doc, ['a"b'], set()) == ['a"b', "grp", "top"]
    assert roles_to_create(doc, ['a"b'], {"grp"}) == ['a"b']
    assert roles_to_create(doc, None, {"top"}) == ['a"b', "grp"]


def test_without_tablespaces_the_roles_are_still_stored(
    pg: PgCluster, dbname: str, roles: Roles, tmp_path: Path, pg_env: dict[str, str], fresh: Cluster,
) -> None:
    """A STUB pg_dumpall first on PATH refuses --globals-only (as a server hiding pg_tablespace would) and hands
    --roles-only to the real one."""
    real = shutil.which("pg_dumpall")
    assert real is not None
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "pg_dumpall").write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do [ "$arg" = --globals-only ] && { echo "pg_dumpall: error: query failed: ERROR:  '
        'permission denied for table pg_tablespace" >&2; exit 1; }; done\n'
        f'exec {real} "$@"\n')
    (stub / "pg_dumpall").chmod(0o755)
    targets = write_targets(tmp_path / "targets.yaml", pg, {"production": dbname}, "file://./backups")
    env = {**pg_env, "DB_BACKUP_TARGETS": str(targets), "PATH": f"{stub}:{os.environ['PATH']}"}

    backup = run_cli("backup", "app", "production", env=env)

    assert backup.returncode == 0, backup.stderr
    manifest = _manifest(tmp_path)
    assert str(manifest["globals_missing"]).startswith("tablespaces not captured: pg_dumpall --globals-only failed")
    assert "permission denied for table pg_tablespace" in str(manifest["globals_missing"])
    assert manifest["globals_sha256"] == hashlib.sha256(_globals_file(tmp_path).read_bytes()).hexdigest()
    restored = run_cli("restore", "app", "--from", "production", "--to-url", fresh.url("restored"), "--with-roles",
                       env={**env, "PGPASSWORD": CLUSTER_PASSWORD})
    assert restored.returncode == 0, restored.stderr
    assert _ownership(_as_pg(fresh), "restored") == _ownership(pg, dbname)


def test_with_roles_reaches_the_ecs_tasks_command(tmp_path: Path) -> None:
    registry = folder_registry(tmp_path)
    job = RemoteJob(action="restore", target=registry.get("app", "beta"), source=registry.get("app", "production"),
                    backup="2026-01-02_03-04-05", with_roles=True)
    assert task_argv(job, "req-1") == ("restore", "app", "--from", "production", "--to", "beta", "--backup",
                                       "2026-01-02_03-04-05", "--with-roles", "--executor", "local")
    assert "--with-roles" not in task_argv(replace(job, with_roles=False), "req-1")


def test_a_role_allowed_two_connections_backs_up_with_its_roles(pg: PgCluster, tmp_path: Path) -> None:
    """The backup's lock holds one session throughout; pg_dump, then the roles query and pg_dumpall, take
    the other one by one. A third at once would fail the backup, or lose its roles."""
    role, password = f"g_lim_{uuid.uuid4().hex[:6]}", "lim-Pw-2"
    database = f"lim_{uuid.uuid4().hex[:6]}"
    with pg.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 2 PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role)))
    try:
        with pg.connect(database) as conn:
            conn.execute("CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 1000) g")
            conn.execute(sql.SQL("ALTER TABLE items OWNER TO {}").format(sql.Identifier(role)))
        limited = PgCluster(pg.host, pg.port, role, password, pg.bindir)
        targets = write_targets(tmp_path / "targets.yaml", limited, {"production": database}, "file://./backups")

        backup = run_cli("backup", "app", "production", env={"TEST_PG_PASSWORD": password, "DB_BACKUP_TARGETS": str(targets)})

        assert backup.returncode == 0, backup.stderr
        manifest = _manifest(tmp_path)
        assert "globals_missing" not in manifest, manifest
        assert f"CREATE ROLE {role};" in _globals_file(tmp_path).read_text()
        assert manifest["roles"] == [role]
    finally:
        pg.drop(database)
        with pg.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
