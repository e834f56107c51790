"""The measured database: pgbench's tables plus bench_docs, filled as the data profile (--data) says."""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

from .basics import BenchError, log, run
from .measures import measured
from .server import Server

DATA_PROFILES = ("reference", "mixed")  # how bench_docs is filled (--data); the first is the default

# --data reference: the reference data the targets were measured on ("pgbench scale 20 plus
# 3 million rows of random text"): 128 random hex characters per row. At scale 20 + 3,000,000
# rows it reproduces the reference old-way numbers (gzip dump 238 MB vs 241 MB, uncompressed
# dump 629 MB vs 646 MB, pg_dump -Z0 to /dev/null 2.0 s vs 2.1 s).
REFERENCE_TABLE = """
CREATE TABLE bench_docs (
    id bigint NOT NULL,
    body text NOT NULL
)"""
REFERENCE_INSERT = """
INSERT INTO bench_docs
SELECT g, md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) g"""

# --data mixed: rows of realistic, partly compressible data: Zipf-ish words from a fixed
# vocabulary, numbers, md5 hex (incompressible-ish) in half the rows, timestamps and a small
# jsonb document. More compressible than `reference`, and dearer for the server to COPY out.
DOCS_TABLE = """
CREATE TABLE bench_docs (
    id bigint NOT NULL,
    created_at timestamptz NOT NULL,
    author text NOT NULL,
    title text NOT NULL,
    ref text,
    attrs jsonb NOT NULL
)"""
DOCS_INSERT = """
INSERT INTO bench_docs
SELECT g,
  timestamptz '2020-01-01' + g * interval '9 seconds' + random() * interval '1 hour',
  v.a[1 + (power(random(), 2) * (v.n - 1))::int],
  array_to_string(ARRAY(SELECT v.a[1 + (power(random(), 3) * (v.n - 1))::int]
                        FROM generate_series(1, 1 + g %% 4) WHERE g > 0), ' ')
    || CASE WHEN g %% 3 = 0 THEN ' ' || (random() * 10000)::int ELSE '' END,
  CASE WHEN random() < 0.5 THEN md5(g::text || random()::text) END,
  jsonb_build_object('s', (ARRAY['new', 'open', 'closed', 'archived'])[1 + g %% 4],
                     'n', (random() * 1000)::int)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) g,
     (SELECT %(words)s::text[] AS a, %(n)s::int AS n) v"""


def vocabulary(size: int = 2000, seed: int = 20) -> list[str]:
    """A fixed vocabulary of pronounceable pseudo-words (deterministic), ~6.6 letters each."""
    rng = random.Random(seed)
    onsets = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v",
              "w", "z", "br", "ch", "cl", "dr", "gr", "pl", "st", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "io", "ou"]
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ck"]
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.choice([1, 2, 2, 3])
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables))
        words.add(word + rng.choice(codas))
    ordered = sorted(words)
    rng.shuffle(ordered)
    return ordered


def fill_docs(server: Server, dbname: str, text_rows: int, data: str) -> None:
    """bench_docs' rows, generated inside PostgreSQL on one connection per core (at most 4).

    Deterministic: each connection seeds its own random() (setseed) before its share of ids.
    """
    words = vocabulary() if data == "mixed" else []
    workers = max(1, min(4, os.cpu_count() or 1))
    bounds = [text_rows * i // workers for i in range(workers + 1)]
    errors: list[BaseException] = []

    def insert(part: int) -> None:
        params: dict[str, Any] = {"first": bounds[part] + 1, "last": bounds[part + 1]}
        if data == "mixed":
            params.update(words=words, n=len(words))
        try:
            with server.connect(dbname) as conn:
                conn.execute("SELECT setseed(%s)", (0.42 + part / 100,))
                conn.execute(REFERENCE_INSERT if data == "reference" else DOCS_INSERT, params)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(p,)) for p in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def make_database(server: Server, dbname: str, scale: int, text_rows: int,
                  data: str) -> dict[str, Any]:
    """pgbench -i -s SCALE, plus bench_docs filled as the data profile `data` says."""
    if data not in DATA_PROFILES:
        raise BenchError(f"unknown data profile {data!r}; expected one of {DATA_PROFILES}")
    server.create_db(dbname)
    sample, _ = measured(lambda: run([server.tool("pgbench"), "-i", "-s", str(scale), "-q"],
                                     env=server.env(dbname), timeout=3600))
    log(f"  pgbench -i -s {scale}: {sample.wall:.1f}s")
    started = time.perf_counter()
    server.execute(REFERENCE_TABLE if data == "reference" else DOCS_TABLE, dbname)
    if text_rows > 0:
        fill_docs(server, dbname, text_rows, data)
    server.execute("ALTER TABLE bench_docs ADD PRIMARY KEY (id)", dbname)
    server.execute("VACUUM ANALYZE bench_docs", dbname)
    log(f"  bench_docs ({text_rows:,} rows, {data} data): {time.perf_counter() - started:.1f}s")
    size = int(server.execute(f"SELECT pg_database_size('{dbname}')")[0][0])
    return {"size_bytes": size, "counts": server.counts(dbname)}
