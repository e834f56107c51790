"""Roles from a backup's globals file: read pg_dumpall's statements, and create the missing roles on a server.

Only what a restore needs is taken: CREATE ROLE, ALTER ROLE ... WITH, ALTER ROLE ... SET and
GRANT role TO member. The rest (tablespaces, comments, psql commands) is left out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import psycopg
from psycopg import sql

from ..errors import JobFailed, RestoreRefused
from ..words import plural
from .session import AdminConnection, pg_message

log = logging.getLogger(__name__)

# Attributes that would give a restored role power over the whole server (CREATEROLE: before
# PostgreSQL 16, nearly a superuser's): never copied.
DROPPED = ("SUPERUSER", "REPLICATION", "BYPASSRLS", "CREATEROLE")
# Existing roles a created role never becomes a member of: through them it could act as the server's
# owner (read or write its files, run programs), whatever its own attributes say.
POWERFUL = ("pg_execute_server_program", "pg_write_server_files", "pg_read_server_files", "pg_write_all_data",
            "pg_read_all_data", "rds_superuser")
_FLAGS = frozenset({"INHERIT", "NOINHERIT", "CREATEROLE", "NOCREATEROLE", "CREATEDB", "NOCREATEDB", "LOGIN", "NOLOGIN",
                    "NOSUPERUSER", "NOREPLICATION", "NOBYPASSRLS", *DROPPED})

_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<comment>--[^\n]*)
      | (?P<meta>\\[^\n]*)
      | (?P<ident>"(?:[^"]|"")*")
      | (?P<estring>[Ee]'(?:[^'\\]|\\.|'')*')
      | (?P<string>'(?:[^']|'')*')
      | (?P<semi>;)
      | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<other>.)""",
    re.X | re.S,
)


_ESCAPE = re.compile(r"\\.|''")


@dataclass(frozen=True)
class Token:
    kind: str  # word, ident, string, number, other
    value: str  # an identifier's name unquoted, a string's value unescaped

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.value.upper() in words

    @property
    def name(self) -> str | None:
        """The identifier this token names (a bare word folds to lower case), else None."""
        if self.kind == "ident":
            return self.value
        return self.value.lower() if self.kind == "word" else None


@dataclass(frozen=True)
class RoleSetting:
    name: tuple[str, ...]  # `search_path`, or `app`, `tenant` for a custom setting app.tenant
    values: tuple[str, ...]


@dataclass(frozen=True)
class Membership:
    role: str
    member: str
    admin: bool = False
    options: tuple[tuple[str, bool], ...] = ()  # PostgreSQL 16+: INHERIT and SET


@dataclass(frozen=True)
class RoleSpec:
    name: str
    flags: tuple[str, ...] = ()
    connection_limit: int | None = None
    valid_until: str | None = None
    settings: tuple[RoleSetting, ...] = ()


@dataclass(frozen=True)
class GlobalsDoc:
    roles: dict[str, RoleSpec] = field(default_factory=dict)
    memberships: tuple[Membership, ...] = ()

    def member_of(self, member: str) -> list[str]:
        return [m.role for m in self.memberships if m.member == member]


def statements(text: str) -> list[list[Token]]:
    """The SQL statements of a script, as tokens; comments and psql meta-commands dropped."""
    found: list[list[Token]] = []
    current: list[Token] = []
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup or "other"
        raw = match.group()
        if kind in ("space", "comment", "meta"):
            continue
        if kind == "semi":
            if current:
                found.append(current)
            current = []
            continue
        if kind == "ident":
            current.append(Token(kind, raw[1:-1].replace('""', '"')))
        elif kind == "string":
            current.append(Token(kind, raw[1:-1].replace("''", "'")))
        elif kind == "estring":  # E'...': pg_dumpall writes a value with a backslash this way, doubling it
            current.append(Token("string", _ESCAPE.sub(lambda m: m.group()[1], raw[2:-1])))
        else:
            current.append(Token(kind, raw))
    if current:
        found.append(current)
    return found


def parse_globals(text: str) -> GlobalsDoc:
    """Roles, their attributes and settings, and memberships, from pg_dumpall's output."""
    roles: dict[str, RoleSpec] = {}
    memberships: list[Membership] = []
    for tokens in statements(text):
        if not _apply(tokens, roles, memberships):
            log.debug("globals: left out %s", " ".join(t.value for t in tokens[:6]))
    return GlobalsDoc(roles, tuple(memberships))


def _apply(tokens: list[Token], roles: dict[str, RoleSpec], memberships: list[Membership]) -> bool:
    """Take one statement into `roles` / `memberships`; False when it is not one a restore uses."""
    if len(tokens) >= 3 and tokens[0].is_word("CREATE") and tokens[1].is_word("ROLE") and tokens[2].name:
        roles.setdefault(tokens[2].name, RoleSpec(tokens[2].name))
        return len(tokens) == 3
    if len(tokens) >= 4 and tokens[0].is_word("ALTER") and tokens[1].is_word("ROLE") and tokens[2].name:
        name = tokens[2].name
        role = roles.get(name, RoleSpec(name))
        if tokens[3].is_word("WITH"):
            roles[name] = _attributes(tokens[4:], role)
            return True
        if tokens[3].is_word("SET") and (setting := _setting(tokens[4:])) is not None:
            roles[name] = replace(role, settings=(*role.settings, setting))
            return True
        return False
    if len(tokens) >= 4 and tokens[0].is_word("GRANT") and tokens[2].is_word("TO") and tokens[1].name and tokens[3].name:
        memberships.append(_membership(tokens[1].name, tokens[3].name, tokens[4:]))
        return True
    return False


def _attributes(tokens: list[Token], role: RoleSpec) -> RoleSpec:
    flags: list[str] = []
    limit, until = role.connection_limit, role.valid_until
    i = 0
    while i < len(tokens):
        token = tokens[i]
        word = token.value.upper() if token.kind == "word" else ""
        if word in _FLAGS:
            flags.append(word)
        elif word == "CONNECTION" and i + 2 < len(tokens) and tokens[i + 2].kind == "number":
            limit = int(tokens[i + 2].value)
            i += 2
        elif word == "VALID" and i + 2 < len(tokens) and tokens[i + 2].kind == "string":
            until = tokens[i + 2].value
            i += 2
        elif word == "PASSWORD":
            i += 1  # never taken: a restore creates roles without passwords
        else:
            log.debug("globals: role attribute %s left out", token.value)
        i += 1
    return replace(role, flags=tuple(flags), connection_limit=limit, valid_until=until)


def _setting(tokens: list[Token]) -> RoleSetting | None:
    """`name TO 'v1', 'v2'` (or `=`); None for anything else (e.g. FROM CURRENT)."""
    parts: list[str] = []
    i = 0
    while i < len(tokens) and not (tokens[i].is_word("TO") or tokens[i].value == "="):
        token = tokens[i]
        if token.kind in ("word", "ident") and token.name:
            parts.append(token.name)
        elif token.value != ".":
            return None
        i += 1
    values = [t.value for t in tokens[i + 1:] if t.kind in ("string", "word", "number", "ident")]
    if not parts or i >= len(tokens) or not values:
        return None
    return RoleSetting(tuple(parts), tuple(values))


def _membership(role: str, member: str, rest: list[Token]) -> Membership:
    admin = False
    options: list[tuple[str, bool]] = []
    words = [t.value.upper() for t in rest if t.kind == "word"]
    if "GRANTED" in words:
        words = words[:words.index("GRANTED")]  # the grantor: a restore grants as itself
    for i, word in enumerate(words):
        after = words[i + 1] if i + 1 < len(words) else ""
        if word == "ADMIN":
            admin = after in ("OPTION", "TRUE")
        elif word in ("INHERIT", "SET") and after in ("TRUE", "FALSE"):
            options.append((word, after == "TRUE"))
    return Membership(role, member, admin, tuple(options))


# --- creating the missing roles on the target server -------------------------------------------------


def roles_to_create(doc: GlobalsDoc, wanted: Iterable[str] | None, existing: set[str]) -> list[str]:
    """The wanted roles missing on the server, and (transitively) the roles they are members of; in order."""
    queue = list(wanted) if wanted is not None else sorted(doc.roles)
    chosen: list[str] = []
    seen: set[str] = set()
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        if name in existing:
            continue  # an existing role is never changed, so its memberships are not needed
        if name.startswith("pg_"):
            log.warning("role %s is reserved for PostgreSQL's own roles and is missing on the server; it is not created", name)
            continue
        if name not in doc.roles:
            log.warning("role %s is used by the backup but not in its globals file; it is not created", name)
            continue
        chosen.append(name)
        queue.extend(doc.member_of(name))
    return chosen


def missing_roles(admin: AdminConnection, doc: GlobalsDoc, wanted: Iterable[str] | None, where: str) -> list[str]:
    """The roles a restore would create on this server; refused at once if this user may not create roles."""
    existing = {str(row[0]) for row in admin.execute("SELECT rolname FROM pg_catalog.pg_roles").fetchall()}
    missing = roles_to_create(doc, wanted, existing)
    if not missing:
        log.info("--with-roles: every role the backup needs exists on %s; none is created", where)
        return []
    row = admin.execute("SELECT rolname, rolsuper OR rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = current_user").fetchone()
    if not (row and row[1]):
        user = str(row[0]) if row else "this user"
        raise RestoreRefused(
            f"{user} may not create roles on {where}, and --with-roles would create {plural(len(missing), 'missing role')} "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); grant it (ALTER ROLE {user} CREATEROLE), "
            "create those roles by hand, or restore without --with-roles"
        )
    return missing


def create_roles(admin: AdminConnection, doc: GlobalsDoc, missing: list[str], where: str) -> list[str]:
    """Create `missing` (never SUPERUSER, REPLICATION, BYPASSRLS, CREATEROLE, never a password), then their settings
    and the memberships whose member is one of them; existing roles are never changed. The names created.

    One transaction: stopped or failed midway, no role is left without its settings and memberships
    (the next run would take it for an existing role and never finish it).
    """
    created: list[str] = []
    with admin.transaction():
        for name in missing:
            if _create(admin, doc.roles[name]):
                created.append(name)
        for name in created:
            for setting in doc.roles[name].settings:
                _set(admin, name, setting)
        mine = set(created)
        new_server = admin.info.server_version >= 160000
        for membership in doc.memberships:
            if membership.member in mine:
                _grant(admin, membership, new_server, mine)
    if created:
        log.info("--with-roles: created %s on %s: %s", plural(len(created), "role"), where, ", ".join(created))
    return created


def _create(admin: AdminConnection, spec: RoleSpec) -> bool:
    """CREATE ROLE with the attributes a restore may copy; False if it appeared meanwhile."""
    parts: list[sql.Composable] = []
    for flag in spec.flags:
        if flag in DROPPED:
            log.warning("role %s is %s on the backed-up server; it is created NO%s", spec.name, flag, flag)
            flag = f"NO{flag}"
        parts.append(sql.SQL(flag))  # one of the fixed keywords in _FLAGS, never text from the file
    if spec.connection_limit is not None:
        parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(spec.connection_limit)))
    if spec.valid_until is not None:
        parts.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(spec.valid_until)))
    query = sql.SQL("CREATE ROLE {}").format(sql.Identifier(spec.name))
    if parts:
        query = sql.SQL("{} WITH {}").format(query, sql.SQL(" ").join(parts))
    try:
        with admin.transaction():  # a savepoint: the one statement is undone, the others stand
            admin.execute(query)
    except psycopg.errors.DuplicateObject:
        log.info("role %s appeared on the server meanwhile; it is left as it is", spec.name)
        return False
    except psycopg.Error as exc:
        raise JobFailed(f"cannot create role {spec.name}: {pg_message(exc)}; no role was created and no database touched") from exc
    return True


def _set(admin: AdminConnection, role: str, setting: RoleSetting) -> None:
    query = sql.SQL("ALTER ROLE {} SET {} TO {}").format(
        sql.Identifier(role), sql.Identifier(*setting.name), sql.SQL(", ").join(sql.Literal(v) for v in setting.values))
    try:
        with admin.transaction():
            admin.execute(query)
    except psycopg.Error as exc:
        log.warning("role %s was created without its setting %s: %s", role, ".".join(setting.name), pg_message(exc))


def _grant(admin: AdminConnection, membership: Membership, new_server: bool, created: set[str]) -> None:
    if membership.role not in created and _powerful(admin, membership.role):
        log.warning("role %s is not made a member of %s: on this server that role has power over the whole server "
                    "(superuser, replication, bypassrls or server files); grant it by hand if it is meant", membership.member,
                    membership.role)
        return
    options: list[sql.Composable] = [sql.SQL("ADMIN OPTION")] if membership.admin else []
    if new_server:
        options += [sql.SQL(f"{word} {'TRUE' if value else 'FALSE'}") for word, value in membership.options]
    query = sql.SQL("GRANT {} TO {}").format(sql.Identifier(membership.role), sql.Identifier(membership.member))
    if options:
        query = sql.SQL("{} WITH {}").format(query, sql.SQL(", ").join(options))
    try:
        with admin.transaction():
            admin.execute(query)
    except psycopg.Error as exc:
        log.warning("could not grant role %s to %s: %s", membership.role, membership.member, pg_message(exc))


def _powerful(admin: AdminConnection, role: str) -> bool:
    row = admin.execute(
        "SELECT rolsuper OR rolreplication OR rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = %s", (role,),
    ).fetchone()
    return role in POWERFUL or bool(row and row[0])
