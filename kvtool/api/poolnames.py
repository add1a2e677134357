"""How a VirtualMachinePool names its VMs (<pool>-<index>, the lowest free index first: KubeVirt's naming) and
which go first on scale-in. Shared by the controller, which makes them, and the plan, which shows them."""

from __future__ import annotations

import re
from collections.abc import Collection, Container, Mapping
from typing import Any

_INDEX = re.compile(r"^(?P<pool>.+)-(?P<index>[0-9]+)$")
DEFAULT_REPLICAS = 1
DEFAULT_SORT_POLICY = "Random"  # KubeVirt's default when no selectionPolicy is given


def vm_name(pool: str, index: int) -> str:
    return f"{pool}-{index}"


def index_of(pool: str, vm: str) -> int | None:
    m = _INDEX.match(vm)
    return int(m["index"]) if m and m["pool"] == pool else None


def next_indexes(pool: str, taken: Container[str], count: int) -> list[int]:
    """The indexes the next `count` VMs get: the lowest ones whose names no VM has."""
    out: list[int] = []
    index = 0
    while len(out) < count:
        if vm_name(pool, index) not in taken:
            out.append(index)
        index += 1
    return out


def next_names(pool: str, taken: Collection[str], count: int) -> list[str]:
    """The names the next `count` VMs get (next_indexes)."""
    return [vm_name(pool, i) for i in next_indexes(pool, taken, count)]


def replicas(spec: Mapping[str, Any]) -> int:
    return int(spec.get("replicas", DEFAULT_REPLICAS))


def sort_policy(spec: Mapping[str, Any]) -> str:
    proactive = (spec.get("scaleInStrategy") or {}).get("proactive") or {}
    return str((proactive.get("selectionPolicy") or {}).get("sortPolicy", DEFAULT_SORT_POLICY))


def unmanaged_scale_in(spec: Mapping[str, Any]) -> bool:
    return "unmanaged" in (spec.get("scaleInStrategy") or {})
