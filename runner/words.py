"""Words for counts: "1 target", "2 targets"."""

from __future__ import annotations


def plural(count: int, word: str, many: str | None = None) -> str:
    """The count and its noun in the right number: "1 target", "2 targets", "0 targets"."""
    return f"{count} {word if count == 1 else many or word + 's'}"


def sessions_ended(count: int) -> str:
    """What a restore's and a rollback's line say of the sessions they ended: "0 sessions ended", "1 session ended"."""
    return f"{plural(count, 'session')} ended"


def sessions_were_ended(count: int) -> str:
    """The same, said of a swap that failed: "1 session was ended", "2 sessions were ended"."""
    return f"{plural(count, 'session')} {'was' if count == 1 else 'were'} ended"
