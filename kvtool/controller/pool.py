"""VirtualMachinePool decisions: from a pool and the VMs it owns, which VMs to make, replace, update or remove.

Pure functions, like vm.py: the operator reads the caches, calls decide(), and writes what it says. A pool's VMs
are named <pool>-<index> (the lowest free index, KubeVirt's naming), carry the pool's label and stack (kvtool's
status, notebook and lab commands list them with the stack's other VMs), and an ownerReference with
controller=true, so deleting the pool deletes them (the garbage collector) and `kvtool plan` leaves them to the
pool.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import random
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvtool.api import poolnames, timeutil
from kvtool.api.types import MANAGED_BY, MANAGED_BY_LABEL, POOL_LABEL, STACK_LABEL, VIRTUAL_MACHINE
from kvtool.controller import conditions

TEMPLATE_HASH = "kvtool.io/pool-template-hash"  # on each VM: which template (and naming) it was made from
DEFAULT_FAILURE_THRESHOLD = 3  # KubeVirt's startUpFailureThreshold default
EXPECTATION_TTL = 60.0  # seconds a pool trusts its own write over a cache that does not show it yet
DEFAULT_FAILING_FOR = 300.0  # seconds: KubeVirt's minFailingToStartDuration default (5m)
# A VM in one of these is failing to start (not merely starting): what minFailingToStartDuration measures.
FAILING = ("CrashLoopBackOff", "ErrorUnschedulable", "Unschedulable", "ErrorPvcNotFound", "ErrImagePull",
           "ImagePullBackOff", "DataVolumeError")


@dataclass
class Decision:
    create: list[dict[str, Any]] = field(default_factory=list)  # whole VM bodies
    delete: list[tuple[str, str]] = field(default_factory=list)  # (name, uid)
    update: list[dict[str, Any]] = field(default_factory=list)  # VM bodies whose spec follows a changed template
    status: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    requeue_after: float | None = None


@dataclass
class Expectations:
    """A pool's own recent writes that its VM cache may not show yet: VMs created (whole, as the API returned
    them) and VMs deleted (by uid). Forgotten once the cache shows them, or after EXPECTATION_TTL seconds (a
    watch event lost for good must not stall the pool)."""

    made: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)  # name -> (when, VM)
    gone: dict[str, float] = field(default_factory=dict)  # uid -> when

    def created(self, vm: Mapping[str, Any], now: float) -> None:
        self.made[vm["metadata"]["name"]] = (now, dict(vm))

    def deleted(self, uid: str, now: float) -> None:
        self.gone[uid] = now

    def seen(self, pool: Mapping[str, Any], vms: Sequence[Mapping[str, Any]], now: float) -> list[dict[str, Any]]:
        """The cache's VMs as the pool's own writes have made them: created ones present, deleted ones going."""
        cached = {v["metadata"]["name"]: v for v in vms}
        uids = {v["metadata"].get("uid") for v in vms}
        self.made = {n: (t, v) for n, (t, v) in self.made.items()
                     if now - t < EXPECTATION_TTL and cached.get(n, {}).get("metadata", {}).get("uid")
                     != v["metadata"].get("uid")}
        self.gone = {u: t for u, t in self.gone.items() if now - t < EXPECTATION_TTL and u in uids}
        out = []
        for v in vms:
            v = dict(v)
            if v["metadata"].get("uid") in self.gone and not v["metadata"].get("deletionTimestamp"):
                v["metadata"] = {**v["metadata"], "deletionTimestamp": "pending"}
            out.append(v)
        return out + [v for n, (_, v) in self.made.items() if n not in cached]


# -- label selectors ---------------------------------------------------------------------------------------------
def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes' LabelSelector semantics: every matchLabels pair and every matchExpression holds."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and present and labels[key] in values) \
                or (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


def selector_string(selector: Mapping[str, Any]) -> str:
    """The selector as `kubectl get -l` takes it (the scale subresource's labelSelector)."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), ",".join(sorted(expr.get("values") or []))
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": f"{key}",
                      "DoesNotExist": f"!{key}"}[op])
    return ",".join(parts)


# -- the VMs a pool makes -----------------------------------------------------------------------------------------
def template_hash(spec: Mapping[str, Any]) -> str:
    made_from = {"template": spec.get("virtualMachineTemplate"), "names": spec.get("nameGeneration")}
    return hashlib.sha256(json.dumps(made_from, sort_keys=True).encode()).hexdigest()[:12]


def vm_spec(spec: Mapping[str, Any], index: int) -> dict[str, Any]:
    """The template's VM spec for the VM at `index`, with its Secret and ConfigMap names suffixed `-<index>`
    when nameGeneration asks (one login Secret per VM: a roster of students behind one pool)."""
    out: dict[str, Any] = copy.deepcopy(dict(spec["virtualMachineTemplate"].get("spec") or {}))
    names = spec.get("nameGeneration") or {}
    secrets, config_maps = bool(names.get("appendIndexToSecretRefs")), bool(names.get("appendIndexToConfigMapRefs"))

    def suffix(holder: dict[str, Any], key: str) -> None:
        if isinstance(holder, dict) and isinstance(holder.get(key), str):
            holder[key] = f"{holder[key]}-{index}"

    vmi_spec = (out.get("template") or {}).get("spec") or {}
    for volume in vmi_spec.get("volumes") or []:
        for source in ("cloudInitNoCloud", "cloudInitConfigDrive"):
            if secrets and source in volume:
                suffix(volume[source].get("secretRef") or {}, "name")
                suffix(volume[source].get("networkDataSecretRef") or {}, "name")
        if secrets and "secret" in volume:
            suffix(volume["secret"], "secretName")
        if config_maps and "configMap" in volume:
            suffix(volume["configMap"], "name")
    for credential in vmi_spec.get("accessCredentials") or []:
        for kind in ("sshPublicKey", "userPassword"):
            if secrets and kind in credential:
                suffix((credential[kind].get("source") or {}).get("secret") or {}, "secretName")
    return out


def vm_for(pool: Mapping[str, Any], index: int) -> dict[str, Any]:
    meta, spec = pool["metadata"], pool["spec"]
    template_meta = spec["virtualMachineTemplate"].get("metadata") or {}
    labels = {**(template_meta.get("labels") or {}), POOL_LABEL: meta["name"], MANAGED_BY_LABEL: MANAGED_BY}
    if stack := (meta.get("labels") or {}).get(STACK_LABEL):
        labels[STACK_LABEL] = stack  # `kvtool status --stack` and lab commands find the pool's VMs by it
    annotations = {**(template_meta.get("annotations") or {}), TEMPLATE_HASH: template_hash(spec)}
    return {
        "apiVersion": VIRTUAL_MACHINE.api_version, "kind": VIRTUAL_MACHINE.kind,
        "metadata": {"name": poolnames.vm_name(meta["name"], index), "namespace": meta["namespace"], "labels": labels,
                     "annotations": annotations,
                     "ownerReferences": [{"apiVersion": pool["apiVersion"], "kind": pool["kind"], "name": meta["name"],
                                          "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
        "spec": vm_spec(spec, index),
    }


def owned(pool: Mapping[str, Any], vms: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    uid = pool["metadata"]["uid"]
    return [dict(v) for v in vms if any(r.get("controller") and r.get("uid") == uid
                                        for r in v["metadata"].get("ownerReferences") or [])]


# -- decisions ----------------------------------------------------------------------------------------------------
def _ready(vm: Mapping[str, Any]) -> bool:
    return bool((vm.get("status") or {}).get("ready"))


def _failing_for(vm: Mapping[str, Any], now: dt.datetime) -> float | None:
    """Seconds the VM has been not ready while failing to start, or None when it is not failing."""
    status = vm.get("status") or {}
    if status.get("printableStatus") not in FAILING:
        return None
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    since = timeutil.parse((ready or {}).get("lastTransitionTime")) if ready and ready.get("status") != "True" \
        else None
    return (now - since).total_seconds() if since else 0.0


def unhealthy(spec: Mapping[str, Any], vm: Mapping[str, Any], now: dt.datetime) -> tuple[str | None, float | None]:
    """Why autohealing replaces this VM now (None when it does not), and in how many seconds it would."""
    heal = spec.get("autohealing")
    if heal is None:
        return None, None
    failures = int(((vm.get("status") or {}).get("startFailure") or {}).get("consecutiveFailCount", 0))
    threshold = int(heal.get("startUpFailureThreshold", DEFAULT_FAILURE_THRESHOLD))
    if failures >= threshold:
        return f"{failures} consecutive start failures (startUpFailureThreshold {threshold})", None
    failing = _failing_for(vm, now)
    if failing is None:
        return None, None
    limit = (timeutil.parse_duration(heal["minFailingToStartDuration"]) if heal.get("minFailingToStartDuration")
             else DEFAULT_FAILING_FOR)
    if failing >= limit:
        state = (vm.get("status") or {}).get("printableStatus")
        return f"{state} for {failing:.0f}s (minFailingToStartDuration {limit:.0f}s)", None
    return None, limit - failing


def scale_in_order(spec: Mapping[str, Any], pool_name: str, vms: Sequence[dict[str, Any]],
                   rng: random.Random) -> list[dict[str, Any]]:
    """The pool's VMs in the order scale-in removes them: those not ready first, then by the sort policy."""
    policy = poolnames.sort_policy(spec)
    ordered = list(vms)
    if policy == "Random":
        rng.shuffle(ordered)
    elif policy in ("AscendingOrder", "DescendingOrder"):
        ordered.sort(key=lambda v: poolnames.index_of(pool_name, v["metadata"]["name"]) or 0,
                     reverse=policy == "DescendingOrder")
    else:
        ordered.sort(key=lambda v: (v["metadata"].get("creationTimestamp") or "", v["metadata"]["name"]),
                     reverse=policy == "Newest")
    return sorted(ordered, key=_ready)  # stable: within ready and not ready, the policy's order stays


class _Either:
    """Names in either of two containers: the VMs at hand, and every VM name of the namespace."""

    def __init__(self, first: Container[str], second: Container[str]) -> None:
        self.first, self.second = first, second

    def __contains__(self, name: object) -> bool:
        return name in self.first or name in self.second


def decide(pool: Mapping[str, Any], vms: Sequence[Mapping[str, Any]], now: dt.datetime,
           rng: random.Random | None = None, taken: Container[str] | None = None) -> Decision:
    """What to do for one pool, given its VMs (any others in its namespace may be among them) and `taken`: the
    namespace's VM names, which new VMs must not have (default: the names in `vms`)."""
    meta, spec = pool["metadata"], pool.get("spec") or {}
    name = meta["name"]
    d = Decision()
    mine = owned(pool, vms)
    live = [v for v in mine if not v["metadata"].get("deletionTimestamp")]
    replicas = poolnames.replicas(spec)
    selector = spec.get("selector") or {}
    template_labels = ((spec.get("virtualMachineTemplate") or {}).get("metadata") or {}).get("labels") or {}
    d.status = {"replicas": len(live), "readyReplicas": sum(_ready(v) for v in live),
                "labelSelector": selector_string(selector)}
    conds = (pool.get("status") or {}).get("conditions")
    if not selector_matches(selector, template_labels):
        failure = conditions.condition("ReplicaFailure", True, "SelectorMismatch",
                                       "spec.selector does not select spec.virtualMachineTemplate.metadata.labels: "
                                       "make the template's labels match the selector")
        d.status["conditions"] = conditions.put(conds, failure)
        return d
    cleared = conditions.condition("ReplicaFailure", False)
    paused = conditions.condition("ReplicaPaused", bool(spec.get("paused")), "Paused" if spec.get("paused") else "",
                                  "spec.paused is true: the pool neither scales nor heals its VMs"
                                  if spec.get("paused") else "")
    d.status["conditions"] = conditions.put(conditions.put(conds, cleared), paused)
    if spec.get("paused"):
        return d

    keep = []
    for vm in live:
        why, wait = unhealthy(spec, vm, now)
        if why:
            d.delete.append((vm["metadata"]["name"], vm["metadata"]["uid"]))
            d.events.append(("Warning", "Autohealed", f"replacing {vm['metadata']['name']}: {why}"))
            continue
        if wait is not None:
            d.requeue_after = min(d.requeue_after or wait, wait)
        keep.append(vm)

    wanted = replicas - len(keep)
    if wanted > 0:
        names = {v["metadata"]["name"] for v in vms}  # any VM's name, even one being deleted or not ours
        for free in poolnames.next_indexes(name, names if taken is None else _Either(names, taken), wanted):
            d.create.append(vm_for(pool, free))
        d.events.append(("Normal", "SuccessfulCreate",
                         f"created {', '.join(v['metadata']['name'] for v in d.create)} (replicas {replicas})"))
    elif wanted < 0 and not poolnames.unmanaged_scale_in(spec):
        gone = scale_in_order(spec, name, keep, rng or random.Random())[:-wanted]
        d.delete += [(v["metadata"]["name"], v["metadata"]["uid"]) for v in gone]
        keep = [v for v in keep if v not in gone]
        d.events.append(("Normal", "SuccessfulDelete",
                         f"deleted {', '.join(v['metadata']['name'] for v in gone)} (replicas {replicas})"))

    digest = template_hash(spec)
    for vm in keep:
        if (vm["metadata"].get("annotations") or {}).get(TEMPLATE_HASH) != digest:
            index = poolnames.index_of(name, vm["metadata"]["name"])
            if index is not None:
                d.update.append(vm_for(pool, index))
    return d
