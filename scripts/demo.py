"""Demo: back up a real PostgreSQL database into ./demo/backups and restore it, through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from runner.pg.cluster import throwaway_cluster

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
PASSWORD = "demo-password-not-secret"

SAMPLE = """
CREATE TABLE author (id serial PRIMARY KEY, name text NOT NULL, born date);
CREATE TABLE paper (id bigserial PRIMARY KEY, author_id int REFERENCES author (id), title text, meta jsonb, pdf bytea);
CREATE INDEX paper_author ON paper (author_id);
CREATE VIEW prolific AS SELECT a.name, count(*) AS papers FROM author a JOIN paper p ON p.author_id = a.id GROUP BY a.name;
INSERT INTO author (name, born) SELECT 'Author ' || g, date '1950-01-01' + g * 17 FROM generate_series(1, 500) g;
INSERT INTO paper (author_id, title, meta, pdf)
SELECT 1 + g % 500, 'On the ' || md5(g::text), jsonb_build_object('year', 1990 + g % 35, 'tags', jsonb_build_array('a', g % 9)),
       decode(md5(g::text), 'hex')
FROM generate_series(1, 50000) g;
"""

CHECKSUM = """
SELECT (SELECT count(*) FROM author), (SELECT count(*) FROM paper),
       (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM author t),
       (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM paper t)
"""


def cli(*args: str, env: dict[str, str]) -> None:
    print(f"\n$ db-backup {' '.join(args)}", flush=True)
    subprocess.run([str(REPO / ".venv" / "bin" / "db-backup"), *args], env=env, check=True, timeout=600)


def main() -> int:
    DEMO.mkdir(exist_ok=True)
    with throwaway_cluster(PASSWORD) as pg:
        conninfo = {"host": pg.host, "port": pg.port, "user": pg.user, "password": PASSWORD, "autocommit": True}
        with psycopg.connect(dbname="postgres", **conninfo) as conn:  # type: ignore[arg-type]
            conn.execute("CREATE DATABASE library")
        with psycopg.connect(dbname="library", **conninfo) as conn:  # type: ignore[arg-type]
            conn.execute(SAMPLE)
        targets = DEMO / "targets.yaml"
        targets.write_text(f"""version: 1
defaults:
  storage: file://./backups
environments:
  production: {{protected: true}}
  local: {{}}
targets:
  - identifier: library
    env: production
    schedule: nightly
    database: {{host: {pg.host}, port: {pg.port}, name: library, user: {pg.user}, password: "env:DEMO_PGPASSWORD"}}
""")
        env = {**os.environ, "DB_BACKUP_TARGETS": str(targets), "DEMO_PGPASSWORD": PASSWORD, "PGPASSWORD": PASSWORD}
        cli("validate", env=env)
        cli("targets", env=env)
        cli("backup", "library", "production", env=env)
        cli("list", "library", "production", env=env)
        cli("restore", "library", "--from", "production", "--to-url", f"postgresql://{pg.user}@{pg.host}:{pg.port}/library_copy", env=env)
        cli("status", env=env)
        with psycopg.connect(dbname="library", **conninfo) as a, psycopg.connect(dbname="library_copy", **conninfo) as b:  # type: ignore[arg-type]
            original, restored = a.execute(CHECKSUM).fetchone(), b.execute(CHECKSUM).fetchone()
    print(f"\noriginal: {original}\nrestored: {restored}")
    if original != restored:
        print("MISMATCH: the restored database differs from the original")
        return 1
    print(f"identical: row counts and content checksums match; backups are in {DEMO / 'backups'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
