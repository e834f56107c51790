"""Administration from the maintenance database: names, and creating and dropping databases."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..catalog import ID_RE
from ..credentials import Connection
from ..errors import JobFailed, RestoreRefused
from .dbstate import DatabaseInfo
from .session import AdminConnection, pg_message

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 63
RESTORE_INFIX = "__restore_"


def admin_connection(conn: Connection) -> Connection:
    """Administrative statements run from the maintenance database, never from the target."""
    return conn.with_db("template1" if conn.dbname == "postgres" else "postgres")


def derived_name(base: str, suffix: str) -> str:
    """`base + suffix`, shortened deterministically (prefix + hash) to fit 63 bytes."""
    name = base + suffix
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    room = MAX_NAME_BYTES - len(suffix.encode()) - len(digest) - 1
    prefix = base.encode()[:room].decode("utf-8", "ignore")
    return f"{prefix}_{digest}{suffix}"


def fresh_name(target: str, backup_id: str) -> str:
    """The temporary database a restore of `backup_id` into `target` builds its data in."""
    return derived_name(target, f"{RESTORE_INFIX}{backup_id}")


def drop_database(admin: AdminConnection, name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass(frozen=True)
class DatabaseShape:
    """The encoding and locale a database was created with, as the archive's CREATE DATABASE says."""

    encoding: str
    collate: str
    ctype: str


_SETTING = re.compile(r"\b(ENCODING|LOCALE|LC_COLLATE|LC_CTYPE)\s*=\s*'((?:[^']|'')*)'", re.I)


def shape_of(definition: str | None) -> DatabaseShape | None:
    """The shape in pg_dump's `CREATE DATABASE ... ENCODING = 'LATIN1' LOCALE = 'C'`; None when it does not say."""
    found = {key.upper(): value.replace("''", "'") for key, value in _SETTING.findall(definition or "")}
    collate, ctype = found.get("LC_COLLATE", found.get("LOCALE")), found.get("LC_CTYPE", found.get("LOCALE"))
    if "ENCODING" not in found or collate is None or ctype is None:
        return None
    return DatabaseShape(found["ENCODING"], collate, ctype)


def create_database(admin: AdminConnection, name: str, like: DatabaseInfo | None, shape: DatabaseShape | None = None) -> None:
    """A fresh database like the target (or, for a new target, like the backed-up database, as pg_restore --create)."""
    query = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    if like is not None:
        query = sql.SQL("{} ENCODING {} LC_COLLATE {} LC_CTYPE {} OWNER {}").format(
            query, sql.Literal(like.encoding), sql.Literal(like.collate), sql.Literal(like.ctype), sql.Identifier(like.owner)
        )
    elif shape is not None:
        query = sql.SQL("{} ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            query, sql.Literal(shape.encoding), sql.Literal(shape.collate), sql.Literal(shape.ctype)
        )
    try:
        admin.execute(query)
    except psycopg.Error as exc:
        if like is None and shape is not None and _locale_problem(exc):
            # A laptop often lacks the server's locale: the data still loads, in the server's defaults.
            log.warning("this server cannot create %s with the backed-up database's %s, collation %s and ctype %s (%s); "
                        "creating it with the server's defaults", name, shape.encoding, shape.collate, shape.ctype, pg_message(exc))
            create_database(admin, name, None)
            return
        raise JobFailed(f"cannot create database {name}: {pg_message(exc)}") from exc


def _locale_problem(exc: psycopg.Error) -> bool:
    # invalid_parameter_value: an unknown locale name, or an encoding the locale cannot hold.
    return isinstance(exc, (psycopg.errors.InvalidParameterValue, psycopg.errors.InvalidName)) or "locale" in str(exc).lower()


def restore_leftovers(admin: AdminConnection, target: str) -> list[str]:
    """Temporary databases of earlier restores into `target` (any backup id), by their exact names."""
    found = []
    for (name,) in admin.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", ("%\\_\\_restore\\_%",)).fetchall():
        text = str(name)
        backup_id = text[text.rfind(RESTORE_INFIX) + len(RESTORE_INFIX):]
        # Only names db-backup makes: a database of the user's called `app__restore_notes` stays.
        if ID_RE.match(backup_id) and text == fresh_name(target, backup_id):
            found.append(text)
    return found


def check_can_create(admin: AdminConnection, conn: Connection) -> None:
    """The restore needs CREATE DATABASE: say so before downloading anything."""
    row = admin.execute("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()
    if not (row and row[0]):
        raise RestoreRefused(
            f"{conn.user} may not create databases on {conn.describe()}, and a restore builds the new data in a "
            f"fresh database; grant it (ALTER ROLE {conn.user} CREATEDB) or restore as a user who may"
        )


def try_drop_database(admin: AdminConnection, name: str) -> str | None:
    """Drop `name`; the server's reason if that failed, for callers whose own outcome matters more."""
    try:
        drop_database(admin, name)
    except psycopg.Error as exc:
        return pg_message(exc)
    return None


def database_exists(admin: AdminConnection, name: str) -> bool | None:
    """None when the server cannot say (e.g. the connection is gone)."""
    try:
        return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    except psycopg.Error:
        return None
