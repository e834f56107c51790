"""A database's own state in the shared catalogs: read it, and copy it onto the restored database."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..errors import JobFailed
from .session import AdminConnection, pg_message

log = logging.getLogger(__name__)

# Variables pg_dump also treats as lists: each element must be quoted on its own.
LIST_SETTINGS = frozenset(
    {"search_path", "temp_tablespaces", "session_preload_libraries", "shared_preload_libraries",
     "local_preload_libraries", "unix_socket_directories"}
)


@dataclass(frozen=True)
class Grant:
    """One entry of a database's ACL, as aclexplode() lists it; grantee None is PUBLIC."""

    grantor: str
    grantee: str | None
    privilege: str
    grantable: bool


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    owner: str
    encoding: str
    collate: str
    ctype: str
    connlimit: int
    settings: tuple[str, ...]
    # None is a NULL datacl (the built-in defaults, which a new database has too); () is "all revoked".
    acl: tuple[Grant, ...] | None = None
    role_settings: tuple[tuple[str, tuple[str, ...]], ...] = ()
    comment: str | None = None


def database_info(admin: AdminConnection, name: str) -> DatabaseInfo | None:
    row = admin.execute(
        """SELECT d.datname, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate,
                  d.datctype, d.datconnlimit,
                  coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                            WHERE s.setdatabase = d.oid AND s.setrole = 0), '{}'),
                  d.datacl IS NULL, shobj_description(d.oid, 'pg_database')
           FROM pg_database d WHERE d.datname = %s""",
        (name,),
    ).fetchone()
    if row is None:
        return None
    grants = admin.execute(
        """SELECT pg_get_userbyid(a.grantor), CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
                  a.privilege_type, a.is_grantable
           FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s
           ORDER BY 1, 2 NULLS FIRST, 3""",
        (name,),
    ).fetchall()
    role_rows = admin.execute(
        """SELECT r.rolname, s.setconfig FROM pg_db_role_setting s
           JOIN pg_database d ON d.oid = s.setdatabase JOIN pg_roles r ON r.oid = s.setrole
           WHERE d.datname = %s AND s.setrole <> 0 ORDER BY 1""",
        (name,),
    ).fetchall()
    acl = None if row[7] else tuple(
        Grant(str(g[0]), None if g[1] is None else str(g[1]), str(g[2]), bool(g[3])) for g in grants
    )
    return DatabaseInfo(
        str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), int(str(row[5])), tuple(row[6]),  # type: ignore[arg-type]
        acl=acl,
        role_settings=tuple((str(r[0]), tuple(r[1] or ())) for r in role_rows),  # type: ignore[arg-type]
        comment=None if row[8] is None else str(row[8]),
    )


_BLANKS = " \t\n\r\f\v"


def split_guc_list(value: str) -> list[str]:
    """The elements of a list setting as the server stored it: `"a,b", public` is ["a,b", "public"].

    For list settings the server keeps each element quoted like an identifier where needed and joins
    them with ", " (pg_dump's SplitGUCList reads them back the same way).
    """
    items: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in _BLANKS:
            i += 1
        if i < n and value[i] == '"':
            parts: list[str] = []
            i += 1
            while True:
                close = value.find('"', i)
                if close < 0:
                    raise ValueError(f"unterminated quote in {value!r}")
                parts.append(value[i:close])
                i = close + 1
                if i < n and value[i] == '"':  # a doubled quote is one quote character
                    parts.append('"')
                    i += 1
                    continue
                break
            items.append("".join(parts))
        else:
            start = i
            while i < n and value[i] != "," and value[i] not in _BLANKS:
                i += 1
            if i == start:
                raise ValueError(f"empty element in {value!r}")
            items.append(value[start:i])
        while i < n and value[i] in _BLANKS:
            i += 1
        if i == n:
            return items
        if value[i] != ",":
            raise ValueError(f"unexpected {value[i]!r} in {value!r}")
        i += 1


def _setting_statement(alter: sql.Composable, setting: str) -> sql.Composed:
    """`alter SET name TO value` that stores exactly the `name=value` entry it was read from."""
    key, _, value = setting.partition("=")
    rendered: sql.Composable
    if key in LIST_SETTINGS:
        # A single literal would become one element: "a,b", public must stay two, not three.
        try:
            items = split_guc_list(value)
        except ValueError as exc:
            raise JobFailed(f"cannot read the setting {key} = {value}: {exc}; the target is unchanged") from exc
        rendered = sql.SQL(", ").join(sql.Literal(item) for item in items)
    else:
        rendered = sql.Literal(value)
    return sql.SQL("{} SET {} TO {}").format(alter, sql.Identifier(key), rendered)


_DATABASE_PRIVILEGES = frozenset({"CREATE", "CONNECT", "TEMPORARY"})


def _grant(admin: AdminConnection, name: str, grant: Grant, owner: str) -> None:
    if grant.privilege not in _DATABASE_PRIVILEGES:
        raise JobFailed(f"cannot copy the privilege {grant.privilege} on database {name}: db-backup does not know it")
    statement = sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
        sql.SQL(grant.privilege), sql.Identifier(name),
        sql.SQL("PUBLIC") if grant.grantee is None else sql.Identifier(grant.grantee),
        sql.SQL(" WITH GRANT OPTION") if grant.grantable else sql.SQL(""),
    )
    if grant.grantor == owner:
        # A superuser's or the owner's (or an owner member's) GRANT is recorded as the owner's.
        admin.execute(statement)
        return
    # The server records the role that grants: re-grant as the original grantor, as pg_dump does.
    try:
        admin.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(grant.grantor)))
    except psycopg.Error as exc:
        # The privilege matters, not who is on record as granting it: refusing the restore for that would be worse.
        log.warning("cannot act as %s, who granted %s on %s to %s (%s); granting it as %s instead", grant.grantor,
                    grant.privilege, name, grant.grantee or "PUBLIC", pg_message(exc), admin.info.user)
        admin.execute(statement)
        return
    try:
        admin.execute(statement)
    finally:
        admin.execute("RESET ROLE")


def _apply_acl(admin: AdminConnection, name: str, like: DatabaseInfo) -> None:
    if like.acl is None:
        return  # NULL: the built-in defaults, which the fresh database has as well
    admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC, {}").format(sql.Identifier(name), sql.Identifier(like.owner)))
    # A grantor needs the grant option first; the owner holds every one implicitly.
    holds = {(like.owner, p) for p in _DATABASE_PRIVILEGES}
    pending = list(like.acl)
    while pending:
        ready = [g for g in pending if (g.grantor, g.privilege) in holds] or pending[:1]
        for grant in ready:
            _grant(admin, name, grant, like.owner)
            if grant.grantable and grant.grantee is not None:
                holds.add((grant.grantee, grant.privilege))
            pending.remove(grant)
    copied = database_info(admin, name)
    if copied is None or sorted(copied.acl or (), key=repr) != sorted(like.acl, key=repr):
        log.warning("the access privileges of %s differ slightly on the restored database (who granted what); "
                    "check them with \\l %s", like.name, like.name)


def apply_settings(admin: AdminConnection, name: str, like: DatabaseInfo) -> None:
    """Carry the target's database-level state over to the restored database: it lives in shared
    catalogs keyed by the database, so it would stay behind with the old data.

    Connection limit, settings (for all roles and per role), access privileges and comment.
    """
    ident = sql.Identifier(name)
    try:
        # -2 marks a database an interrupted DROP left invalid; the restored one is valid, unlimited.
        limit = -1 if like.connlimit == -2 else like.connlimit
        admin.execute(sql.SQL("ALTER DATABASE {} WITH CONNECTION LIMIT {}").format(ident, sql.Literal(limit)))
        for setting in like.settings:
            admin.execute(_setting_statement(sql.SQL("ALTER DATABASE {}").format(ident), setting))
        for role, settings in like.role_settings:
            alter_role = sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), ident)
            for setting in settings:
                admin.execute(_setting_statement(alter_role, setting))
        _apply_acl(admin, name, like)
        if like.comment is not None:
            admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident, sql.Literal(like.comment)))
    except psycopg.Error as exc:
        raise JobFailed(
            f"cannot copy the settings, privileges or comment of {like.name} to the restored database: "
            f"{pg_message(exc)}; the target is unchanged"
        ) from exc
