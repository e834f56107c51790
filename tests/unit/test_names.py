"""Small pure pieces: compression settings, backup ids, derived database names, URLs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from runner.catalog import make_id, parse_id
from runner.compression import parse_compression, sniff
from runner.credentials import parse_url
from runner.errors import BadInput
from runner.pg.admin import derived_name


def test_compression_settings() -> None:
    assert str(parse_compression("zstd")) == "zstd:3"
    assert str(parse_compression("ZSTD:7")) == "zstd:7"
    assert str(parse_compression("gzip")) == "gzip:6"
    assert str(parse_compression("none")) == "none"
    for bad in ("zstd:0", "zstd:20", "gzip:x", "brotli", "none:3"):
        with pytest.raises(ValueError):
            parse_compression(bad)
    assert sniff(b"\x28\xb5\x2f\xfd....") == "zstd"
    assert sniff(b"PGDMP\x01") == "custom"
    assert sniff(b"\x1f\x8b\x08") == "gzip"
    assert sniff(b"hello") == "unknown"


def test_ids_sort_with_the_old_layout() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert make_id(when) == "2026-01-02_03-04-05"
    assert make_id(when, 2) == "2026-01-02_03-04-05_2"
    assert parse_id("2026-01-02_03-04-05_2") == (when, 2)
    assert parse_id("2026-01-02_03-04-05") == (when, 1)
    assert parse_id("latest") is None and parse_id("2026-01-02") is None


def test_derived_names_fit_and_never_collide() -> None:
    assert derived_name("curation", "__previous") == "curation__previous"
    long_a = "a" * 60
    long_b = "a" * 59 + "b"
    suffix = "__restore_2026-01-02_03-04-05_2"
    names = {derived_name(base, suffix) for base in (long_a, long_b)}
    assert len(names) == 2
    assert all(len(n.encode()) <= 63 and n.endswith(suffix) for n in names)
    assert derived_name(long_a, suffix) == derived_name(long_a, suffix)
    multibyte = "ü" * 40
    assert len(derived_name(multibyte, "__previous").encode()) <= 63
    assert derived_name(long_a, "__previous") != long_a


def test_urls() -> None:
    conn = parse_url("postgresql://dev:s%40cret@localhost:5433/curation?sslmode=disable")
    assert (conn.host, conn.port, conn.dbname, conn.user, conn.password, conn.sslmode) == ("localhost", 5433, "curation", "dev", "s@cret", "disable")
    assert "s@cret" not in repr(conn) and "s@cret" not in conn.describe()
    with pytest.raises(BadInput, match="names no database"):
        parse_url("postgresql://localhost")
    with pytest.raises(BadInput, match="must look like"):
        parse_url("mysql://localhost/x")
