"""What is running: VMs joined with their VMIs, as rows and as a pandas DataFrame.

The CLI's `kvtool status`, the notebooks' live tables and the Terraform data
sources all read the cluster through this one module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kvtool.api import expiry, quantity
from kvtool.api.types import (
    GUEST_KERNEL_ERROR,
    KVTOOL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    STACK_LABEL,
    STUDENT_LABEL,
    Target,
)
from kvtool.kube.resources import Resources

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["name", "status", "ready", "node", "ip", "cpu", "memory", "age", "message"]
WIDE_COLUMNS = ["namespace", "stack", "name", "status", "ready", "phase", "node", "ip", "cpu", "memory",
                "run_strategy", "image", "restart_required", "age", "student", "expires", "message"]
# Shown in the table only when some VM has a value: roster labs and labs with a --ttl.
LAB_COLUMNS = ("student", "expires")
# What explains a VM that is not fine, most telling first (the controller writes these on the VM).
PROBLEM_CONDITIONS = ("NodeLost", "Failure", GUEST_KERNEL_ERROR, "Expired")


def selector(stack: str | None = None, labels: Mapping[str, str] | None = None) -> str:
    parts = [f"{MANAGED_BY_LABEL}={MANAGED_BY}"]
    if stack:
        parts.append(f"{STACK_LABEL}={stack}")
    parts += [f"{k}={v}" for k, v in (labels or {}).items()]
    return ",".join(parts)


def age(timestamp: str | None, now: dt.datetime | None = None) -> str:
    """kubectl's age format: 45s, 12m, 3h, 5d."""
    if not timestamp:
        return ""
    now = now or dt.datetime.now(dt.UTC)
    then = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    secs = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size * (2 if unit != "d" else 1):
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _condition(obj: Mapping[str, Any], ctype: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c.get("status")
    return None


def problem(vm: Mapping[str, Any]) -> str:
    """The first true problem condition as `Reason: message` (what went wrong and what to do), or ""."""
    conds = {c.get("type"): c for c in (vm.get("status") or {}).get("conditions") or []}
    for ctype in PROBLEM_CONDITIONS:
        c = conds.get(ctype)
        if c and c.get("status") == "True":
            return f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    return ""


def migration_note(vmi_status: Mapping[str, Any]) -> tuple[bool, str]:
    """(migrating now, what to say) from a VMI's migrationState: where it goes while under way, why the last one
    failed after that (until the next one)."""
    state = vmi_status.get("migrationState") or {}
    if not state.get("migrationUid") or state.get("completed"):
        return False, ""
    if state.get("failed"):
        reason = "MigrationCancelled" if state.get("abortStatus") == "Succeeded" else "MigrationFailed"
        return False, f"{reason}: {state.get('failureReason') or 'no reason given'} (the VM stays on " \
                      f"{state.get('sourceNode') or 'its node'})"
    target = state.get("targetNode") or "a node the scheduler picks"
    step = "copying" if state.get("startTimestamp") else "preparing the target"
    return True, f"Migrating: {state.get('sourceNode')} -> {target} ({step})"


def vm_row(vm: Mapping[str, Any], vmi: Mapping[str, Any] | None, now: dt.datetime | None = None) -> dict[str, Any]:
    meta, spec, status = vm.get("metadata", {}), vm.get("spec", {}), vm.get("status") or {}
    tspec = spec.get("template", {}).get("spec", {})
    domain = tspec.get("domain", {})
    cpu = domain.get("cpu", {})
    vcpus = cpu.get("cores", 1) * cpu.get("sockets", 1) * cpu.get("threads", 1)
    mem = domain.get("memory", {}).get("guest") or domain.get("resources", {}).get("requests", {}).get("memory")
    images = [v["containerDisk"]["image"] for v in tspec.get("volumes", []) if "containerDisk" in v]
    kernel = domain.get("firmware", {}).get("kernelBoot", {}).get("container", {}).get("image")
    vmi_status = (vmi or {}).get("status") or {}
    ifaces = vmi_status.get("interfaces") or []
    strategy = spec.get("runStrategy") or ("Always" if spec.get("running") else "Halted")
    migrating, note = migration_note(vmi_status)
    printable = status.get("printableStatus") or ("Stopped" if strategy == "Halted" else "Provisioning")
    return {
        "namespace": meta.get("namespace"),
        "stack": (meta.get("labels") or {}).get(STACK_LABEL, ""),
        "name": meta.get("name"),
        "status": "Migrating" if migrating and printable == "Running" else printable,
        "ready": bool(status.get("ready")),
        "phase": vmi_status.get("phase", ""),
        "node": vmi_status.get("nodeName", ""),
        "ip": next((i.get("ipAddress") for i in ifaces if i.get("ipAddress")), ""),
        "cpu": vcpus,
        "memory": quantity.format_bytes(quantity.to_bytes(mem)) if mem is not None else "",
        "run_strategy": strategy,
        "image": ",".join(images) or (kernel or ""),
        "restart_required": _condition(vm, "RestartRequired") == "True",
        "age": age(meta.get("creationTimestamp"), now),
        "student": (meta.get("labels") or {}).get(STUDENT_LABEL, ""),
        "expires": expiry.human(expiry.left(vm, now)),
        "message": problem(vm) or note,
        "created": meta.get("creationTimestamp"),
    }


def vm_rows(res: Resources, stack: str | None = None, namespace: str | None = None,
            labels: Mapping[str, str] | None = None, target: Target = KVTOOL) -> list[dict[str, Any]]:
    sel = selector(stack, labels)
    vms, _ = res.list(target.vm, namespace, label_selector=sel)
    vmis, _ = res.list(target.vmi, namespace, label_selector=sel)
    by_name = {(v["metadata"].get("namespace"), v["metadata"]["name"]): v for v in vmis}
    now = dt.datetime.now(dt.UTC)
    rows = [vm_row(vm, by_name.get((vm["metadata"].get("namespace"), vm["metadata"]["name"])), now) for vm in vms]
    return sorted(rows, key=lambda r: (r["namespace"] or "", r["name"]))


def frame(rows: Iterable[Mapping[str, Any]], columns: list[str] | None = None) -> pd.DataFrame:
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=[*WIDE_COLUMNS, "created"])
    return df[columns] if columns else df


def status_frame(res: Resources, stack: str | None = None, namespace: str | None = None,
                 labels: Mapping[str, str] | None = None, wide: bool = True) -> pd.DataFrame:
    """The stack's VMs as a DataFrame (one row per VM) for users' own analysis."""
    return frame(vm_rows(res, stack, namespace, labels), None if wide else COLUMNS)
