"""The verdicts: one PASS/FAIL line per target, and what the restore measurements recommend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .basics import mib
from .measures import RSS_LIMIT_MB, Target
from .report import floor_of, ratio

if TYPE_CHECKING:
    from .runs import Bench


def check_targets(bench: Bench, scales: list[int]) -> list[Target]:
    """Print one PASS/FAIL line per target, then the restore recommendations."""
    stat = bench.args.stat
    ms = bench.measures
    default = bench.default
    p = f"s{scales[0]}"
    old = ms[f"{p}/old"]
    old_t, old_size = old.value(stat), old.size or 0
    new = ms[f"{p}/backup/{default}"]
    new_t = new.value(stat)
    floor = floor_of(ms, p, default, stat)
    targets = [Target("backup speed", f"default ({default}) backup time vs old way", new_t / old_t,
                      0.85)]
    if floor == floor:
        targets.append(Target("backup overhead", f"default backup time vs pipeline floor ({floor:.2f}s)",
                              new_t / floor, 1.15))
    targets.append(Target("backup speed", f"default ({default}) backup time vs old way", new_t / old_t,
                          0.25))
    targets.append(Target("backup size", f"default ({default}) backup size vs old way",
                          (new.size or 0) / old_size, 1.0))
    old_r = ms[f"{p}/restore/old-j1"].value(stat) if f"{p}/restore/old-j1" in ms else 0.0
    for mode in ("stream", "parallel", "auto"):
        m = ms.get(f"{p}/restore/{mode}")
        if m and m.samples and old_r:
            picked = f" = {m.note}" if mode == "auto" else ""
            targets.append(Target("restore speed", f"restore of a default backup ({mode}{picked}) vs "
                                  "pg_restore -j1 of the old dump", m.value(stat) / old_r, 0.8))
    targets += floor_targets(bench, scales)
    for scale in scales:
        peaks = [m.rss_mb for k, m in ms.items() if k.startswith(f"s{scale}/") and m.rss_mb]
        db_mb = bench.results["scales"][str(scale)]["database"]["size_bytes"] / (1 << 20)
        if peaks:
            targets.append(Target("memory", f"peak RSS of db-backup, all commands, scale {scale} "
                                  f"({db_mb:,.0f} MiB database)", max(peaks), RSS_LIMIT_MB,
                                  unit="MB"))
    print("\nTARGETS")
    for t in targets:
        print(t.line())
    recommend(bench, scales)
    return targets


def floor_targets(bench: Bench, scales: list[int]) -> list[Target]:
    """Backup and restore against their pipelines' own floors at every scale, and the fixed costs."""
    stat, ms, default = bench.args.stat, bench.measures, bench.default
    targets: list[Target] = []

    def add(capability: str, text: str, key: str, base: float, limit: float, unit: str = "x") -> None:
        m = ms.get(key)
        if m is None or not m.samples or base != base or (base <= 0 and unit == "x"):
            return
        value = m.value(stat)
        targets.append(Target(capability, text, value / base if unit == "x" else value - base, limit, unit))

    for scale in scales:
        p = f"s{scale}"
        floor = floor_of(ms, p, default, stat)
        add("floor", f"scale {scale}: backup to S3 vs its pipeline floor ({floor:.2f}s)", f"{p}/backup/{default}", floor, 1.15)
        dump = ms.get(f"{p}/floor-dump/{default}")
        if dump and dump.samples:
            add("floor", f"scale {scale}: backup to a folder vs its pipeline ({dump.value(stat):.2f}s)",
                f"{p}/backup-folder/{default}", dump.value(stat), 1.15)
        seek = ms.get(f"{p}/restore/seek-j2")
        if seek and seek.samples:
            add("floor", f"scale {scale}: restore (auto) vs pg_restore -j2 of a local -Z0 archive with offsets "
                f"({seek.value(stat):.2f}s)", f"{p}/restore/auto", seek.value(stat), 1.0)
        down, old = ms.get(f"{p}/old/download"), ms.get(f"{p}/restore/old-j1")
        if down and old and down.samples and old.samples:
            whole = down.value(stat) + old.value(stat)
            add("floor", f"scale {scale}: restore (auto) vs the old whole restore (download + pg_restore -j1, "
                f"{whole:.2f}s)", f"{p}/restore/auto", whole, 0.8)
    add("fixed cost", "db-backup --help", "fixed/help", 0.0, 0.3, unit="s")
    tools_of = {"fixed/backup-folder": "fixed/floor-dump", "fixed/backup-s3": "fixed/floor-dump",
                "fixed/restore-folder": "fixed/floor-restore"}
    for key, what in (("fixed/backup-folder", "backup of an empty database to a folder"),
                      ("fixed/backup-s3", "backup of an empty database to S3"),
                      ("fixed/restore-folder", "restore of an empty database")):
        b = ms.get(tools_of[key])
        if b and b.samples:
            add("fixed cost", f"{what}, over its pg_dump/pg_restore ({b.value(stat):.2f}s)", key, b.value(stat), 0.3, unit="s")
    # The same targets against what the libraries alone cost to load: how much of the fixed cost is db-backup's own.
    for key, stack, what in (("fixed/backup-folder", "fixed/stack", "backup to a folder"),
                             ("fixed/backup-s3", "fixed/stack-s3", "backup to S3"),
                             ("fixed/restore-folder", "fixed/stack", "restore")):
        tools, libs = ms.get(tools_of[key]), ms.get(stack)
        if tools and libs and tools.samples and libs.samples:
            floor = tools.value(stat) + libs.value(stat)
            add("fixed cost", f"{what} of an empty database, over its pg_dump/pg_restore + loading the libraries "
                f"({floor:.2f}s)", key, floor, 0.3, unit="s")
    return targets


def recommend(bench: Bench, scales: list[int]) -> None:
    """The numbers behind the restore-mode default: -j2 on a pipe-written archive, stream vs parallel."""
    stat = bench.args.stat
    ms = bench.measures
    p = f"s{scales[0]}"
    j2, dec = ms.get(f"{p}/restore/pipe-j2"), ms.get(f"{p}/decompress")
    ps, seek = ms.get(f"{p}/restore/plain-stream"), ms.get(f"{p}/restore/seek-j2")
    if j2 and dec and ps:
        print("\nPG_RESTORE -j2 ON A PIPE-WRITTEN ARCHIVE (pg_dump -Fc -Z0 | zstd: no data offsets)")
        if j2.samples:
            total = dec.value(stat) + j2.value(stat)
            print(f"  {j2.note}. zstd -d to a file {dec.value(stat):.2f}s + pg_restore -j2 "
                  f"{j2.value(stat):.2f}s = {total:.2f}s, versus streaming "
                  f"(zstd -dc | pg_restore) {ps.value(stat):.2f}s: {ratio(total, ps.value(stat))}")
            if seek and seek.samples:
                print(f"  the same data with data offsets (pg_dump -f FILE): pg_restore -j2 "
                      f"{seek.value(stat):.2f}s; missing offsets cost "
                      f"{ratio(j2.value(stat), seek.value(stat))}")
        else:
            print(f"  {j2.note}")
        pin1, pin2 = ms.get(f"{p}/restore/pinned-j1"), ms.get(f"{p}/restore/pinned-j2")
        seek1 = ms.get(f"{p}/restore/seek-j1")
        if pin1 and pin2 and pin1.samples and pin2.samples:
            free = (f" (client unpinned: -j2 {seek.value(stat):.2f}s vs -j1 "
                    f"{seek1.value(stat):.2f}s = {ratio(seek.value(stat), seek1.value(stat))})"
                    if seek and seek1 and seek.samples and seek1.samples else "")
            server = ("server external" if bench.server.external
                      else f"server free on all {bench.cores} cores")
            print(f"  client on 1 core ({server}): pg_restore -j2 "
                  f"{pin2.value(stat):.2f}s vs -j1 {pin1.value(stat):.2f}s = "
                  f"{ratio(pin2.value(stat), pin1.value(stat))}{free}")
        ds, dp = ms.get(f"{p}/restore/pinned-stream"), ms.get(f"{p}/restore/pinned-parallel")
        us, up = ms.get(f"{p}/restore/stream"), ms.get(f"{p}/restore/parallel")
        if ds and dp and ds.samples and dp.samples:
            free = (f" (client unpinned: parallel {up.value(stat):.2f}s vs stream "
                    f"{us.value(stat):.2f}s = {ratio(up.value(stat), us.value(stat))})"
                    if us and up and us.samples and up.samples else "")
            used = dp.note.split(";")[0].strip() or "parallel"  # e.g. "parallel -j2"
            print(f"  db-backup on 1 core: {used} {dp.value(stat):.2f}s vs stream "
                  f"{ds.value(stat):.2f}s = {ratio(dp.value(stat), ds.value(stat))}{free}")
        if bench.pinned_skip:
            print(f"  client on 1 core: not measured: {bench.pinned_skip}")
    rows = []
    auto_picks: dict[int, str] = {}
    for scale in scales:
        s, par = ms.get(f"s{scale}/restore/stream"), ms.get(f"s{scale}/restore/parallel")
        b = ms.get(f"s{scale}/backup/{bench.default}")
        if s and par and b and s.samples and par.samples:
            rows.append((scale, b.size or 0, s.value(stat), par.value(stat)))
            auto = ms.get(f"s{scale}/restore/auto")
            if auto and auto.samples:
                auto_picks[scale] = auto.note
    if rows:
        print("\nRESTORE MODE DATA (db-backup, both modes, same backup)")
    for scale, size, st, pa in rows:
        faster = "parallel" if pa < st else "stream"
        raw = bench.results["scales"][str(scale)]["database"]["raw_dump_bytes"]
        print(f"  scale {scale}: {mib(size)} stored, {mib(raw)} uncompressed: stream {st:.2f}s, "
              f"parallel -j{bench.cores} {pa:.2f}s: {faster} faster by "
              f"{abs(st - pa) / max(st, pa):.0%}; auto picked {auto_picks.get(scale, '-')}")
    if rows:
        wins = [pa < st * 0.95 for _scale, _size, st, pa in rows]
        losses = [pa > st * 1.05 for _scale, _size, st, pa in rows]
        if all(wins):
            verdict = "parallel is >5% faster at every measured size: keep auto"
        elif any(losses):
            verdict = "parallel is >5% slower somewhere: prefer stream at those sizes"
        else:
            verdict = "within +-5% at every measured size: the mode hardly matters here"
        where = ("external database server" if bench.server.external
                 else "database server on the same cores")
        print(f"  {verdict} ({bench.cores} cores, {where}).")


