"""Words for counts: "1 target", "2 targets"."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """The count and its noun in the right number: "1 target", "2 targets", "0 targets"."""
    return f"{count} {word if count == 1 else many or word + 's'}"
