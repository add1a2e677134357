"""One VM's start as a timeline: every step the components already record, in order, with the time each took.

Read from the objects alone (no logs): the VM's and VMI's creation, the VMI's phase transitions (kept with
millisecond precision by the controller and handler), the launcher pod's creation, scheduling, container
start and readiness, and the VMI's Ready condition (the guest is up). Kubernetes' own timestamps have
one-second precision; the rows say which is which. Pure: `kvtool status NAME --timeline` and the
benchmarks fetch the objects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Step:
    at: dt.datetime
    what: str
    source: str  # the object and field it was read from
    precise: bool  # milliseconds (kvtool's phase stamps) or seconds (Kubernetes metadata and conditions)


def _parse(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _condition_time(obj: Mapping[str, Any], ctype: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return c.get("lastTransitionTime")
    return None


def steps(vm: Mapping[str, Any], vmi: Mapping[str, Any] | None,
          pods: Iterable[Mapping[str, Any]] = ()) -> list[Step]:
    """The VM's start, in time order (steps whose time is not recorded are left out)."""
    found: list[tuple[Any, str, str, bool]] = [
        (vm.get("metadata", {}).get("creationTimestamp"), "VM created", "vm.metadata.creationTimestamp", False)]
    if vmi is not None:
        found.append((vmi.get("metadata", {}).get("creationTimestamp"), "VMI created",
                      "vmi.metadata.creationTimestamp", False))
        for t in (vmi.get("status") or {}).get("phaseTransitionTimestamps") or []:
            found.append((t.get("phaseTransitionTimestamp"), f"VMI {t.get('phase')}",
                          "vmi.status.phaseTransitionTimestamps", True))
        found.append((_condition_time(vmi, "Ready"), "VMI Ready (the guest is up)", "vmi Ready condition", False))
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "")
        found.append((pod.get("metadata", {}).get("creationTimestamp"), f"pod {name} created",
                      "pod.metadata.creationTimestamp", False))
        found.append((_condition_time(pod, "PodScheduled"), "pod scheduled", "pod PodScheduled condition", False))
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            started = ((cs.get("state") or {}).get("running") or {}).get("startedAt")
            found.append((started, f"container {cs.get('name')} started", "pod containerStatuses", False))
        found.append((_condition_time(pod, "Ready"), "pod Ready", "pod Ready condition", False))
    out = [Step(at, what, source, precise) for raw, what, source, precise in found if (at := _parse(raw))]
    return sorted(out, key=lambda s: (s.at, not s.precise))


def rows(timeline: list[Step]) -> list[dict[str, str]]:
    """Rows for a table: when, seconds since the first step, seconds since the previous one."""
    if not timeline:
        return []
    first, previous = timeline[0].at, timeline[0].at
    out = []
    for step in timeline:
        out.append({"at": step.at.strftime("%H:%M:%S.%f")[:-3] if step.precise else step.at.strftime("%H:%M:%S"),
                    "since_create": f"+{(step.at - first).total_seconds():.2f}s",
                    "step": f"{(step.at - previous).total_seconds():.2f}s",
                    "what": step.what, "from": step.source})
        previous = step.at
    return out
