"""When the alerts webhook is told about a run: the choices of `report --notify` and `alerts.notify`."""

from __future__ import annotations

from enum import StrEnum


class Notify(StrEnum):
    failures = "failures"
    always = "always"
