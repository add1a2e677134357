"""When a lab's VM expires, and what then happens to it: read from the VM's annotations. Pure.

`kvtool apply --ttl 3h` writes `kvtool.io/ttl` into each VM's desired manifest (so a plan shows it and
a second plan of the same files changes nothing); the VM then expires `ttl` after its creation.
`kvtool lab extend` writes `kvtool.io/expires-at` under a field manager of its own, so it overrides
the ttl and `kvtool apply` never takes it back. The controller, not the client, acts at the deadline:
`kvtool.io/on-expiry: Stop` (the default) stops the VM, as runStrategy Halted would, until the deadline
moves; `Delete` deletes it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from kvtool.api import timeutil

TTL = "kvtool.io/ttl"
EXPIRES_AT = "kvtool.io/expires-at"
ON_EXPIRY = "kvtool.io/on-expiry"
STOP, DELETE = "Stop", "Delete"
POLICIES = (STOP, DELETE)
EXTEND_MANAGER = "kvtool-lab"  # `kvtool lab extend`'s field manager: not kvtool apply's


class ExpiryError(ValueError):
    """An expiry annotation the controller cannot read; `annotation` names it."""

    def __init__(self, annotation: str, message: str) -> None:
        super().__init__(f"annotation {annotation}: {message}")
        self.annotation = annotation


def deadline(vm: Mapping[str, Any]) -> dt.datetime | None:
    """When the VM expires: its expires-at, else its creation + ttl; None when it never does."""
    meta = vm.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if annotations.get(EXPIRES_AT):
        try:
            at = timeutil.parse(annotations[EXPIRES_AT])
        except ValueError:
            raise ExpiryError(EXPIRES_AT, f"{annotations[EXPIRES_AT]!r} is not an RFC 3339 time "
                                          "such as 2026-12-01T18:00:00Z") from None
        return at if at is None or at.tzinfo else at.replace(tzinfo=dt.UTC)
    if annotations.get(TTL):
        try:
            ttl = timeutil.parse_duration(annotations[TTL])
        except ValueError as exc:
            raise ExpiryError(TTL, str(exc)) from None
        created = timeutil.parse(meta.get("creationTimestamp")) or timeutil.now()
        return created + dt.timedelta(seconds=ttl)
    return None


def policy(vm: Mapping[str, Any]) -> str:
    """Stop or Delete (anything else is refused by `kvtool apply`; the controller reads it as Stop)."""
    value = ((vm.get("metadata") or {}).get("annotations") or {}).get(ON_EXPIRY, STOP)
    return DELETE if str(value).capitalize() == DELETE else STOP


def left(vm: Mapping[str, Any], now: dt.datetime | None = None) -> float | None:
    """Seconds until the VM expires (negative once it has), None when it never does or cannot be read."""
    try:
        at = deadline(vm)
    except ExpiryError:
        return None
    return None if at is None else (at - (now or timeutil.now())).total_seconds()


def human(seconds: float | None) -> str:
    """"2h13m", "45s", "expired" or "" (no expiry), for tables."""
    if seconds is None:
        return ""
    if seconds <= 0:
        return "expired"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{s:02d}s" if minutes else f"{s}s"


def annotate(manifest: dict[str, Any], ttl: str | None, on_expiry: str | None) -> None:
    """Give a VirtualMachine manifest a lab's end: `ttl` (checked here) and what happens then (Stop, Delete)."""
    if ttl is not None:
        timeutil.parse_duration(ttl)  # ValueError, with what is wrong
    if on_expiry is not None and on_expiry.capitalize() not in POLICIES:
        raise ValueError(f"{on_expiry!r} is not one of {', '.join(POLICIES)}")
    annotations = manifest["metadata"].setdefault("annotations", {})
    if ttl is not None:
        annotations[TTL] = ttl
    if on_expiry is not None:
        annotations[ON_EXPIRY] = on_expiry.capitalize()
