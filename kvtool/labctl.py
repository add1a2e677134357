"""Lab-wide verbs on a stack's VMs: passwords, extend, reset. One place for the CLI and the notebook.

reset: a VM whose disks are all ephemeral (containerDisk, emptyDisk, cloud-init, Secrets...) starts
from its images again on every launch, so a restart is a reset to its baseline. A VM with claims goes back
to its baseline snapshot (`kvtool apply --baseline` asks the controller to take one before the first boot):
it is stopped, its claims are written back from the snapshot, and it starts again. A VM whose writes
nothing can undo (a hostDisk, or claims without a ready baseline) makes the reset refuse the whole lab
before touching any VM.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvtool import snapshotctl, vmctl
from kvtool.api import expiry, snapshotnames, timeutil
from kvtool.api.types import (
    SECRET,
    STACK_LABEL,
    STUDENT_LABEL,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    VIRTUAL_MACHINE_SNAPSHOT,
)
from kvtool.errors import KvtoolError
from kvtool.images import usage
from kvtool.kube.resources import Resources
from kvtool.plan import desired, roster

# Volume kinds whose writes outlive the VMI: a restart does not undo them.
PERSISTENT_VOLUMES = ("persistentVolumeClaim", "dataVolume", "hostDisk")


@dataclass(frozen=True)
class Login:
    student: str
    vm: str
    password: str


def roster_state(templates: Sequence[Mapping[str, Any]], students: roster.Roster, *, stack: str, namespace: str,
                 passwords: Mapping[str, str]) -> desired.DesiredState:
    """The templates once per student (kvtool.plan.roster), checked as `kvtool plan` checks files; `passwords`:
    the ones the lab's login Secrets already hold (roster.passwords_of), so a second plan changes nothing."""
    documents = roster.expand(templates, students, passwords=passwords)
    return desired.load(objects=documents, stack=stack, namespace=namespace, checks=[usage.checker()])


def stack_vms(res: Resources, namespace: str, stack: str) -> list[dict[str, Any]]:
    vms, _ = res.list(VIRTUAL_MACHINE, namespace, label_selector=f"{STACK_LABEL}={stack}")
    return sorted(vms, key=lambda v: v["metadata"]["name"])


def login_secrets(res: Resources, namespace: str, stack: str) -> list[dict[str, Any]]:
    """The login Secrets of a roster lab (kvtool.plan.roster): `plan --roster` reuses their passwords."""
    found, _ = res.list(SECRET, namespace, label_selector=roster.selector(stack))
    return found


def passwords(res: Resources, namespace: str, stack: str) -> list[Login]:
    """The initial passwords of a roster lab's students without a key, by VM."""
    found = login_secrets(res, namespace, stack)
    students = {roster.vm_of_login_secret(s["metadata"]["name"]): s["metadata"]["labels"][STUDENT_LABEL]
                for s in found}
    return [Login(students[vm], vm, pw) for vm, pw in sorted(roster.passwords_of(found).items())]


def extend(res: Resources, namespace: str, stack: str, by: dt.timedelta,
           now: dt.datetime | None = None) -> list[tuple[str, dt.datetime]]:
    """Each expiring VM's new deadline: `by` after the later of its deadline and now (kvtool.api.expiry)."""
    now = now or timeutil.now()
    timed = []
    for vm in stack_vms(res, namespace, stack):
        try:
            at = expiry.deadline(vm)
        except expiry.ExpiryError:
            at = now  # unreadable: the controller ignores it; a fresh deadline replaces it
        if at is not None:
            timed.append((vm["metadata"]["name"], max(at, now) + by))
    if not timed:
        raise KvtoolError(f"no VM of stack {stack!r} in namespace {namespace!r} expires",
                          hint="give a lab an end with `kvtool apply --ttl 3h ...`")
    for name, new in timed:
        res.merge_patch(VIRTUAL_MACHINE, namespace, name,
                        {"metadata": {"annotations": {expiry.EXPIRES_AT: timeutil.stamp(new)}}},
                        field_manager=expiry.EXTEND_MANAGER)
    return timed


def persistent_disks(vm: dict[str, Any]) -> list[str]:
    """`volume (kind claim)` for each of the VM's volumes whose writes survive a restart."""
    out = []
    for volume in vm.get("spec", {}).get("template", {}).get("spec", {}).get("volumes") or []:
        for kind in PERSISTENT_VOLUMES:
            if kind in volume:
                source = volume[kind]
                what = source.get("claimName") or source.get("name") or source.get("path") or ""
                out.append(f"{volume.get('name')} ({kind} {what})".replace(" )", ")"))
    return out


def lab_settings(state: desired.DesiredState, *, ttl: str | None = None, on_expiry: str | None = None,
                 baseline: bool = False) -> None:
    """A lab's settings as the annotations the controller reads, on every VM of `state` (`kvtool plan|apply
    --ttl --on-expiry --baseline`, the notebook's fields): an end (kvtool.api.expiry; ValueError when `ttl` is
    not a duration) and, for VMs with claims, a baseline snapshot before the first boot."""
    for obj in state.objects:
        if obj.kind.kind != "VirtualMachine":
            continue
        if ttl is not None or on_expiry is not None:
            expiry.annotate(obj.manifest, ttl, on_expiry)
        if baseline and persistent_disks(obj.manifest):
            obj.manifest["metadata"].setdefault("annotations", {})[snapshotnames.BASELINE_ANNOTATION] = "true"


def _baseline_problem(vm: dict[str, Any], snapshot: dict[str, Any] | None) -> str | None:
    """Why `vm`'s persistent disks cannot go back to a baseline, or None (none to undo, or a ready baseline)."""
    disks = persistent_disks(vm)
    if not disks:
        return None
    host = [d for d in disks if "(hostDisk" in d]
    if host:
        return f"{', '.join(host)}: a host disk has no snapshots"
    name = snapshotnames.baseline(vm["metadata"]["name"])
    if snapshot is None:
        return f"{', '.join(disks)}: no baseline snapshot {name}"
    status = snapshot.get("status") or {}
    if not status.get("readyToUse"):
        why = (status.get("error") or {}).get("message") or f"phase {status.get('phase') or 'InProgress'}"
        return f"baseline snapshot {name} is not ready ({why})"
    return None


def reset_refusal(stack: str, vms: list[dict[str, Any]],
                  baselines: dict[str, dict[str, Any] | None]) -> KvtoolError | None:
    """Why the stack's VMs cannot all be reset, or None; baselines: VM name -> its baseline snapshot."""
    problems = {vm["metadata"]["name"]: why for vm in vms
                if (why := _baseline_problem(vm, baselines.get(vm["metadata"]["name"])))}
    if not problems:
        return None
    listed = "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))
    return KvtoolError(f"cannot reset stack {stack!r}: these VMs keep disks a restart does not undo ({listed}); "
                       "nothing was reset",
                       hint="apply the lab with `kvtool apply --baseline ...` (the controller snapshots each VM's "
                            "claims before its first boot), or use containerDisk and emptyDisk volumes")


def baselines(res: Resources, namespace: str, vms: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
    """VM name -> its baseline snapshot (None: there is none), for the VMs with persistent disks."""
    return {vm["metadata"]["name"]: res.get(VIRTUAL_MACHINE_SNAPSHOT, namespace,
                                            snapshotnames.baseline(vm["metadata"]["name"]))
            for vm in vms if persistent_disks(vm)}


def reset(res: Resources, namespace: str, stack: str) -> list[str]:
    """Every VM of the stack back to its start, a line per VM: a restart for VMs of images only, a restore of
    the baseline snapshot for VMs with claims. Refuses, changing nothing, when any VM cannot be."""
    vms = stack_vms(res, namespace, stack)
    if not vms:
        raise KvtoolError(f"stack {stack!r} has no VMs in namespace {namespace!r}")
    kept = baselines(res, namespace, vms)
    refusal = reset_refusal(stack, vms, kept)
    if refusal is not None:
        raise refusal
    lines = []
    for vm in vms:
        name = vm["metadata"]["name"]
        if name in kept:
            restore, running = snapshotctl.restore(res, namespace, name, snapshotnames.baseline(name))
            lines.append(f"{name}: restoring its disks from its baseline ({restore})" +
                         ("; it starts again after" if running else ""))
            continue
        try:
            vmctl.restart(res, namespace, name)
        except vmctl.NotRunning:
            lines.append(f"{name}: not running; it starts from its images when it starts")
        else:
            lines.append(f"{name}: restarting from its images")
    return lines


def running_instances(res: Resources, namespace: str, stack: str) -> dict[str, str]:
    """VM name -> uid of its VMI, for the stack's VMs that have one (what a reset replaces)."""
    vmis, _ = res.list(VIRTUAL_MACHINE_INSTANCE, namespace, label_selector=f"{STACK_LABEL}={stack}")
    return {v["metadata"]["name"]: v["metadata"]["uid"] for v in vmis}


def wait_restarted(res: Resources, namespace: str, before: Mapping[str, str], timeout: float,
                   poll: float = 1.0) -> str:
    """Until each VM in `before` runs a VMI other than the one it had; a sentence saying so (KvtoolError if not
    within `timeout` seconds, naming the VMs still on their way)."""
    deadline = time.monotonic() + timeout
    waiting = dict(before)
    while waiting:
        for name, uid in list(waiting.items()):
            vmi = res.get(VIRTUAL_MACHINE_INSTANCE, namespace, name)
            if vmi and vmi["metadata"]["uid"] != uid and (vmi.get("status") or {}).get("phase") == "Running":
                del waiting[name]
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise KvtoolError(f"{', '.join(sorted(waiting))} did not run again within {timeout:.0f}s after the reset",
                              hint="`kvtool status` shows why")
        time.sleep(poll)
    return f"All {len(before)} running VM(s) run again from their images."
