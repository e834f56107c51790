"""`--prove`: what proving a backup costs: `db-backup verify` and `drill` against a restore of the same backup."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .basics import BenchError, first_line, log
from .engine import ENV_NAME, ident
from .measures import Measure
from .report import fmt_cpu, fmt_rss, fmt_t, ratio, table
from .restores import restore_cli

if TYPE_CHECKING:
    from .runs import Bench


def has_drill(bench: Bench) -> bool:
    """Whether the db-backup under test has the `drill` command (it may predate it)."""
    try:
        bench.engine.run(["drill", "--help"])
    except BenchError:  # exit 2: no such command
        return False
    return True


def prove(bench: Bench, scale: int, expected: dict[str, int]) -> None:
    """Verify and drill the default backup at `scale`, and restore it (unless a restore of it was already timed)."""
    default = bench.default
    target = ident(scale, default)
    m = bench.measure(f"s{scale}/prove/verify", f"db-backup verify ({default})")
    for _ in range(bench.repeat):
        bench.server.settle()
        sample, out = bench.engine.run(["verify", target, ENV_NAME, "--json"])
        m.samples.append(sample)
        [found] = json.loads(out)
        m.size, m.note = found["size_bytes"], f"{found['toc_entries']} TOC entries, read to its end"
        log(f"  verify: {sample.wall:.1f}s ({m.note})")
    if has_drill(bench):
        d = bench.measure(f"s{scale}/prove/drill", f"db-backup drill ({default}, throwaway cluster)")
        try:
            for _ in range(bench.repeat):
                bench.server.settle()
                sample, out = bench.engine.run(["drill", target, ENV_NAME, "--json"])
                d.samples.append(sample)
                record = json.loads(out)  # a failed drill exits 1: the run above raised
                d.note = f"restore inside: {record.get('restore_duration_s', 0):.1f}s"
                log(f"  drill: {sample.wall:.1f}s ({d.note})")
        except BenchError as exc:  # reported, like any other step that does not work here
            d.note = f"FAILS: {first_line(exc)}"
            log(f"  drill failed: {exc}")
    else:
        log("  drill: this db-backup has no `drill` command; skipped")
    if f"s{scale}/restore/auto" not in bench.measures:
        restore_cli(bench, scale, default, "auto", expected, f"s{scale}/restore/auto",
                    f"db-backup restore {default} (auto)", bench.repeat)


def prove_report(bench: Bench, scale: int) -> None:
    """The table: each step's time against the restore of the same backup."""
    stat = bench.args.stat
    ms = bench.measures
    restore = ms.get(f"s{scale}/restore/auto")
    if restore is None or f"s{scale}/prove/verify" not in ms:
        return
    base = restore.value(stat)
    rows = []
    for key in ("prove/verify", "prove/drill", "restore/auto"):
        m: Measure | None = ms.get(f"s{scale}/{key}")
        if m is None:
            continue
        rows.append([m.name, fmt_t(m, stat), ratio(m.value(stat), base) if m.samples else "-",
                     fmt_cpu(m, stat, "cpu_tools"), fmt_rss(m), m.note])
    print(f"\nPROVING A BACKUP at scale {scale}: verify and drill against a restore of the same backup")
    print(table(rows, ["step", "time", "t/restore", "cpu tools", "RSS", "note"]))
    print("  verify reads the stored dump once (sha256 + pg_restore -f /dev/null), no database; "
          "drill restores into a throwaway cluster and counts rows")
