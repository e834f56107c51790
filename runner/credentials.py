"""Database connections: resolve targets' references (ssm:, env:) and parse --to-url."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

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
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"

    def psycopg_kwargs(self) -> dict[str, str | int]:
        kwargs: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "connect_timeout": 15,
            "application_name": "db-backup",
        }
        if self.password is not None:
            kwargs["password"] = self.password
        if self.sslmode:
            kwargs["sslmode"] = self.sslmode
        return kwargs


def parse_url(url: str) -> Connection:
    """Parse postgresql://user:pass@host:port/db?sslmode=...; BadInput says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise BadInput("--to-url must look like postgresql://USER@HOST:PORT/DATABASE")
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise BadInput("--to-url names no database; add it, e.g. postgresql://localhost/curation")
    try:
        port = parts.port or 5432
    except ValueError as exc:
        raise BadInput("--to-url has an invalid port") from exc
    query = parse_qs(parts.query)
    return Connection(
        host=unquote(parts.hostname or "localhost"),
        port=port,
        dbname=dbname,
        user=unquote(parts.username) if parts.username else os.environ.get("PGUSER", os.environ.get("USER", "postgres")),
        password=unquote(parts.password) if parts.password is not None else os.environ.get("PGPASSWORD"),
        sslmode=query.get("sslmode", [None])[0],
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
