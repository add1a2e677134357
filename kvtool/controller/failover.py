"""Fenced failover, as pure decisions: when a node counts as lost, what its VMIs say, which may move.

A node is lost when both of its heartbeats stop for the grace period: the kubelet's Node Lease
and the kvtool handler's own Lease. One alone is not enough: a restarting kubelet leaves the VMs
running and the handler reporting, and a crashing handler pod leaves the kubelet renewing.

Nothing is restarted elsewhere until the node is fenced (its VMs provably stopped by a fence
agent), because a node that looks dead may still run the VM and write its disk. KubeVirt stops
short of this (kubevirt/kubevirt#2443); medik8s' Fence Agents Remediation is the model here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kvtool.api import timeutil
from kvtool.api.types import claim_volumes
from kvtool.controller import conditions
from kvtool.deploy import manifests

CONFIG_MAP = manifests.FAILOVER_CONFIG
EMBEDDED_SECRET = manifests.FENCE_SECRET
HANDLER_LEASE_PREFIX = manifests.HANDLER_LEASE_PREFIX
NODE_LEASE_NAMESPACE = "kube-node-lease"
OPT_OUT_ANNOTATION = "kvtool.io/failover"  # "disabled" on a VM: never fail it over
FENCE_STATE_ANNOTATION = "kvtool.io/fence-state"  # Fencing | Fenced | FenceFailed, on the Node
FENCE_MESSAGE_ANNOTATION = "kvtool.io/fence-message"
FENCED_AT_ANNOTATION = "kvtool.io/fenced-at"
FENCE_ANNOTATIONS = (FENCE_STATE_ANNOTATION, FENCE_MESSAGE_ANNOTATION, FENCED_AT_ANNOTATION)
OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}
# Above the kubelet's Node Lease renew interval (10 s): a shorter grace would judge a node whose handler merely
# restarted lost between two kubelet renewals.
MIN_GRACE = 12
AGENTS = ("none", "embedded", "job")
NODE_LOST, BLOCKED = "NodeLost", "FailoverBlocked"
REASON_FENCED = "NodeFenced"


@dataclass(frozen=True)
class Config:
    """The cluster's failover setting (ConfigMap kvtool-system/kvtool-failover)."""

    enabled: bool = True
    grace: float = 40.0
    fence_agent: str = "none"
    fence_job: dict[str, Any] = field(default_factory=dict)  # agent "job": the Job spec (batch/v1 JobSpec)
    error: str = ""  # a ConfigMap that does not parse: failover is off, and the VMs say why

    @classmethod
    def from_data(cls, data: Mapping[str, str] | None) -> Config:
        data = data or {}
        enabled = str(data.get("enabled", "true")).strip().lower()
        agent = str(data.get("fenceAgent", "none")).strip()
        try:
            grace = float(data.get("nodeLostGraceSeconds", "40"))
        except ValueError:
            return cls(enabled=False, error=f"nodeLostGraceSeconds must be a number of seconds, got "
                                            f"{data.get('nodeLostGraceSeconds')!r}")
        if enabled not in ("true", "false"):
            return cls(enabled=False, error=f"enabled must be true or false, got {data.get('enabled')!r}")
        if agent not in AGENTS:
            return cls(enabled=False, error=f"fenceAgent must be one of {', '.join(AGENTS)}, got {agent!r}")
        if not MIN_GRACE <= grace <= 3600:
            return cls(enabled=False, error=f"nodeLostGraceSeconds must be between {MIN_GRACE} and 3600, got "
                                            f"{grace:g}")
        job: dict[str, Any] = {}
        if agent == "job":
            try:
                job = yaml.safe_load(data.get("fenceJob") or "") or {}
            except yaml.YAMLError as exc:
                return cls(enabled=False, error=f"fenceJob is not YAML: {str(exc).splitlines()[0]}")
            containers = (((job.get("template") if isinstance(job, dict) else None) or {}).get("spec") or {}).get(
                "containers") if isinstance(job, dict) else None
            if not isinstance(containers, list) or not containers:
                return cls(enabled=False, error="fenceAgent job needs fenceJob: a Job spec with template.spec."
                                                "containers (the fence command; $NODE_NAME names the node)")
        return cls(enabled=enabled == "true", grace=grace, fence_agent=agent, fence_job=job)

    @property
    def fences(self) -> bool:
        return self.enabled and self.fence_agent != "none"


def last_heartbeat(leases: list[Mapping[str, Any] | None]) -> dt.datetime | None:
    """The newest renewTime among the node's leases (None when it has none at all)."""
    times = [timeutil.parse((lease.get("spec") or {}).get("renewTime")) for lease in leases if lease]
    found = [t for t in times if t is not None]
    return max(found) if found else None


def is_lost(heartbeat: dt.datetime | None, grace: float, now: dt.datetime) -> bool:
    return heartbeat is not None and (now - heartbeat).total_seconds() > grace


def fence_state(node: Mapping[str, Any] | None) -> str:
    return ((node or {}).get("metadata", {}).get("annotations") or {}).get(FENCE_STATE_ANNOTATION, "")


def without_out_of_service(node: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The node's taints minus the out-of-service one (merge patches replace the whole list)."""
    return [dict(t) for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != OUT_OF_SERVICE["key"]]


def node_ready(node: Mapping[str, Any] | None) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in ((node or {}).get("status") or {}).get("conditions") or [])


def opted_out(vm: Mapping[str, Any] | None) -> bool:
    return ((vm or {}).get("metadata", {}).get("annotations") or {}).get(OPT_OUT_ANNOTATION) == "disabled"


def node_local_disk(vmi: Mapping[str, Any], claims: Mapping[str, Mapping[str, Any]],
                    volumes: Mapping[str, Mapping[str, Any]], node: str) -> str | None:
    """Why this VMI's disk cannot follow it off `node` (a PV that lives only there), or None.

    claims: PVC name -> PVC in the VMI's namespace; volumes: PV name -> PV.
    """
    for volume, claim_name in claim_volumes(vmi.get("spec") or {}):
        pv_name = ((claims.get(claim_name) or {}).get("spec") or {}).get("volumeName")
        pv = volumes.get(pv_name or "")
        if pv is None:
            continue
        spec = pv.get("spec") or {}
        kind = "hostPath" if "hostPath" in spec else "local" if "local" in spec else None
        if kind is None and _pinned_to(spec, node):
            kind = "pinned by nodeAffinity"
        if kind:
            return (f"disk {volume!r} is on PersistentVolume {pv_name} ({kind}), which lives only on node "
                    f"{node}: kvtool will not start the VM elsewhere on an empty disk. Bring {node} back and the "
                    f"VM starts again, or restore the disk to shared storage and restart the VM.")
    return None


def _pinned_to(pv_spec: Mapping[str, Any], node: str) -> bool:
    terms = (((pv_spec.get("nodeAffinity") or {}).get("required") or {}).get("nodeSelectorTerms")) or []
    return bool(terms) and all(
        any(e.get("key") == "kubernetes.io/hostname" and e.get("operator") == "In" and e.get("values") == [node]
            for e in t.get("matchExpressions") or []) for t in terms)


def lost_condition(node: str, heartbeat: dt.datetime | None, config: Config, state: str, fence_message: str,
                   vm_opted_out: bool) -> dict[str, Any]:
    """The NodeLost condition of a VMI on a lost node: what happened and what happens next."""
    since = timeutil.stamp(heartbeat) if heartbeat else "ever"
    what = f"node {node} sent no heartbeat since {since} (grace {config.grace:g}s)"
    if config.error:
        return conditions.condition(NODE_LOST, True, "FailoverMisconfigured",
                                    f"{what}; failover is off: ConfigMap kvtool-system/{CONFIG_MAP}: {config.error}")
    if not config.enabled:
        return conditions.condition(NODE_LOST, True, "FailoverDisabled",
                                    f"{what}; failover is turned off for the cluster (ConfigMap kvtool-system/"
                                    f"{CONFIG_MAP}, enabled=false): the VM stays where it is until the node returns")
    if config.fence_agent == "none":
        return conditions.condition(
            NODE_LOST, True, "NoFenceAgent",
            f"{what}; no fence agent is configured, so kvtool cannot prove the VM stopped and will not start it "
            f"elsewhere. Power {node} off, then `kubectl delete pod --force` its launcher pod; or set fenceAgent in "
            f"ConfigMap kvtool-system/{CONFIG_MAP}")
    if vm_opted_out:
        return conditions.condition(NODE_LOST, True, "FailoverOptedOut",
                                    f"{what}; the VM has {OPT_OUT_ANNOTATION}=disabled: it is not restarted "
                                    f"elsewhere (start it with `kvtool start` once you want it back)")
    if state == "Fenced":
        return conditions.condition(NODE_LOST, True, REASON_FENCED,
                                    f"{what}; fenced by agent {config.fence_agent}: {fence_message}")
    if state == "FenceFailed":
        return conditions.condition(NODE_LOST, True, "FenceFailed",
                                    f"{what}; fencing with agent {config.fence_agent} failed, retrying: "
                                    f"{fence_message}")
    return conditions.condition(NODE_LOST, True, "Fencing",
                                f"{what}; fencing it with agent {config.fence_agent} before the VM restarts "
                                f"elsewhere")


def fenced_status(vmi: Mapping[str, Any], lost: dict[str, Any], blocked: str | None) -> dict[str, Any]:
    """The status patch that ends a VMI whose node was fenced: Failed, reason NodeFenced."""
    status = vmi.get("status") or {}
    old = status.get("conditions") or []
    new = [lost, conditions.condition("Ready", False, REASON_FENCED, lost["message"]),
           conditions.condition("Failure", True, REASON_FENCED, lost["message"])]
    if blocked:
        new.append(conditions.condition(BLOCKED, True, "NodeLocalDisk", blocked))
    types = {c["type"] for c in new}
    stamps = [*(status.get("phaseTransitionTimestamps") or []),
              {"phase": "Failed", "phaseTransitionTimestamp": timeutil.stamp_precise()}]
    return {"phase": "Failed", "reason": REASON_FENCED, "phaseTransitionTimestamps": stamps,
            "conditions": [c for c in old if c.get("type") not in types] + conditions.merge(old, new)}


def with_condition(vmi: Mapping[str, Any], cond: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The VMI's conditions with `cond` set, or None if it already says exactly that."""
    old = (vmi.get("status") or {}).get("conditions") or []
    if conditions.same([c for c in old if c.get("type") == cond["type"]], [cond]):
        return None
    return [c for c in old if c.get("type") != cond["type"]] + conditions.merge(old, [cond])


def held(vm: Mapping[str, Any], vmi: Mapping[str, Any] | None) -> str | None:
    """Why the VM controller must not restart this failed VMI (fenced, but the VM may not move), or None."""
    status = (vmi or {}).get("status") or {}
    if status.get("phase") != "Failed" or status.get("reason") != REASON_FENCED:
        return None
    if opted_out(vm):
        return "FailoverOptedOut"
    if conditions.is_true(vmi, BLOCKED):
        return "NodeLocalDisk"
    return None
