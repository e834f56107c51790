"""One way to print sizes and durations: logs, CLI output, job summaries and the nightly report."""

from __future__ import annotations

from runner.output import human_duration, human_size, shown_line
from runner.words import plural


def test_sizes_use_binary_units_with_binary_labels() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1024) == "1.0 KiB"
    assert human_size(5 << 20) == "5.0 MiB"
    assert human_size(1_234_567_890) == "1.1 GiB"  # 1.23 GB in decimal units: the label says which
    assert human_size(3 << 50) == "3072.0 TiB"


def test_durations() -> None:
    assert human_duration(4.24) == "4.2s"
    assert human_duration(125) == "2m 05s"
    assert human_duration(3723) == "1h 02m 03s"


def test_counts_agree_with_their_noun() -> None:
    assert [plural(n, "backup") for n in (0, 1, 2)] == ["0 backups", "1 backup", "2 backups"]
    assert plural(1, "entry", "entries") == "1 entry" and plural(2, "entry", "entries") == "2 entries"


def test_the_limit_note_only_when_the_list_was_cut() -> None:
    assert shown_line(20, 20) is None
    assert shown_line(20, 21) == "20 of 21 backups shown (use --limit to see more)"
    assert shown_line(0, 1) == "0 of 1 backup shown (use --limit to see more)"
