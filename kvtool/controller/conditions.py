"""Status conditions: build them, and keep lastTransitionTime when nothing changed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kvtool.api import timeutil


def condition(ctype: str, status: bool | str, reason: str = "", message: str = "") -> dict[str, Any]:
    value = status if isinstance(status, str) else ("True" if status else "False")
    return {"type": ctype, "status": value, "reason": reason, "message": message[:4000]}


def get(obj: Mapping[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def is_true(obj: Mapping[str, Any] | None, ctype: str) -> bool:
    c = get(obj, ctype)
    return bool(c and c.get("status") == "True")


def merge(old: Iterable[Mapping[str, Any]] | None, new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """New conditions, keeping each one's lastTransitionTime while its status stays the same."""
    before = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        prev = before.get(c["type"])
        kept = prev.get("lastTransitionTime") if prev is not None and prev.get("status") == c["status"] else None
        out.append({**c, "lastTransitionTime": kept or timeutil.stamp()})
    return out


def put(old: Iterable[Mapping[str, Any]] | None, new: dict[str, Any]) -> list[dict[str, Any]]:
    """All of `old` with one condition set (added, or replaced in place), its transition time kept as in merge."""
    old = list(old or [])
    merged = merge(old, [new])[0]
    out = [merged if c.get("type") == new["type"] else dict(c) for c in old]
    return out if any(c.get("type") == new["type"] for c in old) else [*out, merged]


def same(old: Iterable[Mapping[str, Any]] | None, new: Iterable[Mapping[str, Any]]) -> bool:
    def key(cs: Iterable[Mapping[str, Any]] | None) -> list[tuple[Any, ...]]:
        return sorted((c.get("type"), c.get("status"), c.get("reason", ""), c.get("message", "")) for c in cs or [])

    return key(old) == key(new)


def status_unchanged(current: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Would writing `new` over `current` change nothing a reader sees? Every field of `new` equal, conditions
    compared as `same` does (their timestamps aside): a controller skips such a write, so a resync costs none."""
    current = current or {}
    return all(current.get(k) == v for k, v in new.items() if k != "conditions") and \
        same(current.get("conditions"), new.get("conditions") or [])
