"""VM verbs as virtctl has them: start, stop, restart, pause, unpause, migrate, migrate-cancel; and scale for
a VirtualMachinePool (kubectl scale).

Like virtctl, start/stop edit runStrategy where that says what the user
means (Halted ⇄ Always) and otherwise post a state-change request the
controller honours (Manual, RerunOnFailure, Once); restart asks to stop the
current VMI and start a new one. pause/unpause mark the VMI for its node's
handler.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from kvtool.api.types import (
    KUBEVIRT_API_VERSION,
    KUBEVIRT_VIRTUAL_MACHINE_INSTANCE,
    PAUSE_ANNOTATION,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    VIRTUAL_MACHINE_INSTANCE_MIGRATION,
    VIRTUAL_MACHINE_POOL,
    Kind,
)
from kvtool.errors import KvtoolError
from kvtool.kube.resources import KubeError, Resources

FIELD_MANAGER = "kvtool-vmctl"
CONFLICT_RETRIES = 10
CONFLICT_BACKOFF = 0.1  # seconds, times the attempt
KUBEVIRT_MIGRATION = Kind(KUBEVIRT_API_VERSION, "VirtualMachineInstanceMigration", "virtualmachineinstancemigrations")


class NotRunning(KvtoolError):
    """The verb needs a running VM."""


def get_vm(res: Resources, namespace: str, name: str) -> dict[str, Any]:
    vm = res.get(VIRTUAL_MACHINE, namespace, name)
    if vm is None:
        raise KvtoolError(f"virtualmachine {namespace}/{name} not found",
                          hint="`kvtool status` lists the VMs kvtool manages")
    return vm


def _strategy(vm: dict[str, Any]) -> str:
    spec = vm.get("spec", {})
    return spec.get("runStrategy") or ("Always" if spec.get("running") else "Halted")


def _set_strategy(res: Resources, vm: dict[str, Any], strategy: str) -> None:
    meta = vm["metadata"]
    patch: dict[str, Any] = {"metadata": {"resourceVersion": meta["resourceVersion"]},
                             "spec": {"runStrategy": strategy}}
    if "running" in vm.get("spec", {}):
        patch["spec"]["running"] = None  # the older form: replace it with runStrategy
    res.merge_patch(VIRTUAL_MACHINE, meta["namespace"], meta["name"], patch, field_manager=FIELD_MANAGER)


def _request(res: Resources, vm: dict[str, Any], requests: list[dict[str, Any]]) -> None:
    meta = vm["metadata"]
    res.merge_patch(VIRTUAL_MACHINE, meta["namespace"], meta["name"],
                    {"metadata": {"resourceVersion": meta["resourceVersion"]},
                     "status": {"stateChangeRequests": requests}},
                    subresource="status", field_manager=FIELD_MANAGER)


def _on_conflict_again(verb: Callable[[Resources, str, str], str]) -> Callable[[Resources, str, str], str]:
    """client-go's RetryOnConflict for a verb: its write carries the VM's resourceVersion, and the controller
    rewrites the VM's status often (a lab extend, a restore, a VMI's progress), so a write on a version read a
    moment ago can meet a conflict. The verb then reads the VM again and decides again."""

    @functools.wraps(verb)
    def again(res: Resources, namespace: str, name: str) -> str:
        for attempt in range(CONFLICT_RETRIES):
            try:
                return verb(res, namespace, name)
            except KubeError as exc:
                if exc.status != 409 or attempt == CONFLICT_RETRIES - 1:
                    raise
                time.sleep(CONFLICT_BACKOFF * (attempt + 1))
        raise AssertionError("unreachable")

    return again


@_on_conflict_again
def start(res: Resources, namespace: str, name: str) -> str:
    vm = get_vm(res, namespace, name)
    strategy = _strategy(vm)
    status = vm.get("status") or {}
    if strategy == "Halted":
        _set_strategy(res, vm, "Always")
        return f"{name}: runStrategy Halted -> Always"
    if strategy == "Always" or (status.get("printableStatus") in ("Running", "Starting", "Paused")):
        raise KvtoolError(f"virtualmachine {namespace}/{name} is already running (runStrategy {strategy})")
    _request(res, vm, [{"action": "Start"}])
    return f"{name}: start requested"


@_on_conflict_again
def stop(res: Resources, namespace: str, name: str) -> str:
    vm = get_vm(res, namespace, name)
    strategy = _strategy(vm)
    if strategy == "Halted":
        raise KvtoolError(f"virtualmachine {namespace}/{name} is already stopped (runStrategy Halted)")
    if strategy in ("Always", "RerunOnFailure", "Once"):
        _set_strategy(res, vm, "Halted")
        return f"{name}: runStrategy {strategy} -> Halted"
    vmi = res.get(VIRTUAL_MACHINE_INSTANCE, namespace, name)
    if vmi is None:
        raise KvtoolError(f"virtualmachine {namespace}/{name} is not running")
    _request(res, vm, [{"action": "Stop", "uid": vmi["metadata"]["uid"]}])
    return f"{name}: stop requested"


@_on_conflict_again
def restart(res: Resources, namespace: str, name: str) -> str:
    vm = get_vm(res, namespace, name)
    vmi = res.get(VIRTUAL_MACHINE_INSTANCE, namespace, name)
    if vmi is None or _strategy(vm) == "Halted":
        raise NotRunning(f"virtualmachine {namespace}/{name} is not running; use `kvtool start`")
    _request(res, vm, [{"action": "Stop", "uid": vmi["metadata"]["uid"]}, {"action": "Start"}])
    return f"{name}: restart requested"


def _pause(res: Resources, namespace: str, name: str, paused: bool) -> str:
    vmi = res.get(VIRTUAL_MACHINE_INSTANCE, namespace, name)
    if vmi is None or (vmi.get("status") or {}).get("phase") != "Running":
        raise KvtoolError(f"virtualmachine {namespace}/{name} is not running")
    res.merge_patch(VIRTUAL_MACHINE_INSTANCE, namespace, name,
                    {"metadata": {"annotations": {PAUSE_ANNOTATION: "true" if paused else "false"}}},
                    field_manager=FIELD_MANAGER)
    return f"{name}: {'pause' if paused else 'unpause'} requested"


def pause(res: Resources, namespace: str, name: str) -> str:
    return _pause(res, namespace, name, True)


def unpause(res: Resources, namespace: str, name: str) -> str:
    return _pause(res, namespace, name, False)


VERBS = {"start": start, "stop": stop, "restart": restart, "pause": pause, "unpause": unpause}

# KubeVirt's own verbs: virt-api's subresources, as virtctl calls them (the VM's for start/stop/restart, the
# VMI's for pause/unpause).
KUBEVIRT_SUBRESOURCES = "/apis/subresources.kubevirt.io/v1"
KUBEVIRT_VERBS = {"start": "virtualmachines", "stop": "virtualmachines", "restart": "virtualmachines",
                  "pause": "virtualmachineinstances", "unpause": "virtualmachineinstances"}


def kubevirt_verb(res: Resources, verb: str, namespace: str, name: str) -> str:
    """One virtctl verb on a KubeVirt cluster, through virt-api's subresource (PUT, an empty options body)."""
    path = f"{KUBEVIRT_SUBRESOURCES}/namespaces/{namespace}/{KUBEVIRT_VERBS[verb]}/{name}/{verb}"
    try:
        res.request("PUT", path, body={}, what=f"{verb} {namespace}/{name}", parse=False)
    except KubeError as exc:
        if exc.status == 404 and not res.serves("subresources.kubevirt.io/v1"):
            raise KvtoolError(f"{verb} {namespace}/{name}: the cluster does not serve KubeVirt's subresources "
                              "(subresources.kubevirt.io/v1)",
                              hint="KubeVirt's virt-api must run for its verbs; with only KubeVirt's CRDs "
                                   "installed, change runStrategy with `kvtool apply`") from exc
        raise
    return f"{name}: {verb} requested (KubeVirt)"


# ---- live migration (virtctl migrate / migrate-cancel): a VirtualMachineInstanceMigration object

MIGRATION_FINAL = ("Succeeded", "Failed")


def _migration_kind(kubevirt: bool) -> Kind:
    return KUBEVIRT_MIGRATION if kubevirt else VIRTUAL_MACHINE_INSTANCE_MIGRATION


def _in_flight(res: Resources, kind: Kind, namespace: str, name: str) -> list[dict[str, Any]]:
    items, _ = res.list(kind, namespace)
    return [m for m in items
            if (m.get("spec") or {}).get("vmiName") == name
            and (m.get("status") or {}).get("phase") not in MIGRATION_FINAL
            and not m["metadata"].get("deletionTimestamp")]


def migrate(res: Resources, namespace: str, name: str, to_node: str | None = None,
            kubevirt: bool = False) -> dict[str, Any]:
    """Create a migration of the running VMI `name` (refused, with the reason, when it cannot move)."""
    vmi_kind = KUBEVIRT_VIRTUAL_MACHINE_INSTANCE if kubevirt else VIRTUAL_MACHINE_INSTANCE
    vmi = res.get(vmi_kind, namespace, name)
    if vmi is None or (vmi.get("status") or {}).get("phase") != "Running":
        phase = ((vmi or {}).get("status") or {}).get("phase")
        raise KvtoolError(f"virtualmachineinstance {namespace}/{name} is not running"
                          + (f" (phase {phase})" if phase else ""),
                          hint="only a running VM can be live-migrated; `kvtool start` it first")
    cond = next((c for c in (vmi.get("status") or {}).get("conditions") or [] if c.get("type") == "LiveMigratable"),
                None)
    if cond is not None and cond.get("status") != "True":
        raise KvtoolError(f"virtualmachineinstance {namespace}/{name} cannot be live-migrated: "
                          f"{cond.get('message') or cond.get('reason')}")
    busy = _in_flight(res, _migration_kind(kubevirt), namespace, name)
    if busy:
        raise KvtoolError(f"virtualmachineinstance {namespace}/{name} is already migrating "
                          f"({busy[0]['metadata']['name']}, phase "
                          f"{(busy[0].get('status') or {}).get('phase') or 'Pending'})",
                          hint=f"`kvtool migrate-cancel {name}` cancels it")
    if to_node is not None and to_node == (vmi.get("status") or {}).get("nodeName"):
        raise KvtoolError(f"virtualmachineinstance {namespace}/{name} already runs on node {to_node}")
    kind = _migration_kind(kubevirt)
    spec: dict[str, Any] = {"vmiName": name}
    if to_node:
        spec["addedNodeSelector"] = {"kubernetes.io/hostname": to_node}
    body = {"apiVersion": kind.api_version, "kind": kind.kind,
            "metadata": {"generateName": f"kvtool-migrate-{name}-"[:58], "namespace": namespace}, "spec": spec}
    created: dict[str, Any] = res.create(kind, body, FIELD_MANAGER)
    return created


def migrate_cancel(res: Resources, namespace: str, name: str, kubevirt: bool = False) -> str:
    """Delete the VMI's migration in flight: the controller aborts it and the guest stays on the source."""
    kind = _migration_kind(kubevirt)
    busy = _in_flight(res, kind, namespace, name)
    if not busy:
        raise KvtoolError(f"virtualmachineinstance {namespace}/{name} has no migration in progress")
    for migration in busy:
        res.delete(kind, namespace, migration["metadata"]["name"])
    return f"{name}: cancelled migration {', '.join(m['metadata']['name'] for m in busy)}"


def migration_outcome(migration: dict[str, Any]) -> str:
    """One line on a migration that ended, from its status."""
    status = migration.get("status") or {}
    state = status.get("migrationState") or {}
    if status.get("phase") == "Succeeded":
        return f"migrated from {state.get('sourceNode')} to {state.get('targetNode')}"
    failed: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed"), {})
    return f"failed: {state.get('failureReason') or failed.get('message') or 'no reason given'}"


# -- pools -------------------------------------------------------------------------------------------------------
def scale(res: Resources, namespace: str, name: str, replicas: int) -> dict[str, Any]:
    """Set a VirtualMachinePool's replicas through its scale subresource (what `kubectl scale` writes); the
    pool as it was before."""
    if not 0 <= replicas <= 1000:
        raise KvtoolError(f"--replicas {replicas}: a pool keeps 0 to 1000 VMs")
    pool = res.get(VIRTUAL_MACHINE_POOL, namespace, name)
    if pool is None:
        raise KvtoolError(f"virtualmachinepool {namespace}/{name} not found",
                          hint=f"`kubectl get virtualmachinepools -n {namespace}` lists the pools")
    res.merge_patch(VIRTUAL_MACHINE_POOL, namespace, name, {"spec": {"replicas": replicas}}, subresource="scale",
                    field_manager=FIELD_MANAGER)
    return pool
