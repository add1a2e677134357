"""Snapshot verbs for the CLI, the notebook and lab reset: take a VirtualMachineSnapshot, restore one into its VM.

The controller does the work (kvtool.controller.snapshot); these make the objects, stop and start the VM
around a restore the way `kvtool restart` does, and wait for the outcome, saying why when it fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kvtool import vmctl
from kvtool.api import timeutil
from kvtool.api.types import (
    API_VERSION,
    VIRTUAL_MACHINE_RESTORE,
    VIRTUAL_MACHINE_SNAPSHOT,
    Kind,
)
from kvtool.errors import KvtoolError
from kvtool.kube.resources import KubeError, Resources

FIELD_MANAGER = "kvtool-snapshot"
POLL = 0.5


def _stamp() -> str:
    return timeutil.now().strftime("%Y%m%d-%H%M%S")


def _condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == ctype), {})


def snapshot(res: Resources, namespace: str, vm: str, name: str | None = None) -> dict[str, Any]:
    """Ask for a snapshot of `vm` (default name `<vm>-<UTC time>`); the created object."""
    vmctl.get_vm(res, namespace, vm)
    name = name or f"{vm[:36]}-{_stamp()}"
    body = {"apiVersion": API_VERSION, "kind": VIRTUAL_MACHINE_SNAPSHOT.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"source": {"apiGroup": "kvtool.io", "kind": "VirtualMachine", "name": vm}}}
    try:
        return res.create(VIRTUAL_MACHINE_SNAPSHOT, body, FIELD_MANAGER)
    except KubeError as exc:
        if exc.status == 409:
            raise KvtoolError(f"virtualmachinesnapshot {namespace}/{name} already exists",
                              hint="choose another --name") from None
        raise


def _wait(res: Resources, kind: Kind, namespace: str, name: str, timeout: float,
          progress: Callable[[str], None] | None, outcome: Callable[[dict[str, Any]], str | None]) -> dict[str, Any]:
    """Until `outcome` of the object says "" (done: returned) or a reason (failed: KvtoolError with it); None:
    not yet. Progress: each new message of its Progressing condition, with the time since the start."""
    started, said = time.monotonic(), ""
    what = f"{kind.kind.removeprefix('VirtualMachine').lower()} {name}"
    while True:
        obj = res.get(kind, namespace, name)
        if obj is None:
            raise KvtoolError(f"{kind.kind.lower()} {namespace}/{name} was deleted")
        result = outcome(obj)
        if result == "":
            return obj
        if result is not None:
            raise KvtoolError(f"{what} failed: {result}")
        message = _condition(obj, "Progressing").get("message", "")
        if progress and message and message != said:
            progress(f"{time.monotonic() - started:6.1f}s  {message}")
            said = message
        if time.monotonic() - started > timeout:
            last = f" (last: {message})" if message else ""
            raise KvtoolError(f"{what} did not finish within {timeout:.0f}s{last}")
        time.sleep(POLL)


def _snapshot_outcome(snap: dict[str, Any]) -> str | None:
    status = snap.get("status") or {}
    if status.get("phase") == "Failed":
        return str((status.get("error") or {}).get("message") or "no reason given")
    return "" if status.get("phase") == "Succeeded" else None


def _restore_outcome(restore: dict[str, Any]) -> str | None:
    failure = _condition(restore, "Failure")
    if failure.get("status") == "True":
        return str(failure.get("message") or "no reason given")
    return "" if (restore.get("status") or {}).get("complete") else None


def wait_snapshot(res: Resources, namespace: str, name: str, timeout: float,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Until the snapshot succeeded (returned) or failed (KvtoolError with its error)."""
    return _wait(res, VIRTUAL_MACHINE_SNAPSHOT, namespace, name, timeout, progress, _snapshot_outcome)


def ready_snapshot(res: Resources, namespace: str, vm: str, name: str) -> dict[str, Any]:
    """The snapshot `name` of `vm`, ready to restore; KvtoolError saying what is wrong otherwise."""
    snap = res.get(VIRTUAL_MACHINE_SNAPSHOT, namespace, name)
    if snap is None:
        raise KvtoolError(f"virtualmachinesnapshot {namespace}/{name} not found",
                          hint=f"`kubectl get vmsnapshots -n {namespace}` lists them")
    source = ((snap.get("spec") or {}).get("source") or {}).get("name")
    if source != vm:
        raise KvtoolError(f"snapshot {name} is of VM {source!r}, not {vm!r}",
                          hint="kvtool restores a snapshot into the VM it was taken of")
    status = snap.get("status") or {}
    if not status.get("readyToUse"):
        why = (status.get("error") or {}).get("message") or f"phase {status.get('phase') or 'InProgress'}"
        raise KvtoolError(f"snapshot {name} is not ready to use: {why}")
    return snap


def restore(res: Resources, namespace: str, vm: str, snapshot_name: str, name: str | None = None) -> tuple[str, bool]:
    """Restore `snapshot_name` into `vm`: (the restore's name, whether the VM was running). A running VM is
    stopped for it (the restore holds its next start until the disks are written) and starts again after."""
    vmctl.get_vm(res, namespace, vm)
    ready_snapshot(res, namespace, vm, snapshot_name)
    body = {"apiVersion": API_VERSION, "kind": VIRTUAL_MACHINE_RESTORE.kind,
            "metadata": {"name": name or f"{vm[:36]}-restore-{_stamp()}", "namespace": namespace},
            "spec": {"target": {"apiGroup": "kvtool.io", "kind": "VirtualMachine", "name": vm},
                     "virtualMachineSnapshotName": snapshot_name,
                     "targetReadinessPolicy": "WaitGracePeriod"}}
    created = res.create(VIRTUAL_MACHINE_RESTORE, body, FIELD_MANAGER)
    name = created["metadata"]["name"]
    try:
        running = _restart(res, namespace, vm)
    except BaseException:
        res.delete(VIRTUAL_MACHINE_RESTORE, namespace, name)  # it would wait for a stop that never comes
        raise
    return name, running


def _restart(res: Resources, namespace: str, vm: str) -> bool:
    """Ask a running VM to stop and start again (the restore holds the start); False if it was not running."""
    try:
        vmctl.restart(res, namespace, vm)  # retries when the restore has just moved the VM's status
    except vmctl.NotRunning:
        return False
    return True


def wait_restore(res: Resources, namespace: str, name: str, timeout: float,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Until the restore completed (returned) or failed (KvtoolError with the reason)."""
    return _wait(res, VIRTUAL_MACHINE_RESTORE, namespace, name, timeout, progress, _restore_outcome)
