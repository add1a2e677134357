"""RFC 3339 timestamps as Kubernetes writes them: one place for the controller, the handler and the launcher."""

from __future__ import annotations

import datetime as dt


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def stamp(t: dt.datetime | None = None) -> str:
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp_precise(t: dt.datetime | None = None) -> str:
    """Millisecond precision, for phase transitions the start-latency figures are computed from."""
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def stamp_micro(t: dt.datetime | None = None) -> str:
    """MicroTime (RFC 3339 with microseconds): what a Lease's renewTime holds."""
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
