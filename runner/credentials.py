"""Database connections: resolve targets' references (ssm:, env:) and parse --to-url."""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import unquote

import psycopg
from botocore.exceptions import BotoCoreError, ClientError
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from .aws import infra_error
from .errors import BadInput

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

    from .targets import DatabaseRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Connection:
    """Where and how to connect; the password never appears in repr, logs or argv."""

    host: str
    port: int
    dbname: str
    user: str
    password: str | None = field(default=None, repr=False)
    sslmode: str | None = None

    def with_db(self, dbname: str) -> Connection:
        return replace(self, dbname=dbname)

    def describe(self) -> str:
        # No host means libpq's default Unix socket directory.
        host = self.host or "local socket"
        if ":" in host and not host.startswith("/"):
            host = f"[{host}]"  # IPv6
        return f"{self.user}@{host}:{self.port}/{self.dbname}"

    def psycopg_kwargs(self) -> dict[str, str | int]:
        kwargs: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "connect_timeout": 15,
            "application_name": "db-backup",
            # A restore's admin session and a backup's lock session sit idle for the whole job: a
            # peer that vanished is noticed in about a minute, not after the kernel's two hours.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
        if self.password is not None:
            kwargs["password"] = self.password
        if self.sslmode:
            kwargs["sslmode"] = self.sslmode
        return kwargs


# What a --to-url may say: every connection of a restore (psycopg's, pg_restore's) gets these.
_URL_HONOURED = frozenset({"host", "port", "dbname", "user", "password", "sslmode"})
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Environment variables db-backup sets itself for pg_restore: exporting them would not reach it.
_SET_BY_DB_BACKUP = frozenset({"PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGAPPNAME",
                               "PGCONNECT_TIMEOUT", "PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE"})
_URL_FIX = {
    "service": "spell out host, port, user and the database in the URL instead",
    "hostaddr": "put the address in the URL's host instead",
    "passfile": "remove it and put the password in the URL or in PGPASSWORD",
    "application_name": "remove it (db-backup names its own connections)",
    "fallback_application_name": "remove it (db-backup names its own connections)",
    "connect_timeout": "remove it (db-backup sets its own timeout)",
}


def _libpq_options() -> dict[str, tuple[str | None, str | None, bool]]:
    """libpq's parameters: keyword -> (environment variable, default it would use now, secret?).

    PQconndefaults applies the environment (PGHOST, PGPORT, PGUSER, ...) the way every libpq
    connection does, so a URL that leaves something out resolves as psql would resolve it.
    """
    found: dict[str, tuple[str | None, str | None, bool]] = {}
    for option in pq.Conninfo.get_defaults():
        found[option.keyword.decode()] = (
            option.envvar.decode() if option.envvar else None,
            option.val.decode() if option.val is not None else None,
            option.dispchar == b"*",
        )
    return found


def _url_fix(keyword: str, envvar: str | None) -> str:
    if keyword in _URL_FIX:
        return _URL_FIX[keyword]
    if envvar and envvar not in _SET_BY_DB_BACKUP:
        # Exported, it reaches psycopg and pg_restore alike: db-backup's children inherit it.
        return f"remove it from the URL and export {envvar}=<its value> instead"
    return "remove it (db-backup cannot pass it on to pg_restore)"


def _may_hold_secret(url: str, options: Mapping[str, tuple[str | None, str | None, bool]]) -> bool:
    """Whether any part of the URL could be a password or another secret, however malformed the URL is.

    Deliberately crude: a URL that does not parse cannot be trusted to say where its password ends.
    """
    # libpq ends the user and password at an '@' (a '?' or ',' may sit inside the password): any ':' before the last one.
    if "@" in url and ":" in url.split("://", 1)[-1].rsplit("@", 1)[0]:
        return True
    lowered = unquote(url).lower()
    return any(f"{keyword}=" in lowered for keyword, (_envvar, _value, secret) in options.items() if secret)


_MISPLACED = ("--to-url has a '/' or '@' inside its user name or password, or an '@' in its host or path; "
              "percent-encode them as %2F and %40")


def _misplaced_userinfo(url: str) -> bool:
    """An `@` that libpq would read as part of the host or path: a password with an unencoded `/` or `@`."""
    rest = url.split("://", 1)[1]
    # libpq ends the user and password at the first '@', unless a '/' comes first: then there are none.
    end = next((i for i, char in enumerate(rest) if char in "@/"), len(rest))
    after = rest[end + 1 :] if end < len(rest) and rest[end] == "@" else rest
    return "@" in after.split("?", 1)[0]


def parse_url(url: str) -> Connection:
    """Parse a postgresql:// URL as libpq does; BadInput, naming the parameter, for anything not honoured.

    A restore into another server than the one named is worse than no restore, so every part of
    the URL is either used by every connection of the restore or refused before anything runs.
    """
    if not url.startswith(("postgresql://", "postgres://")):
        raise BadInput("--to-url must look like postgresql://USER@HOST:PORT/DATABASE")
    options = _libpq_options()
    secret = _may_hold_secret(url, options)
    if _misplaced_userinfo(url):
        # libpq would read the rest of such a password as host, port or database name, and show it.
        raise BadInput(_MISPLACED)
    parsed: dict[str, str] | None = None
    problem = ""
    try:
        # libpq's own parser: userinfo, [IPv6], percent-encoded socket paths, ?host=/?port= and the rest.
        parsed = {k: str(v) for k, v in conninfo_to_dict(url).items()}
    except psycopg.Error as exc:
        # libpq quotes the offending token, which may be part of a password: then say less.
        problem = "" if secret else f" ({str(exc).strip()})"
    if parsed is None:
        # Raised outside the except block: a chained libpq error would carry the whole URL,
        # password included, into a --verbose traceback.
        raise BadInput(
            f"--to-url is not a valid PostgreSQL URL{problem}; write it as postgresql://USER@HOST:PORT/DATABASE?PARAM=VALUE "
            "with special characters percent-encoded"
        ) from None
    params = parsed
    if secret and (any("@" in params.get(name, "") for name in ("host", "port", "dbname")) or "/" in params.get("user", "")):
        # A password holding '?' as well as '@' or '/' can still end up there, through the query.
        raise BadInput(_MISPLACED)
    refused = sorted(set(params) - _URL_HONOURED)
    if refused:
        fixes = {name: _url_fix(name, options[name][0] if name in options else None) for name in refused}
        if len(refused) == 1:
            raise BadInput(f"--to-url parameter {refused[0]} is not passed on by db-backup; {fixes[refused[0]]}")
        raise BadInput(f"--to-url parameters {', '.join(refused)} are not passed on by db-backup; "
                       + "; ".join(f"{name}: {fix}" for name, fix in fixes.items()))
    dbname = params.get("dbname", "")
    if not dbname:
        raise BadInput("--to-url names no database; add it, e.g. postgresql://localhost/curation")

    def default(keyword: str) -> str:
        return options.get(keyword, (None, None, False))[1] or ""

    # Empty host: libpq's default Unix socket directory, for psycopg and (as PGHOST="") pg_restore alike.
    host = params.get("host") or default("host")
    port_text = params.get("port") or default("port") or "5432"

    def quoted(value: str) -> str:
        # A value is quoted only from a URL that holds no secret: in a malformed one it may be a piece of the password.
        return "" if secret else f" {value!r}"

    for what, value in (("host", host), ("port", port_text)):
        if "," in value:
            listed = "" if secret else f" {value}"
            raise BadInput(f"--to-url names several servers ({what}{listed}); a restore goes into one: keep only its {what}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadInput(f"--to-url port{quoted(port_text)} is not a port number; fix it, e.g. postgresql://localhost:5433/curation")
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in _SSLMODES:
        raise BadInput(f"--to-url sslmode{quoted(sslmode)} is not one of {', '.join(_SSLMODES)}; fix it in the URL")
    user = params.get("user") or default("user") or getpass.getuser()
    return Connection(
        host=host,
        port=int(port_text),
        dbname=dbname,
        user=user,
        # Used, never passed on: pg_restore gets it through a private passfile (pg.tools.libpq_env).
        password=params["password"] if "password" in params else os.environ.get("PGPASSWORD"),
        sslmode=sslmode,
    )


class Resolver:
    """Resolve `ssm:/path` and `env:VAR` references where the job runs; reports secrets to mask."""

    def __init__(
        self,
        ssm: Callable[[], SSMClient],
        environ: Mapping[str, str] | None = None,
        on_secret: Callable[[str], None] | None = None,
    ) -> None:
        self._ssm = ssm
        self._environ = os.environ if environ is None else environ
        self._on_secret = on_secret or (lambda _secret: None)

    def resolve(self, ref: DatabaseRef) -> Connection:
        fields = (ref.host, ref.port, ref.name, ref.user, ref.password, ref.sslmode)
        names = [v.removeprefix("ssm:") for v in fields if v and v.startswith("ssm:")]
        ssm_values = self._fetch_ssm(names) if names else {}

        def value(raw: str | None, what: str) -> str | None:
            if raw is None:
                return None
            if raw.startswith("ssm:"):
                return ssm_values[raw.removeprefix("ssm:")]
            if raw.startswith("env:"):
                var = raw.removeprefix("env:")
                if var not in self._environ:
                    raise BadInput(f"environment variable {var} (the database {what}) is not set; export it or change targets.yaml")
                return self._environ[var]
            return raw

        password = value(ref.password, "password")
        if password:
            self._on_secret(password)
        port_text = value(ref.port, "port") or "5432"
        if not port_text.isdigit():
            raise BadInput(f"database port {port_text!r} is not a number; fix it in targets.yaml or SSM")
        return Connection(
            host=value(ref.host, "host") or "",
            port=int(port_text),
            dbname=value(ref.name, "name") or "",
            user=value(ref.user, "user") or "",
            password=password,
            sslmode=value(ref.sslmode, "sslmode"),
        )

    def _fetch_ssm(self, names: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        try:
            client = self._ssm()
            for start in range(0, len(names), 10):
                chunk = names[start : start + 10]
                response = client.get_parameters(Names=chunk, WithDecryption=True)
                for param in response.get("Parameters", []):
                    found[param["Name"]] = param["Value"]
                missing = response.get("InvalidParameters", [])
                if missing:
                    raise BadInput(
                        f"SSM parameter {missing[0]} does not exist; create it (docs/setup.md) "
                        "or set database: for this target in targets.yaml"
                    )
        except (ClientError, BotoCoreError) as exc:
            raise infra_error("reading database settings from SSM", exc) from exc
        return found
