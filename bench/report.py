"""The tables: backups, where the default backup's time goes, restores, peak RSS, restore modes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .basics import mib
from .measures import Measure

if TYPE_CHECKING:
    from .runs import Bench


def table(rows: list[list[str]], header: list[str]) -> str:
    """First column left-aligned, numbers right-aligned, a dashed line under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for index, row in enumerate([header, *rows]):
        cells = [c.ljust(w) if i == 0 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and b == b and a == a else "-"


def fmt_t(m: Measure | None, stat: str) -> str:
    if m is None or not m.samples:
        return "-"
    shown = f"{m.value(stat):.2f}"
    if len(m.samples) > 1:
        shown += " [" + " ".join(f"{t:.1f}" for t in m.times) + "]"
    return shown


def fmt_cpu(m: Measure | None, stat: str, which: str) -> str:
    sample = m.pick(stat) if m else None
    return f"{getattr(sample, which):.1f}" if sample else "-"


def fmt_rss(m: Measure | None) -> str:
    return f"{m.rss_mb:.1f}" if m and m.rss_mb else "-"


def floor_of(ms: dict[str, Measure], p: str, compression: str, stat: str) -> float:
    """The pipeline floor: the slower of the dump to /dev/null and the upload of its result."""
    fd = ms.get(f"{p}/floor-dump/{compression}")
    fu = ms.get(f"{p}/floor-upload/{compression}")
    return max(fd.value(stat), fu.value(stat)) if fd and fu else float("nan")


def report(bench: Bench, scales: list[int]) -> None:
    """Every table but the verdicts, for the first scale and across scales."""
    stat = bench.args.stat
    ms = bench.measures
    default = bench.default
    p = f"s{scales[0]}"
    print("\n" + "=" * 100)
    for scale in scales:
        info = bench.results["scales"][str(scale)]["database"]
        print(f"scale {scale} ({bench.args.data} data): database {mib(info['size_bytes'])} "
              f"(uncompressed custom dump {mib(info['raw_dump_bytes'])}); rows: "
              + ", ".join(f"{k} {v:,}" for k, v in info["counts"].items()))
    s3_text = ("cpu S3 = CPU s of the moto S3 emulator (same 2 cores)" if bench.s3.emulated
               else "cpu S3 = n/a (real S3: no emulator to measure)")
    server_text = ("the PostgreSQL server's CPU is in neither" if not bench.server.external
                   else "the PostgreSQL server's CPU (external server) is in neither")
    print(f"Times in seconds: the {stat} of {bench.repeat} run(s) at scale {scales[0]}, all runs in "
          f"[brackets]; other scales: backups once, restores {bench.args.repeat_other}x.\nSizes in MiB. cpu tools = CPU s of the command and "
          f"its children (pg_dump, zstd, ...); {s3_text};\n{server_text}. RSS = peak (VmHWM) "
          "of the db-backup process itself, in MiB.")

    def cpu_s3(m: Measure | None) -> str:
        return fmt_cpu(m, stat, "cpu_s3") if bench.s3.emulated else "n/a"

    old = ms[f"{p}/old"]
    old_t, old_size = old.value(stat), old.size or 0
    print(f"\nBACKUP at scale {scales[0]}: old way = pg_dump -Fc (gzip:6) to a file "
          f"{fmt_t(ms[p + '/old/dump'], stat)}s + upload_file {fmt_t(ms[p + '/old/upload'], stat)}s")
    rows = [["old way (gzip:6, file + upload_file)", fmt_t(old, stat), "1.00x", mib(old_size),
             "1.00x", "-", "-", fmt_cpu(old, stat, "cpu_tools"), cpu_s3(old), "-"]]
    for compression in bench.args.compressions:
        m = ms.get(f"{p}/backup/{compression}")
        if m is None:
            continue
        floor = floor_of(ms, p, compression, stat)
        label = f"db-backup {compression}" + (" (default)" if compression == default else "")
        rows.append([label, fmt_t(m, stat), ratio(m.value(stat), old_t), mib(m.size or 0),
                     ratio(m.size or 0, old_size), f"{floor:.2f}" if floor == floor else "-",
                     ratio(m.value(stat), floor), fmt_cpu(m, stat, "cpu_tools"),
                     cpu_s3(m), fmt_rss(m)])
    print(table(rows, ["backup", "time", "t/old", "size", "size/old", "floor", "t/floor",
                       "cpu tools", "cpu S3", "RSS"]))
    print("  floor = max(pipeline > /dev/null, upload_file of the finished dump), measured for: "
          + ", ".join(bench.args.floors))

    print(f"\nWHERE THE DEFAULT ({default}) BACKUP'S TIME GOES at scale {scales[0]}")
    parts = [
        (f"{p}/startup", "db-backup start-up (`db-backup targets`: interpreter, imports)"),
        (f"{p}/floor-dump/{default}", f"floor 1: {ms[f'{p}/floor-dump/{default}'].name[7:]}"
         if f"{p}/floor-dump/{default}" in ms else ""),
        (f"{p}/floor-upload/{default}",
         f"floor 2: upload_file of the finished dump to {bench.s3.label}"),
        (f"{p}/backup-folder/{default}", "db-backup to a local folder (no S3 "
         + ("emulator)" if bench.s3.emulated else "upload)")),
        (f"{p}/backup/{default}", "db-backup to S3" + (" (moto)" if bench.s3.emulated else "")),
    ]
    floor = floor_of(ms, p, default, stat)
    drows = [[label, fmt_t(ms.get(k), stat), ratio(ms[k].value(stat), floor) if k in ms else "-",
              fmt_cpu(ms.get(k), stat, "cpu_tools"), cpu_s3(ms.get(k))]
             for k, label in parts if k in ms]
    print(table(drows, ["step", "time", "t/floor", "cpu tools", "cpu S3"]))

    restore_report(bench, scales)
    rss_report(bench, scales)
    fixed_report(bench)


def fixed_report(bench: Bench) -> None:
    """What db-backup costs beyond the tools it runs, on an empty database."""
    stat, ms = bench.args.stat, bench.measures
    keys = ("fixed/stack", "fixed/stack-s3", "fixed/help", "fixed/floor-dump", "fixed/backup-folder", "fixed/backup-s3", "fixed/floor-restore",
            "fixed/restore-folder")
    rows = [[ms[k].name, fmt_t(ms[k], stat), fmt_rss(ms[k])] for k in keys if k in ms and ms[k].samples]
    if rows:
        print("\nFIXED COSTS (an empty database)")
        print(table(rows, ["step", "time", "RSS"]))


def restore_report(bench: Bench, scales: list[int]) -> None:
    stat = bench.args.stat
    ms = bench.measures
    p = f"s{scales[0]}"
    if f"{p}/restore/old-j1" not in ms:
        return
    print(f"\nRESTORE at scale {scales[0]} (each into a fresh database, CREATE DATABASE included; "
          "rows checked after each)")
    old_r = ms[f"{p}/restore/old-j1"].value(stat)
    plain_stream = ms.get(f"{p}/restore/plain-stream")
    dec = ms.get(f"{p}/decompress")
    j2 = ms.get(f"{p}/restore/pipe-j2")
    plain_parallel = dec.value(stat) + j2.value(stat) if dec and j2 and j2.samples else float("nan")
    rrows = []
    for key in ("old-j1", "stream", "parallel", "auto", "legacy", "plain-stream", "pipe-j2",
                "seek-j1", "seek-j2", "pinned-j1", "pinned-j2", "pinned-stream",
                "pinned-parallel"):
        m = ms.get(f"{p}/restore/{key}")
        if m is None or not m.samples:
            continue
        same = {"stream": plain_stream.value(stat) if plain_stream else float("nan"),
                "parallel": plain_parallel, "legacy": old_r}.get(key, float("nan"))
        rrows.append([m.name, fmt_t(m, stat), ratio(m.value(stat), old_r),
                      ratio(m.value(stat), same), fmt_cpu(m, stat, "cpu_tools"), fmt_rss(m),
                      m.note])
    if dec:
        rrows.append([dec.name, fmt_t(dec, stat), "-", "-", fmt_cpu(dec, stat, "cpu_tools"), "-",
                      f"{mib(dec.size or 0)} file"])
    print(table(rrows, ["restore", "time", "t/old -j1", "t/plain", "cpu tools", "RSS", "note"]))
    print("  t/plain = db-backup vs plain tools on the same dump: stream vs `zstd -dc | pg_restore`;"
          " parallel vs `zstd -d` + `pg_restore -j2`;\n  legacy vs `pg_restore -j1` of the same "
          "file. note = the mode db-backup used (auto applies the engine's own rule)")


def rss_report(bench: Bench, scales: list[int]) -> None:
    stat = bench.args.stat
    ms = bench.measures
    default = bench.default
    print("\nPEAK RSS of the db-backup process (VmHWM, MiB)")
    rss_rows = []
    for scale in scales:
        for key, m in ms.items():
            if key.startswith(f"s{scale}/") and m.rss_mb:
                rss_rows.append([f"scale {scale}", m.name, fmt_t(m, stat), fmt_rss(m)])
    print(table(rss_rows, ["scale", "command", "time", "peak RSS"]))

    mode_rows = []
    for scale in scales:
        s = ms.get(f"s{scale}/restore/stream")
        par = ms.get(f"s{scale}/restore/parallel")
        auto = ms.get(f"s{scale}/restore/auto")
        b = ms.get(f"s{scale}/backup/{default}")
        raw = bench.results["scales"][str(scale)]["database"]["raw_dump_bytes"]
        if s and par and b:
            mode_rows.append([f"scale {scale}", mib(b.size or 0), mib(raw), fmt_t(s, stat),
                              fmt_t(par, stat), ratio(par.value(stat), s.value(stat)),
                              fmt_t(auto, stat), auto.note if auto else "-"])
    if mode_rows:
        print(f"\nRESTORE MODES across sizes (db-backup, {default} backups)")
        print(table(mode_rows, ["scale", "stored", "uncompressed", "stream", "parallel -j",
                                "par/stream", "auto", "auto picked"]))


