"""Live migration, as pure decisions: is a VMI migratable, and what one VirtualMachineInstanceMigration needs next.

KubeVirt's flow: Pending → Scheduling (the controller made the target launcher pod) → Scheduled (bound)
→ PreparingTarget (it runs; the target node's handler prepares it) → TargetReady (the target handler
wrote its proxy's address into the VMI's migrationState) → Running (the source handler started the
launcher's migration) → Succeeded (the source said completed: the VMI moves to the target node) or
Failed (the reason in migrationState.failureReason and the migration's Failed condition). Deleting a
migration that runs asks the source to abort; a finalizer holds the object until it has.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvtool.api import timeutil
from kvtool.api.types import MIGRATION_JOB_LABEL, claim_volumes
from kvtool.controller import conditions
from kvtool.deploy import manifests

CONFIG_MAP = manifests.MIGRATION_CONFIG
JOB_LABEL = MIGRATION_JOB_LABEL  # on a target launcher pod: the migration it was made for
TARGET_NODE_LABEL = "kvtool.io/migrationTargetNodeName"  # on a migration once its target pod is bound
VMI_NAME_LABEL = "kvtool.io/vmi"
FINALIZER = "kvtool.io/migration"
LIVE_MIGRATABLE = "LiveMigratable"
ACTIVE = ("Pending", "Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Running")
FINAL = ("Succeeded", "Failed")
ORDER = {p: i for i, p in enumerate(("", *ACTIVE, "Succeeded"))} | {"Failed": 99}
# KubeVirt: an unschedulable target pod fails the migration after 5 minutes; anything else stuck before the
# source starts sending, after 15.
UNSCHEDULABLE_TIMEOUT = 300.0
PENDING_TIMEOUT = 900.0
EVICTION_STRATEGIES = ("None", "LiveMigrate", "LiveMigrateIfPossible", "External")


@dataclass(frozen=True)
class Config:
    """The cluster's migration setting (ConfigMap kvtool-system/kvtool-migration), KubeVirt's names and defaults."""

    eviction_strategy: str = "None"
    parallel_per_cluster: int = 5
    parallel_outbound_per_node: int = 2
    completion_timeout_per_gib: int = 150
    progress_timeout: int = 150
    allow_auto_converge: bool = False
    allow_post_copy: bool = False
    bandwidth_mib: int = 0
    error: str = ""

    @classmethod
    def from_data(cls, data: Mapping[str, str] | None) -> Config:
        data = data or {}
        try:
            def number(key: str, default: int, low: int) -> int:
                value = int(str(data.get(key, default)).strip())
                if value < low:
                    raise ValueError(f"{key} must be at least {low}, got {value}")
                return value

            def flag(key: str) -> bool:
                value = str(data.get(key, "false")).strip().lower()
                if value not in ("true", "false"):
                    raise ValueError(f"{key} must be true or false, got {value!r}")
                return value == "true"

            strategy = str(data.get("evictionStrategy", "None")).strip()
            if strategy not in EVICTION_STRATEGIES:
                raise ValueError(f"evictionStrategy must be one of {', '.join(EVICTION_STRATEGIES)}, got {strategy!r}")
            return cls(strategy, number("parallelMigrationsPerCluster", 5, 1),
                       number("parallelOutboundMigrationsPerNode", 2, 1), number("completionTimeoutPerGiB", 150, 1),
                       number("progressTimeout", 150, 1), flag("allowAutoConverge"), flag("allowPostCopy"),
                       number("bandwidthPerMigrationMiB", 0, 0))
        except ValueError as exc:
            return cls(error=f"ConfigMap {manifests.NAMESPACE}/{CONFIG_MAP}: {exc}")

    def migration_configuration(self) -> dict[str, Any]:
        """What migrationState.migrationConfiguration records (and the source launcher obeys)."""
        return {"completionTimeoutPerGiB": self.completion_timeout_per_gib, "progressTimeout": self.progress_timeout,
                "allowAutoConverge": self.allow_auto_converge, "allowPostCopy": self.allow_post_copy,
                "bandwidthPerMigrationMiB": self.bandwidth_mib,
                "parallelMigrationsPerCluster": self.parallel_per_cluster,
                "parallelOutboundMigrationsPerNode": self.parallel_outbound_per_node}


# ---- is a VMI migratable?


def node_local_claim(pvc: Mapping[str, Any], pv: Mapping[str, Any] | None) -> bool:
    """A claim that is not shared but lives in a node's own directory (a hostPath volume): the migration copies
    its disk to the target node's directory, like an emptyDisk."""
    modes = (pvc.get("spec") or {}).get("accessModes") or []
    return "ReadWriteMany" not in modes and bool(((pv or {}).get("spec") or {}).get("hostPath"))


def migratable(spec: Mapping[str, Any], claims: Mapping[str, dict[str, Any] | None],
               volumes: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The LiveMigratable condition for a VMI spec, given its claims (None: not found) and their bound volumes.
    KubeVirt's rules: the pod network only through masquerade (bridge gives the guest the pod's IP, which the
    target pod does not have), claims shared (ReadWriteMany), hostDisks only when marked shared; and kvtool's
    block migration of a hostPath claim (the target node's directory gets a copy; a `local` volume, pinned to its
    node, cannot follow)."""
    volumes = volumes or {}
    for iface in ((spec.get("domain") or {}).get("devices") or {}).get("interfaces") or []:
        if "bridge" in iface:
            return conditions.condition(
                LIVE_MIGRATABLE, False, "InterfaceNotLiveMigratable",
                f"interface {iface.get('name')!r} uses the bridge binding: the guest holds its pod's IP, which the "
                "target pod cannot take over; use masquerade to make the VM migratable")
    for volume_name, claim in claim_volumes(spec):
        pvc = claims.get(claim)
        if pvc is None:
            return conditions.condition(LIVE_MIGRATABLE, False, "DisksNotLiveMigratable",
                                        f"volume {volume_name!r}: PersistentVolumeClaim {claim!r} was not found")
        modes = (pvc.get("spec") or {}).get("accessModes") or []
        pv = volumes.get((pvc.get("spec") or {}).get("volumeName") or "")
        if ((pv or {}).get("spec") or {}).get("local") is not None:
            return conditions.condition(
                LIVE_MIGRATABLE, False, "DisksNotLiveMigratable",
                f"volume {volume_name!r}: PersistentVolumeClaim {claim!r} is on a local volume pinned to its node; "
                "its disk cannot follow the VM to another node")
        if "ReadWriteMany" not in modes and not node_local_claim(pvc, pv):
            return conditions.condition(
                LIVE_MIGRATABLE, False, "DisksNotLiveMigratable",
                f"volume {volume_name!r}: PersistentVolumeClaim {claim!r} is {', '.join(modes) or 'not shared'}; "
                "live migration needs shared (ReadWriteMany) claims, so both nodes can open the disk")
    for volume in spec.get("volumes") or []:
        host = volume.get("hostDisk")
        if host is not None and not host.get("shared"):
            return conditions.condition(
                LIVE_MIGRATABLE, False, "DisksNotLiveMigratable",
                f"volume {volume.get('name')!r}: a hostDisk is node-local unless marked shared: true")
    return conditions.condition(LIVE_MIGRATABLE, True, "", "")


def migration_method(spec: Mapping[str, Any], claims: Mapping[str, dict[str, Any] | None] | None = None,
                     volumes: Mapping[str, dict[str, Any]] | None = None) -> str:
    """BlockMigration when node-local writable disks are copied along, as KubeVirt reports it."""
    for _volume, claim in claim_volumes(spec):
        pvc = (claims or {}).get(claim)
        if pvc and node_local_claim(pvc, (volumes or {}).get((pvc.get("spec") or {}).get("volumeName") or "")):
            return "BlockMigration"
    for volume in spec.get("volumes") or []:
        if any(k in volume for k in ("containerDisk", "emptyDisk", "ephemeral")):
            return "BlockMigration"
    return "LiveMigration"


def eviction_strategy(vmi: Mapping[str, Any], cfg: Config) -> str:
    return str((vmi.get("spec") or {}).get("evictionStrategy") or cfg.eviction_strategy)


# ---- one migration


@dataclass
class Decision:
    phase: str | None = None  # the migration's next phase
    message: str = ""  # why it failed (or waits), for its condition
    vmi_status: dict[str, Any] | None = None  # a merge patch of the VMI's status
    labels: dict[str, str] = field(default_factory=dict)  # on the migration
    create_target_pod: bool = False
    delete_pods: list[str] = field(default_factory=list)
    add_finalizer: bool = False
    remove_finalizer: bool = False
    requeue_after: float | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)


def target_pod_name(vmi: Mapping[str, Any], migration: Mapping[str, Any]) -> str:
    return f"virt-launcher-{vmi['metadata']['name'][:36]}-{migration['metadata']['uid'][:5]}-mig"


def target_pods(migration: Mapping[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    uid = migration["metadata"]["uid"]
    return [p for p in pods if (p["metadata"].get("labels") or {}).get(JOB_LABEL) == uid]


def ended(state: Mapping[str, Any]) -> bool:
    return bool(state.get("completed") or state.get("failed"))


def _pod_ended(pod: Mapping[str, Any] | None) -> str:
    """Why a target pod can no longer take the guest ('' while it can)."""
    if pod is None:
        return "the target pod is gone"
    if pod["metadata"].get("deletionTimestamp"):
        return f"the target pod {pod['metadata']['name']} is being deleted"
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        detail = next((((cs.get("state") or {}).get("terminated") or {}).get("reason", "")
                       for cs in status.get("containerStatuses") or []), "")
        suffix = f": {detail}" if detail else ""
        return f"the target pod {pod['metadata']['name']} ended ({status.get('phase')}{suffix})"
    return ""


def _unschedulable(pod: Mapping[str, Any]) -> str:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return c.get("message") or c.get("reason") or "unschedulable"
    return ""


def fresh_state(migration: Mapping[str, Any], vmi: Mapping[str, Any], source_pod: str, target_pod: str,
                cfg: Config) -> dict[str, Any]:
    """A new migrationState as a merge patch: every key of the previous one it does not set is cleared."""
    status = vmi.get("status") or {}
    new = {"migrationUid": migration["metadata"]["uid"], "sourceNode": status.get("nodeName", ""),
           "sourcePod": source_pod, "targetPod": target_pod, "mode": "PreCopy", "completed": False, "failed": False,
           "abortRequested": False, "migrationConfiguration": cfg.migration_configuration()}
    old = status.get("migrationState") or {}
    return {**dict.fromkeys(k for k in old if k not in new), **new}


def decide(migration: dict[str, Any], vmi: dict[str, Any] | None, pods: list[dict[str, Any]], cfg: Config,
           busy: tuple[int, int], now: dt.datetime) -> Decision:
    """busy: (migrations of the cluster, outbound ones of the VMI's node) under way besides this one."""
    d = Decision()
    meta = migration["metadata"]
    uid = meta["uid"]
    phase = (migration.get("status") or {}).get("phase") or ""
    finalizers = meta.get("finalizers") or []
    vstatus = (vmi or {}).get("status") or {}
    state = vstatus.get("migrationState") or {}
    ours = state.get("migrationUid") == uid
    targets = target_pods(migration, pods)
    target = targets[0] if targets else None

    if meta.get("deletionTimestamp"):
        return _deleting(d, phase, state if ours else {}, vmi, targets, finalizers)
    if phase in FINAL:
        return d
    if FINALIZER not in finalizers:
        d.add_finalizer = True

    def fail(message: str, reason: str = "MigrationFailed") -> Decision:
        d.phase, d.message = "Failed", message
        d.events.append(("Warning", reason, message))
        if vmi is not None and ours and not ended(state):
            d.vmi_status = {"migrationState": {"failed": True, "failureReason": message[:1000],
                                               "endTimestamp": timeutil.stamp(now)}}
        if target is not None:
            d.delete_pods = [target["metadata"]["name"]]
        if vmi is not None and (stale := _stale_active(vstatus)):
            d.vmi_status = {**(d.vmi_status or {}), "activePods": stale}
        return d

    if vmi is None:
        return fail(f"VirtualMachineInstance {meta['namespace']}/{migration['spec']['vmiName']} does not exist")
    if phase and vstatus.get("phase") in FINAL and not state.get("completed"):
        return fail(f"the VMI ended ({vstatus.get('phase')}: {vstatus.get('reason') or 'no reason given'}) during "
                    "the migration")
    if not phase or phase == "Pending":
        if cfg.error:
            return fail(cfg.error, "InvalidMigrationConfig")
        if vstatus.get("phase") != "Running" or vmi["metadata"].get("deletionTimestamp"):
            return fail(f"the VMI is not running (phase {vstatus.get('phase') or 'Pending'})", "NotMigratable")
        cond = conditions.get(vmi, LIVE_MIGRATABLE)
        if cond is None:
            d.phase = "Pending" if not phase else None
            d.requeue_after = 1.0  # the VMI's sync says whether it can move
            return d
        if cond.get("status") != "True":
            return fail(f"the VMI is not live-migratable: {cond.get('message')}", "NotMigratable")
        if state.get("migrationUid") and not ours and not ended(state):
            return fail(f"migration {state['migrationUid']} of this VMI is still in progress", "MigrationInProgress")
        cluster, node = busy
        if cluster >= cfg.parallel_per_cluster or node >= cfg.parallel_outbound_per_node:
            d.phase = "Pending" if not phase else None
            d.message = (f"waiting: {cluster} migrations under way in the cluster (at most "
                         f"{cfg.parallel_per_cluster}), {node} leaving node {vstatus.get('nodeName')} (at most "
                         f"{cfg.parallel_outbound_per_node})")
            d.requeue_after = 2.0
            return d
        running = {uid for uid, node in (vstatus.get("activePods") or {}).items() if node == vstatus.get("nodeName")}
        source = next((p["metadata"]["name"] for p in pods if p["metadata"].get("uid") in running), "")
        d.create_target_pod = target is None
        d.phase = "Scheduling"
        d.vmi_status = {"migrationState": fresh_state(migration, vmi, source, target_pod_name(vmi, migration), cfg)}
        d.events.append(("Normal", "Migrating", f"migrating from node {vstatus.get('nodeName')}"))
        return d
    if not ours:
        return fail("the VMI's migrationState belongs to another migration now")
    if state.get("completed"):
        return _completed(d, vmi, state, target)
    if state.get("failed"):
        d.phase, d.message = "Failed", state.get("failureReason") or "the migration failed"
        d.events.append(("Warning", "MigrationFailed", d.message))
        if target is not None:
            d.delete_pods = [target["metadata"]["name"]]
        if stale := _stale_active(vstatus):
            d.vmi_status = {"activePods": stale}
        return d
    gone = _pod_ended(target) if phase != "Scheduling" or target is not None else ""
    if gone:
        if state.get("startTimestamp"):
            # The source's job breaks when its peer does; ask it to stop in case it has not noticed yet.
            if not state.get("abortRequested"):
                d.vmi_status = {"migrationState": {"abortRequested": True, "failureReason": gone[:1000]}}
            return d
        return fail(f"{gone} before the migration started", "TargetPodFailed")
    started = timeutil.parse(meta.get("creationTimestamp"))
    age = (now - started).total_seconds() if started else 0.0
    if phase in ("Scheduling", "Scheduled", "PreparingTarget", "TargetReady") and age > PENDING_TIMEOUT:
        return fail(f"the target was not ready within {PENDING_TIMEOUT:.0f} s", "MigrationTimeout")
    if phase == "Scheduling":
        node = (target or {}).get("spec", {}).get("nodeName")
        if target is not None and not node:
            why = _unschedulable(target)
            if why and age > UNSCHEDULABLE_TIMEOUT:
                return fail(f"no node can take the target pod: {why}", "TargetUnschedulable")
            d.message = f"target pod not scheduled yet{': ' + why if why else ''}"
            d.requeue_after = 5.0
            return d
        if target is None or not node:
            return d
        d.phase = "Scheduled"
        d.labels[TARGET_NODE_LABEL] = node
        d.vmi_status = {"migrationState": {"targetNode": node},
                        "activePods": {target["metadata"]["uid"]: node}}
        return d
    assert target is not None
    if phase == "Scheduled":
        if (target.get("status") or {}).get("phase") == "Running":
            d.phase = "PreparingTarget"
        return d
    if phase == "PreparingTarget":
        if state.get("targetNodeAddress") and state.get("targetDirectMigrationNodePorts"):
            d.phase = "TargetReady"
        return d
    if phase == "TargetReady":
        if state.get("startTimestamp"):
            d.phase = "Running"
        if state.get("abortRequested"):
            d.requeue_after = 2.0
        return d
    return d


def _stale_active(vstatus: Mapping[str, Any]) -> dict[str, None]:
    """activePods entries of a migration that ended without the guest moving (its target pod, gone or going): the
    merge patch that removes them."""
    return {uid: None for uid, node in (vstatus.get("activePods") or {}).items() if node != vstatus.get("nodeName")}


def _completed(d: Decision, vmi: dict[str, Any], state: Mapping[str, Any], target: dict[str, Any] | None) -> Decision:
    """The guest runs on the target: the VMI moves there (node, active pods), the migration succeeds. The target's
    handler watches VMIs by status.nodeName: this status write hands the VMI over."""
    vstatus = vmi.get("status") or {}
    node = state.get("targetNode", "")
    d.phase = "Succeeded"
    d.events.append(("Normal", "Migrated", f"migrated from node {state.get('sourceNode')} to node {node}"))
    if vstatus.get("nodeName") != node and target is not None:
        active = {uid: None for uid in vstatus.get("activePods") or {}}
        active[target["metadata"]["uid"]] = node
        d.vmi_status = {"nodeName": node, "activePods": active, "evacuationNodeName": None}
    return d


def _deleting(d: Decision, phase: str, state: Mapping[str, Any], vmi: dict[str, Any] | None,
              targets: list[dict[str, Any]], finalizers: list[str]) -> Decision:
    """A deleted migration: abort it if it runs, then clean up and let it go."""
    if state and not ended(state):
        if state.get("startTimestamp"):
            if not state.get("abortRequested"):
                d.vmi_status = {"migrationState": {"abortRequested": True,
                                                   "failureReason": "cancelled: the migration was deleted"}}
            d.requeue_after = 2.0
            return d  # the source reports the abort's outcome, which ends the migration
        d.vmi_status = {"migrationState": {"failed": True, "abortRequested": True, "abortStatus": "Succeeded",
                                           "failureReason": "the migration was cancelled before it started",
                                           "endTimestamp": timeutil.stamp()}}
    completed = bool(state.get("completed"))
    if not completed:
        d.delete_pods = [p["metadata"]["name"] for p in targets if not p["metadata"].get("deletionTimestamp")]
        if vmi is not None and (stale := _stale_active(vmi.get("status") or {})):
            d.vmi_status = {**(d.vmi_status or {}), "activePods": stale}
    if phase not in FINAL and state:
        d.phase = "Succeeded" if completed else "Failed"
        d.message = "" if completed else "cancelled: the migration was deleted"
    if FINALIZER in finalizers:
        d.remove_finalizer = True
    return d
