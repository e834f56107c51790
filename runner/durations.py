"""Durations as people write them: 30s, 90m, 26h, 2d."""

from __future__ import annotations

import re
from datetime import timedelta

from .errors import BadInput

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """`90m` as a timedelta; BadInput naming the text otherwise."""
    match = _DURATION.match(text.strip())
    if not match:
        raise BadInput(f"duration {text!r} is not valid; write e.g. 90m, 26h or 2d")
    value, unit = float(match.group(1)), match.group(2)
    try:
        return timedelta(seconds=value * _SECONDS[unit])
    except OverflowError:
        raise BadInput(f"duration {text!r} is too long; write e.g. 90m, 26h or 2d") from None
