"""Demo: back up a real PostgreSQL database into ./demo/backups and restore it, through the CLI.

The demo's PostgreSQL cluster keeps running afterwards, so the commands it suggests work on it;
`python scripts/demo.py stop` (or `bash scripts/demo.sh stop`) stops it and removes its data.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from runner.errors import Interrupted
from runner.pg import cluster as pgc
from runner.signals import deferred_signals, install

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo"
STATE = DEMO / "cluster.json"  # where `stop` finds the running cluster
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


@dataclass(frozen=True)
class Running:
    """The demo's cluster, as `stop` needs to find it again."""

    root: str
    datadir: str
    bindir: str
    host: str
    port: int
    user: str


def start_cluster() -> Running:
    """A cluster like the tests' throwaway one, but left running when this script ends; gone if the start fails."""
    made = pgc.start_cluster(PASSWORD)
    running = Running(str(made.datadir.parent), str(made.datadir), str(made.bindir), made.host, made.port, made.user)
    try:
        STATE.write_text(json.dumps(asdict(running), indent=2) + "\n")
    except BaseException:
        pgc.stop_cluster(made.bindir, made.datadir)
        raise
    return running


def stop_cluster(quiet_if_absent: bool = False) -> int:
    """Stop the demo's cluster and remove its data; says what it did, also when nothing was running."""
    if not STATE.exists():
        if not quiet_if_absent:
            print("no demo PostgreSQL cluster is running; nothing to stop")
        return 0
    running = Running(**json.loads(STATE.read_text()))
    was_running = (Path(running.datadir) / "postmaster.pid").exists()
    with deferred_signals():
        pgc.stop_cluster(Path(running.bindir), Path(running.datadir))
        STATE.unlink()
    where = f"{running.host}:{running.port}"
    if was_running:
        print(f"stopped the demo PostgreSQL cluster on {where} and removed its data ({running.root})")
    else:
        print(f"the demo PostgreSQL cluster on {where} was not running; removed its data ({running.root})")
    return 0


def next_steps(running: Running, targets: Path) -> str:
    """The commands to try next, with the exact settings this demo used."""
    copy_url = f"postgresql://{running.user}@{running.host}:{running.port}/library_copy"
    exports = {"DB_BACKUP_TARGETS": str(targets), "DEMO_PGPASSWORD": PASSWORD, "PGPASSWORD": PASSWORD}
    tool = shlex.quote(str(REPO / ".venv" / "bin" / "db-backup"))
    lines = [
        f"The demo's PostgreSQL cluster is still running on {running.host}:{running.port}. Try next:",
        "  export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in exports.items()),
        f"  {tool} list library production",
        f"  {tool} history library production",
        f"  {tool} verify library production",
        f"  {tool} restore library --from production --to-url {copy_url} --dry-run",
        f"  {tool} backup library production",
        "When done: bash scripts/demo.sh stop   (stops the cluster and removes its data; the backups stay in "
        f"{DEMO / 'backups'})",
    ]
    return "\n".join(lines)


def run_demo() -> int:
    DEMO.mkdir(exist_ok=True)
    if STATE.exists():
        print("stopping the demo cluster a previous run left running")
        stop_cluster()
    try:
        return demo(start_cluster())
    except BaseException:
        stop_cluster(quiet_if_absent=True)
        print("the demo failed; its PostgreSQL cluster is stopped and removed", file=sys.stderr)
        raise


def demo(pg: Running) -> int:
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
        stop_cluster()
        return 1
    print(f"identical: row counts and content checksums match; backups are in {DEMO / 'backups'}\n")
    print(next_steps(pg, targets))
    return 0


def main(argv: list[str]) -> int:
    if argv == ["stop"]:
        return stop_cluster()
    if argv:
        print("usage: scripts/demo.py [stop]", file=sys.stderr)
        return 2
    install()  # SIGTERM and SIGHUP, like Ctrl-C, then stop the cluster before the demo ends
    try:
        return run_demo()
    except Interrupted as exc:
        print(f"demo {exc}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
