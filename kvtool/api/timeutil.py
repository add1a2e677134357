"""RFC 3339 timestamps as Kubernetes writes them: one place for the controller, the handler and the launcher."""

from __future__ import annotations

import datetime as dt
import re

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")


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


def parse_duration(text: str) -> float:
    """Seconds in "90s", "5m", "1h30m", "2d" or "300"; ValueError with examples for anything else."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    m = _DURATION.match(text)
    if not text or not m:
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 5m, 1h30m, 2d)")
    days, hours, minutes, seconds = m.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)
