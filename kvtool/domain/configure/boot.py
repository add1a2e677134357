"""Boot order across disks and interfaces: read by the os step and by each device step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvtool.domain import spec as s


def boot_order(entry: Mapping[str, Any], path: str) -> int | None:
    return s.integer(entry.get("bootOrder"), f"{path}.bootOrder", default=None, minimum=1, maximum=65535)


def boot_orders(spec: Mapping[str, Any]) -> dict[int, str]:
    """bootOrder -> field path of every disk and interface that has one; a number used twice is an error."""
    dom = s.mapping(s.mapping(spec, "spec").get("domain"), "spec.domain")
    devices = s.mapping(dom.get("devices"), "spec.domain.devices")
    seen: dict[int, str] = {}
    for kind in ("disks", "interfaces"):
        for i, entry in enumerate(s.sequence(devices.get(kind), f"spec.domain.devices.{kind}")):
            path = f"spec.domain.devices.{kind}[{i}]"
            order = boot_order(s.mapping(entry, path), path)
            if order is None:
                continue
            if order in seen:
                raise s.ConversionError(f"{path}.bootOrder", f"{order} is already used by {seen[order]}")
            seen[order] = path
    return seen
