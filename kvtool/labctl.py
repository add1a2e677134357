"""Lab-wide verbs on a stack's VMs: passwords, extend, reset. One place for the CLI and the notebook.

reset: a VM whose disks are all ephemeral (containerDisk, emptyDisk, cloud-init, Secrets...) starts
from its images again on every launch, so a restart is a reset to its baseline; a VM with a persistent
disk would keep what was written, so a reset refuses the whole lab before touching any VM.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvtool import vmctl
from kvtool.api import expiry, timeutil
from kvtool.api.types import SECRET, STACK_LABEL, STUDENT_LABEL, VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE
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


def reset_refusal(stack: str, vms: list[dict[str, Any]]) -> KvtoolError | None:
    """Why the stack's VMs cannot be reset by a restart (some keep persistent disks), or None."""
    kept = {vm["metadata"]["name"]: disks for vm in vms if (disks := persistent_disks(vm))}
    if not kept:
        return None
    listed = "; ".join(f"{name}: {', '.join(disks)}" for name, disks in sorted(kept.items()))
    return KvtoolError(f"cannot reset stack {stack!r}: these VMs keep disks a restart does not undo ({listed}); "
                       "nothing was reset",
                       hint="a reset to a baseline of persistent disks needs snapshots, which kvtool does not "
                            "have yet; use containerDisk and emptyDisk volumes for lab VMs")


def reset(res: Resources, namespace: str, stack: str) -> list[str]:
    """Restart every running VM of the stack from its images; a line per VM. Refuses, changing nothing, when
    any VM has a persistent disk."""
    vms = stack_vms(res, namespace, stack)
    if not vms:
        raise KvtoolError(f"stack {stack!r} has no VMs in namespace {namespace!r}")
    refusal = reset_refusal(stack, vms)
    if refusal is not None:
        raise refusal
    lines = []
    for vm in vms:
        name = vm["metadata"]["name"]
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
