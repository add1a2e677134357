"""Read what the cluster has for a stack and diff it against the desired state.

The stack is found by label (kvtool.io/stack), so no local state file is
needed: the cluster is the state. Reads are one LIST per kind, plus GETs
(or a per-namespace LIST when many) for desired objects outside the stack,
which must not be silently taken over.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kvtool.api import poolnames
from kvtool.api.types import (
    BY_KEY,
    GROUP,
    KVTOOL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    PLANNABLE,
    POOL_LABEL,
    STACK_LABEL,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_POOL,
    Kind,
    Target,
)
from kvtool.errors import KvtoolError
from kvtool.kube.resources import KubeError, Resources
from kvtool.plan import diff
from kvtool.plan.desired import Desired, DesiredState
from kvtool.plan.model import Action, Plan, ResourceChange

ObjKey = tuple[str, str, str | None, str]
GET_THRESHOLD = 32


def key_of(kind: Kind, obj: dict[str, Any]) -> ObjKey:
    meta = obj.get("metadata", {})
    return (kind.api_version, kind.kind, meta.get("namespace"), meta.get("name", ""))


def stack_selector(stack: str) -> str:
    return f"{MANAGED_BY_LABEL}={MANAGED_BY},{STACK_LABEL}={stack}"


@dataclass
class LiveState:
    members: dict[ObjKey, dict[str, Any]] = field(default_factory=dict)  # objects labelled with the stack
    others: dict[ObjKey, dict[str, Any]] = field(default_factory=dict)  # desired keys found outside the stack
    # (namespace, pool) -> its VMs' names, for pools in the stack or the desired state: the plan shows them.
    pool_vms: dict[tuple[str | None, str], list[str]] = field(default_factory=dict)


class OwnershipError(KvtoolError):
    """Desired objects exist in the cluster but belong to someone else."""


def list_stack(res: Resources, stack: str, kinds: Collection[Kind] = PLANNABLE,
               namespaces: Collection[str] | None = None) -> dict[ObjKey, dict[str, Any]]:
    """Every object labelled with the stack, but those a controller made: one LIST per kind, cluster-wide (or per
    namespace)."""
    selector = stack_selector(stack)

    def list_kind(kind: Kind) -> list[dict[str, Any]]:
        if namespaces is None or not kind.namespaced:
            return res.list(kind, label_selector=selector)[0]
        return [o for ns in sorted(namespaces) for o in res.list(kind, ns, label_selector=selector)[0]]

    members: dict[ObjKey, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for kind, items in zip(kinds, pool.map(list_kind, kinds), strict=True):
            for obj in items:
                if not _made_by_a_controller(obj):
                    members[key_of(kind, obj)] = obj
    return members


def _made_by_a_controller(obj: Mapping[str, Any]) -> bool:
    """A pool's VM carries the stack's labels but is the pool's to make and remove, not the plan's."""
    return any(ref.get("controller") for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def find_others(res: Resources, members: Mapping[ObjKey, Any], wanted: Iterable[Desired]) -> dict[ObjKey, Any]:
    """Desired objects that exist outside the stack: GETs, or a LIST per namespace when many."""
    missing = [d for d in wanted if d.key not in members]
    by_ns: dict[tuple[Kind, str | None], list[Desired]] = {}
    for d in missing:
        by_ns.setdefault((d.kind, d.namespace), []).append(d)
    others: dict[ObjKey, Any] = {}
    missing_keys = {d.key for d in missing}

    def list_all(kind: Kind, ns: str | None) -> list[tuple[Kind, dict[str, Any]]]:
        return [(kind, o) for o in res.list(kind, ns)[0]]

    def get_one(d: Desired) -> list[tuple[Kind, dict[str, Any]]]:
        return [(d.kind, o)] if (o := res.get(d.kind, d.namespace, d.name)) else []

    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = []
        for (kind, ns), ds in by_ns.items():
            if len(ds) > GET_THRESHOLD:
                jobs.append(pool.submit(list_all, kind, ns))
            else:
                for d in ds:
                    jobs.append(pool.submit(get_one, d))
        for job in jobs:
            for kind, obj in job.result():
                k = key_of(kind, obj)
                if k in missing_keys:
                    others[k] = obj
    return others


def list_members(res: Resources, stack: str,
                 kinds: Collection[Kind] = PLANNABLE) -> dict[ObjKey, dict[str, Any]] | None:
    """The stack's objects, cluster-wide; None when listing cluster-wide is forbidden (fetch then looks in the
    desired state's namespaces). Needs no desired state: a CLI reads it while it still reads the input."""
    try:
        return list_stack(res, stack, kinds)
    except KubeError as exc:
        if exc.status != 403:
            raise
        return None


def fetch(res: Resources, stack: str, desired: Iterable[Desired] = (),
          kinds: Collection[Kind] = PLANNABLE, members: dict[ObjKey, dict[str, Any]] | None = None) -> LiveState:
    """The live side of a plan. `members`: the stack's objects from list_members, when already read."""
    wanted = list(desired)
    if members is None:
        members = list_members(res, stack, kinds)
    if members is None:  # no cluster-wide list permission: look in the namespaces we know of
        members = list_stack(res, stack, kinds, {d.namespace for d in wanted if d.namespace})
    return LiveState(members, find_others(res, members, wanted), list_pool_vms(res, members, wanted))


def list_pool_vms(res: Resources, members: Mapping[ObjKey, Any], wanted: Iterable[Desired]
                  ) -> dict[tuple[str | None, str], list[str]]:
    """The VMs of every pool the plan touches: one LIST per namespace that has such a pool."""
    pools = {(k[2], k[3]) for k in members if k[:2] == VIRTUAL_MACHINE_POOL.key}
    pools |= {(d.namespace, d.name) for d in wanted if d.kind is VIRTUAL_MACHINE_POOL}
    out: dict[tuple[str | None, str], list[str]] = {p: [] for p in pools}
    for ns in sorted({ns for ns, _ in pools if ns}):
        for vm in res.list(VIRTUAL_MACHINE, ns, label_selector=POOL_LABEL)[0]:
            key = (ns, vm["metadata"]["labels"][POOL_LABEL])
            if key in out:
                out[key].append(vm["metadata"]["name"])
    return {k: sorted(v, key=lambda n: (poolnames.index_of(k[1], n) or 0, n)) for k, v in out.items()}


def _names(names: list[str], most: int = 8) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def pool_notes(rc: ResourceChange, current: Mapping[str, Any] | None, vms: list[str]) -> list[str]:
    """What a pool's change does to its VMs, which the controller makes: names where they are known."""
    before = poolnames.replicas(current.get("spec") or {}) if current else 0
    spec = (rc.manifest or {}).get("spec") or {}
    after = poolnames.replicas(spec) if rc.manifest is not None else 0
    if rc.manifest is None:
        return [f"its VMs go with it: {_names(vms)}"] if vms else []
    notes = []
    if after > len(vms):
        added = poolnames.next_names(rc.name, vms, after - len(vms))
        now = f" (now: {_names(vms)})" if vms else ""
        notes.append(f"replicas {before} -> {after}: the controller makes {_names(added)}{now}")
    elif after < len(vms):
        policy = poolnames.sort_policy(spec)
        count = len(vms) - after
        if poolnames.unmanaged_scale_in(spec):
            notes.append(f"replicas {len(vms)} -> {after}: scale-in is unmanaged, delete {count} VM(s) yourself")
        elif policy in ("AscendingOrder", "DescendingOrder"):
            order = vms if policy == "AscendingOrder" else vms[::-1]
            notes.append(f"replicas {len(vms)} -> {after}: the controller removes {_names(order[:count])} "
                         f"(not-ready VMs first, then {policy})")
        else:
            notes.append(f"replicas {len(vms)} -> {after}: the controller removes {count} of {_names(vms)} "
                         f"(not-ready VMs first, then {policy})")
    if current and any(f.path.startswith(("spec.virtualMachineTemplate", "spec.nameGeneration"))
                          for f in rc.fields) and vms:
        notes.append(f"the template changed: the controller rewrites the spec of {_names(vms)}; running VMs take "
                     "it on restart")
    return notes


def make_plan(desired: DesiredState, live: LiveState, server: str, *, replace: Collection[str] = (),
              adopt: bool = False) -> Plan:
    """The pure half of planning: desired + live → Plan."""
    problems = []
    for d in desired.objects:
        other = live.others.get(d.key)
        if other is None or adopt:
            continue
        labels = other.get("metadata", {}).get("labels") or {}
        owner = (f"stack {labels[STACK_LABEL]!r}" if labels.get(MANAGED_BY_LABEL) == MANAGED_BY and
                 STACK_LABEL in labels else "nothing kvtool knows (created outside kvtool)")
        problems.append(f"{d.kind.label} {d.namespace}/{d.name} ({d.location}) already exists and belongs to {owner}")
    if problems:
        raise OwnershipError("objects in the desired state already exist outside this stack:\n"
                             + "\n".join(f"  - {p}" for p in problems),
                             hint="rename them, delete the existing ones, or pass --adopt to take them over")
    plan = Plan(stack=desired.stack, server=server)
    seen = set()
    for d in desired.objects:
        current = live.members.get(d.key) or (live.others.get(d.key) if adopt else None)
        address = f"{d.kind.label}/{d.name}"
        force = address in replace or f"{d.kind.label}/{d.namespace}/{d.name}" in replace
        plan.changes.append(diff.diff_object(d.kind, d.manifest, current, source=str(d.location),
                                             force_replace=force and current is not None))
        seen.add(d.key)
    for k, obj in live.members.items():
        if k not in seen:
            plan.changes.append(diff.diff_object(BY_KEY[k[:2]], None, obj))
    for rc in plan.changes:
        if (rc.api_version, rc.kind) == VIRTUAL_MACHINE_POOL.key:
            current = live.members.get((rc.api_version, rc.kind, rc.namespace, rc.name))
            rc.notes = pool_notes(rc, current, live.pool_vms.get((rc.namespace, rc.name), []))
    order = {k.kind: i for i, k in enumerate(PLANNABLE)}
    plan.changes.sort(key=lambda c: (order.get(c.kind, 99), c.namespace or "", c.name))
    return plan


def plan(res: Resources, desired: DesiredState, server: str, *, replace: Collection[str] = (),
         adopt: bool = False, server_check: bool = True, members: dict[ObjKey, dict[str, Any]] | None = None) -> Plan:
    """`members`: the stack's objects of desired.target's kinds, when the caller read them already (list_members)."""
    live = fetch(res, desired.stack, desired.objects, desired.target.plannable, members)
    result = make_plan(desired, live, server, replace=replace, adopt=adopt)
    if server_check:
        check_with_server(res, result)
    return result


class ServerRejected(KvtoolError):
    """The API server refused objects of the plan in a dry run: applying would have stopped half-way."""


def check_with_server(res: Resources, planned: Plan) -> None:
    """Server-side dry runs of the built-in kinds the plan creates or changes.

    kvtool's own kinds are checked client-side against the same schemas the CRDs carry; Secrets,
    ConfigMaps, Services and PVCs are not, so the server (its OpenAPI validation and admission) says
    now what it would otherwise say in the middle of an apply. Nothing is stored.
    """
    # KubeVirt's VirtualMachines too: its CRD schema and webhooks have the last word on its clusters.
    todo = [c for c in planned.changes if c.manifest is not None and not c.api_version.startswith(f"{GROUP}/")
            and c.action in (Action.CREATE, Action.UPDATE, Action.REPLACE)]

    def one(change: Any) -> str | None:
        try:
            res.apply(BY_KEY[(change.api_version, change.kind)], change.manifest, force=True, dry_run=True,
                      parse=False)
        except KubeError as exc:
            if exc.status == 404:
                return None  # its namespace does not exist yet (the same apply may create it)
            if exc.status in (400, 403, 409, 422):
                return f"{change.kind} {change.namespace or ''}/{change.name} ({change.source}): {exc.message}"
            raise
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        refused = [r for r in pool.map(one, todo) if r]
    if refused:
        raise ServerRejected("the API server refuses objects of this plan (a dry run; nothing was sent):\n"
                             + "\n".join(f"  - {r}" for r in refused),
                             hint="fix them in the desired state and plan again")


def destroy_plan(res: Resources, stack: str, server: str, only: DesiredState | None = None,
                 target: Target = KVTOOL) -> Plan:
    """Delete every object of the stack (or only those named in `only`)."""
    live = fetch(res, stack, kinds=target.plannable)
    keep = None if only is None else {d.key for d in only.objects}
    p = Plan(stack=stack, server=server, destroy=True)
    for k, obj in live.members.items():
        if keep is None or k in keep:
            p.changes.append(diff.diff_object(BY_KEY[k[:2]], None, obj))
    order = {k.kind: i for i, k in enumerate(PLANNABLE)}
    p.changes.sort(key=lambda c: (-order.get(c.kind, 99), c.namespace or "", c.name))
    assert all(c.action == Action.DELETE for c in p.changes)
    return p
