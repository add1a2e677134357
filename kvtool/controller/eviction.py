"""Evictions of launcher pods, as KubeVirt's eviction webhook answers them: migrate instead of kill.

`kubectl drain` (and anything else using the eviction API) asks before it deletes a pod. For a VM whose
evictionStrategy (or the cluster's default) is LiveMigrate, the answer for its launcher pod is "not
now" - HTTP 429, which drain retries every 5 s - and the VMI gets `status.evacuationNodeName`, which
makes the controller migrate it away. Once the guest has left, the old pod is evictable like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvtool.api.types import LAUNCHER_LABEL_KEY, LAUNCHER_LABEL_VALUE, MIGRATION_JOB_LABEL
from kvtool.controller import conditions
from kvtool.controller import migration as migration_logic

TOO_MANY_REQUESTS = 429


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str = ""
    evacuate: str = ""  # set the VMI's evacuationNodeName to this node


def verdict(pod: Mapping[str, Any] | None, vmi: Mapping[str, Any] | None, cfg: migration_logic.Config) -> Verdict:
    """What to answer an eviction of `pod` (None: gone already)."""
    if pod is None or (pod["metadata"].get("labels") or {}).get(LAUNCHER_LABEL_KEY) != LAUNCHER_LABEL_VALUE:
        return Verdict(True)
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") or vmi is None:
        return Verdict(True)
    status = vmi.get("status") or {}
    if status.get("phase") not in ("Running", "Scheduled") or vmi["metadata"].get("deletionTimestamp"):
        return Verdict(True)
    strategy = migration_logic.eviction_strategy(vmi, cfg)
    if strategy == "None":
        return Verdict(True)
    name = f"{vmi['metadata']['namespace']}/{vmi['metadata']['name']}"
    node = (pod.get("spec") or {}).get("nodeName") or ""
    state = status.get("migrationState") or {}
    if (pod["metadata"].get("labels") or {}).get(MIGRATION_JOB_LABEL) and node != status.get("nodeName"):
        # A migration's target: the migration decides its fate.
        if state.get("targetPod") == pod["metadata"]["name"] and not migration_logic.ended(state):
            return Verdict(False, f"the pod is the target of VMI {name}'s live migration in progress")
        return Verdict(True)
    if node != status.get("nodeName"):
        return Verdict(True)  # the guest left this pod
    if strategy == "External":
        return Verdict(False, f"VMI {name} has evictionStrategy External: its evacuation is left to another "
                              "controller", evacuate=node)
    cond = conditions.get(vmi, migration_logic.LIVE_MIGRATABLE) or {}
    if cond.get("status") == "False":
        if strategy == "LiveMigrateIfPossible":
            return Verdict(True)
        return Verdict(False, f"VMI {name} has evictionStrategy LiveMigrate but cannot be live-migrated: "
                              f"{cond.get('message')}; stop the VM or change its evictionStrategy to drain the node")
    return Verdict(False, f"eviction triggered the evacuation of VMI {name}: it is live-migrating off node {node}",
                   evacuate=node)


def evacuation_pending(vmi: Mapping[str, Any]) -> bool:
    """The VMI was asked to leave its node and no migration of it is under way: the controller starts one."""
    status = vmi.get("status") or {}
    node = status.get("evacuationNodeName")
    if not node or node != status.get("nodeName") or status.get("phase") != "Running":
        return False
    state = status.get("migrationState") or {}
    return not state.get("migrationUid") or migration_logic.ended(state)
