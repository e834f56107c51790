"""--to-url is read as libpq reads it: every part is honoured, or refused before anything runs."""

from __future__ import annotations

import pytest

from runner.credentials import Connection, parse_url
from runner.errors import BadInput

SECRET = "Tr0ub4dor-%3A-Secret"  # percent-encoded ':' inside
PLAIN_SECRET = "Tr0ub4dor-:-Secret"


@pytest.fixture(autouse=True)
def clean_libpq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own PG* variables must not decide what these tests see."""
    for name in ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSERVICE", "PGSSLMODE"):
        monkeypatch.delenv(name, raising=False)


def _where(conn: Connection) -> tuple[str, int, str, str]:
    return conn.host, conn.port, conn.dbname, conn.user


def test_query_host_is_a_socket_directory_and_query_port_is_used() -> None:
    conn = parse_url("postgresql:///curation?host=/var/run/postgresql&port=5433&user=dev")
    assert _where(conn) == ("/var/run/postgresql", 5433, "curation", "dev")
    assert conn.describe() == "dev@/var/run/postgresql:5433/curation"
    kwargs = conn.psycopg_kwargs()
    assert (kwargs["host"], kwargs["port"], kwargs["user"], kwargs["dbname"]) == ("/var/run/postgresql", 5433, "dev", "curation")


def test_query_port_beats_the_default() -> None:
    assert parse_url("postgresql://localhost/curation?port=5433").port == 5433
    assert parse_url("postgresql://localhost:5434/curation").port == 5434
    assert parse_url("postgresql://localhost/curation").port == 5432


def test_query_user_dbname_and_sslmode() -> None:
    conn = parse_url("postgresql://db.example.org/?dbname=curation&user=reader&sslmode=verify-full")
    assert _where(conn) == ("db.example.org", 5432, "curation", "reader")
    assert conn.sslmode == "verify-full" and conn.psycopg_kwargs()["sslmode"] == "verify-full"


def test_percent_encoded_socket_path_and_ipv6() -> None:
    assert parse_url("postgresql://%2Ftmp%2Fpg/curation").host == "/tmp/pg"
    conn = parse_url("postgresql://dev@[::1]:5433/curation")
    assert _where(conn) == ("::1", 5433, "curation", "dev")
    assert conn.describe() == "dev@[::1]:5433/curation"


def test_no_host_means_libpq_default_socket_unless_pghost_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = parse_url("postgresql:///curation")
    # Empty host: libpq (psycopg, and pg_restore through PGHOST="") uses its default socket directory.
    assert conn.host == "" and conn.describe().endswith("@local socket:5432/curation")
    monkeypatch.setenv("PGHOST", "pg.internal")
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGUSER", "env-user")
    assert _where(parse_url("postgresql:///curation")) == ("pg.internal", 6543, "curation", "env-user")
    # What the URL names wins over the environment, as in libpq.
    assert _where(parse_url("postgresql://u@elsewhere:5000/curation")) == ("elsewhere", 5000, "curation", "u")


def test_password_from_userinfo_query_or_pgpassword_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in (f"postgresql://dev:{SECRET}@localhost/curation", f"postgresql://dev@localhost/curation?password={SECRET}"):
        conn = parse_url(url)
        assert conn.password == PLAIN_SECRET
        assert PLAIN_SECRET not in repr(conn) and PLAIN_SECRET not in conn.describe()
    assert parse_url("postgresql://dev@localhost/curation").password is None
    monkeypatch.setenv("PGPASSWORD", "from-env")
    assert parse_url("postgresql://dev@localhost/curation").password == "from-env"


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql://h/curation?sslrootcert=/etc/ca.pem",
         "--to-url parameter sslrootcert is not passed on by db-backup; remove it from the URL and export PGSSLROOTCERT=<its value> instead"),
        ("postgresql://h/curation?options=-c%20search_path%3Dx", "export PGOPTIONS=<its value>"),
        ("postgresql://h/curation?service=prod", "parameter service is not passed on by db-backup; spell out host, port, user"),
        ("postgresql://h/curation?hostaddr=10.0.0.1", "parameter hostaddr is not passed on by db-backup; put the address in the URL's host"),
        ("postgresql://h/curation?keepalives=0", "parameter keepalives is not passed on by db-backup; remove it"),
        ("postgresql://h/curation?connect_timeout=3&application_name=me",
         "--to-url parameters application_name, connect_timeout are not passed on by db-backup"),
        ("postgresql://h1,h2/curation", "--to-url names several servers (host h1,h2)"),
        ("postgresql://h/curation?port=5432,5433", "--to-url names several servers (port 5432,5433)"),
        ("postgresql://h:99999/curation", "--to-url port '99999' is not a port number"),
        ("postgresql://h/curation?port=abc", "--to-url port 'abc' is not a port number"),
        ("postgresql://h/curation?sslmode=on", "--to-url sslmode 'on' is not one of disable, allow"),
        ("postgresql://h/curation?bogus=1", 'not a valid PostgreSQL URL (invalid URI query parameter: "bogus")'),
        ("postgresql://localhost", "--to-url names no database"),
        ("mysql://localhost/x", "--to-url must look like postgresql://"),
    ],
)
def test_refused_with_one_line_naming_the_parameter_and_the_fix(url: str, words: str) -> None:
    with pytest.raises(BadInput) as refused:
        parse_url(url)
    message = str(refused.value)
    assert words in message
    assert "\n" not in message


# Each holds a password whose pieces are "Hidden" and "Word": neither may appear in a message.
MALFORMED_WITH_PASSWORD = [
    "postgresql://dev:Se%zzHidden-Word@localhost/curation",  # libpq would quote the bad token
    "postgresql://dev@localhost/curation?password=Se%zzHidden-Word",
    "postgresql://dev:Hidden Word@localhost/curation",  # libpq quotes the token with the space
    "postgresql://dev:Hidden-Word@[::1/curation",  # unclosed IPv6 bracket
    "postgresql://dev:Hidden-Word@localhost/curation?bogus=1",
    "postgresql://dev:Hidden/Word@localhost/curation",  # libpq: host 'dev', port 'Hidden', database 'Word@localhost/...'
    "postgresql://dev:5432/HiddenWord@localhost/curation",  # the same, with a port that parses
    "postgresql://dev:Hidden@Word@localhost/curation",  # libpq: host 'Word@localhost'
    "postgresql://dev:Hidden-Word@localhost:notaport/curation",
    "postgresql://dev:Hidden-Word@localhost:5432:1/curation",
    "postgresql://dev:Hidden-Word@localhost/curation?port=HiddenWord",
    "postgresql://dev:Hidden-Word@localhost/curation?sslmode=HiddenWord",
    "postgresql://dev:Hidden-Word@h1,h2/curation",
    "postgresql://localhost/curation?password=Hidden-Word&port=HiddenWord",
]


@pytest.mark.parametrize("url", MALFORMED_WITH_PASSWORD)
def test_a_malformed_url_with_a_password_never_shows_any_of_it(url: str) -> None:
    with pytest.raises(BadInput) as refused:
        parse_url(url)
    message = str(refused.value)
    assert message.startswith("--to-url ") and "\n" not in message
    assert "Hidden" not in message and "Word" not in message
    # Neither chained nor raised while handling libpq's error: --verbose prints the traceback, causes included.
    assert refused.value.__cause__ is None and refused.value.__context__ is None


def test_a_slash_or_at_sign_in_the_password_says_to_percent_encode_it() -> None:
    for url in ("postgresql://dev:a/b@localhost/curation", "postgresql://dev:a@b@localhost/curation"):
        with pytest.raises(BadInput, match="percent-encode them as %2F and %40"):
            parse_url(url)
    assert parse_url("postgresql://dev:a%2Fb%40c@localhost/curation").password == "a/b@c"
    # An '@' in the query is a value, not a misplaced password.
    assert parse_url("postgresql://localhost/curation?user=app@server").user == "app@server"


def test_values_are_quoted_from_a_url_without_a_password() -> None:
    with pytest.raises(BadInput, match="--to-url port 'notaport' is not a port number"):
        parse_url("postgresql://dev@localhost:notaport/curation")
    with pytest.raises(BadInput, match=r"--to-url port is not a port number"):
        parse_url("postgresql://dev:pw@localhost:notaport/curation")


SPECIALS = ["/", "?", "@", "#", ",", ":", "[", "]", "&", "=", "%zz", " ", "?user=", "?dbname=", "?host=", "?port=", "/1?", ":1/"]
WITH_PASSWORD = [
    "postgresql://dev:AAA{0}BBB{1}CCC@localhost:5432/db",
    "postgresql://dev:5432{0}BBB{1}CCC@localhost/db?sslmode=require",
    "postgresql://localhost/db?password=AAA{0}BBB{1}CCC&port=1",
    "postgresql://dev@localhost/db?password=AAA{0}BBB{1}CCC",
]


def test_no_piece_of_a_password_with_special_characters_is_ever_shown() -> None:
    """Unencoded special characters make libpq cut the password anywhere: no piece may reach a message or a field."""
    for template in WITH_PASSWORD:
        for first in SPECIALS:
            for second in SPECIALS:
                url = template.format(first, second)
                try:
                    conn = parse_url(url)
                except BadInput as refused:
                    shown = str(refused)
                else:
                    shown = f"{conn.describe()} {conn!r}"
                assert not any(piece in shown for piece in ("AAA", "BBB", "CCC")), (url, shown)


def test_session_settings_reach_the_tools_after_the_callers_own(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.pg.tools import libpq_env

    conn = Connection("db.example", 5432, "app", "dev", "s3cret")
    monkeypatch.setenv("PGOPTIONS", "-c search_path=app")
    with libpq_env(conn, {"maintenance_work_mem": "256MB"}) as env:
        assert env.env["PGOPTIONS"] == "-c search_path=app -c maintenance_work_mem=256MB"
        assert "s3cret" not in " ".join(env.env.values())
    monkeypatch.delenv("PGOPTIONS")
    with libpq_env(conn) as env:
        assert "PGOPTIONS" not in env.env
