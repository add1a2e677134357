"""What the controller does for one VirtualMachineInstance, as a pure function of it and its pods.

The controller owns the VMI's early phases (Pending → Scheduling → Scheduled)
and its end when the launcher pod ends; the node's handler owns Running and
the domain's own end. Phases only move forward, and writes carry the
resourceVersion they were computed from, so the two writers cannot undo
each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvtool.api import timeutil
from kvtool.api.types import MIGRATION_JOB_LABEL, VMI_UID_LABEL
from kvtool.controller import conditions

POD_VANISHED = "PodVanished"  # the reason of a VMI whose launcher pod went (the operator checks it first)
ORDER = {None: 0, "Pending": 1, "Scheduling": 2, "Scheduled": 3, "Running": 4, "Succeeded": 5, "Failed": 5,
         "Unknown": 4}


@dataclass
class VMIDecision:
    create_pod: bool = False
    status: dict[str, Any] | None = None  # a merge patch of status, or None
    events: list[tuple[str, str, str]] = field(default_factory=list)


def pod_name(vmi: dict[str, Any]) -> str:
    """Deterministic, so a controller restarted mid-create cannot make a second pod."""
    meta = vmi["metadata"]
    return f"virt-launcher-{meta['name'][:42]}-{meta['uid'][:5]}"


def launcher_pods(vmi: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    uid = vmi["metadata"]["uid"]
    return [p for p in pods if (p["metadata"].get("labels") or {}).get(VMI_UID_LABEL) == uid]


def current_pods(vmi: dict[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The launcher pods that run (or will run) the VMI itself. A live migration adds a target pod on another
    node and leaves the source pod behind (completed) on the old one, and after migrations back and forth a
    node holds several: once the VMI has a node, its pod is the active one there; before, the one no migration
    made."""
    mine = launcher_pods(vmi, pods)
    status = vmi.get("status") or {}
    if node := status.get("nodeName"):
        if active := {uid for uid, on in (status.get("activePods") or {}).items() if on == node}:
            return [p for p in mine if p["metadata"].get("uid") in active]
        return [p for p in mine if (p.get("spec") or {}).get("nodeName") == node]
    return [p for p in mine if not (p["metadata"].get("labels") or {}).get(MIGRATION_JOB_LABEL)]


def _pod_condition(pod: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def _termination(pod: dict[str, Any]) -> tuple[str, str]:
    """(reason, message) for a launcher pod that ended."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            code = term.get("exitCode")
            detail = term.get("message") or term.get("reason") or ""
            return (f"LauncherExited{code}", f"launcher exited with code {code}" + (f": {detail}" if detail else ""))
    return status.get("reason") or "PodFailed", status.get("message") or f"launcher pod {status.get('phase')}"


def _readiness(vmi: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any] | None:
    """Ready for a running VMI with a readinessProbe: the kubelet probes the guest through the pod (the probe is
    the compute container's), so the pod's Ready is the guest's. None: not this function's to say (no probe,
    or the domain is not running, which the handler reports)."""
    status = vmi.get("status") or {}
    if not (vmi.get("spec") or {}).get("readinessProbe") or status.get("phase") != "Running" \
            or status.get("domainState") != "Running":
        return None
    ready = _pod_condition(pod, "Ready") or {}
    if ready.get("status") == "True":
        return conditions.condition("Ready", True, "GuestReady", "the readiness probe passes")
    detail = ready.get("message") or "the kubelet has not probed it yet"
    return conditions.condition("Ready", False, "GuestNotReady", f"the readiness probe does not pass ({detail})")


def _migrated_away(status: dict[str, Any]) -> bool:
    """A live migration started from the VMI's node and has not failed: its source launcher ends with 0 when the
    guest has left, before the migration's sync moved the VMI to the target."""
    state = status.get("migrationState") or {}
    return bool(state.get("startTimestamp")) and not state.get("failed") and \
        state.get("sourceNode") == status.get("nodeName") != state.get("targetNode")


def decide(vmi: dict[str, Any], pods: list[dict[str, Any]], node_ready: bool | None) -> VMIDecision:
    """node_ready: whether the VMI's node is Ready (None when unknown or not yet scheduled)."""
    d = VMIDecision()
    if vmi["metadata"].get("deletionTimestamp"):
        return d
    status = dict(vmi.get("status") or {})
    phase = status.get("phase")
    if phase in ("Succeeded", "Failed"):
        return d
    mine = current_pods(vmi, pods)
    live = [p for p in mine if not p["metadata"].get("deletionTimestamp")]
    new: dict[str, Any] = {}
    conds: list[dict[str, Any]] = []
    if not mine:
        if ORDER.get(phase, 0) >= ORDER["Scheduling"]:
            new.update(phase="Failed", reason=POD_VANISHED)
            conds.append(conditions.condition("Failure", True, POD_VANISHED, "the launcher pod disappeared"))
        else:
            d.create_pod = True
            new["phase"] = "Scheduling"
    else:
        pod = (live or mine)[0]
        pstatus = pod.get("status") or {}
        node = pod.get("spec", {}).get("nodeName")
        # Bound, its containers not started yet: the node and the pod are written now, not when
        # the pod runs. The node's handler starts on them and syncs as soon as the launcher listens; the
        # kubelet reports the pod Running only up to a second later (its PLEG relists every second), which was
        # the largest part of kvtool's start overhead. It costs one status write per VMI.
        sched = _pod_condition(pod, "PodScheduled")
        if sched:
            conds.append(conditions.condition("PodScheduled", sched.get("status", "Unknown"),
                                              sched.get("reason", ""), sched.get("message", "")))
        if node:
            new["nodeName"] = node
            if (status.get("activePods") or {}).get(pod["metadata"]["uid"]) != node:
                new["activePods"] = {pod["metadata"]["uid"]: node}  # merged: a migration target's entry stays
        if pstatus.get("phase") == "Succeeded" and _migrated_away(status):
            return d  # the guest left this pod for the migration's target; the migration's sync moves the VMI
        if pstatus.get("phase") in ("Failed", "Succeeded"):
            reason, message = _termination(pod)
            if pstatus.get("phase") == "Succeeded":
                new.update(phase="Succeeded", reason="LauncherCompleted")
            else:
                new.update(phase="Failed", reason=reason)
                conds.append(conditions.condition("Failure", True, reason, message))
        elif not mine[0]["metadata"].get("deletionTimestamp") and pstatus.get("phase") == "Running" and node:
            new["phase"] = "Scheduled"
        elif node or phase is None or phase == "Pending":
            new["phase"] = "Scheduling"
        probed = _readiness(vmi, pod)
        if node and node_ready is False and ORDER.get(phase, 0) >= ORDER["Running"]:
            conds.append(conditions.condition("Ready", False, "NodeUnreachable",
                                              f"node {node} is not ready: its kubelet stopped reporting"))
        elif node_ready and phase == "Running" and (conditions.get(vmi, "Ready") or {}).get("reason") == \
                "NodeUnreachable":
            # The node is back and the pod still runs: the mark was ours, and the domain outlived the blip
            # (had it not, the pod's end or the handler's report would say so).
            conds.append(probed or conditions.condition("Ready", True, "NodeReachable", f"node {node} is ready again"))
        elif probed is not None:
            conds.append(probed)
    # Phases only move forward (Failed/Succeeded end everything).
    if "phase" in new and ORDER.get(new["phase"], 0) <= ORDER.get(phase, 0) and new["phase"] != phase:
        del new["phase"]
    if new.get("phase") == phase:
        new.pop("phase", None)
    if "phase" in new:
        stamps = list(status.get("phaseTransitionTimestamps") or [])
        stamps.append({"phase": new["phase"], "phaseTransitionTimestamp": timeutil.stamp_precise()})
        new["phaseTransitionTimestamps"] = stamps
    if conds:
        old = status.get("conditions") or []
        kept = [c for c in old if c.get("type") not in {n["type"] for n in conds}]
        merged = kept + conditions.merge(old, conds)
        if not conditions.same(old, merged):
            new["conditions"] = merged
    if "phase" not in new:
        new.pop("phaseTransitionTimestamps", None)
    changed = {k: v for k, v in new.items() if status.get(k) != v}
    if changed:
        d.status = changed
    return d
