"""What the controller does for one VirtualMachine, as a pure function of the VM and its VMI.

runStrategy semantics follow KubeVirt: Always keeps one VMI running (also
after the guest shuts down), RerunOnFailure re-creates only after a failure,
Once runs a VMI once, Halted runs none, Manual acts only on start/stop
requests (status.stateChangeRequests, written by `kvtool start|stop|restart`).
Failures back off like KubeVirt's crash loop: immediately the first time,
then 5 s, 10 s, 20 s ... up to 5 minutes.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from kvtool.api import expiry, timeutil
from kvtool.api.types import GUEST_KERNEL_ERROR, STACK_LABEL
from kvtool.controller import conditions, failover

FINAL = ("Succeeded", "Failed")
# Failures no retry can fix: the spec (or an image it names) cannot become a domain, or the API refused the pod.
# The VM stops with the reason instead of crash-looping; a template change or `kvtool restart` tries again.
PERMANENT_FAILURES = ("InvalidVMI", "PodRejected")
BACKOFF_MAX = 300.0
# A VMI that ran this long resets the crash-loop count.
STABLE_RUN = dt.timedelta(seconds=30)


def run_strategy(vm: dict[str, Any]) -> str:
    spec = vm.get("spec", {})
    return spec.get("runStrategy") or ("Always" if spec.get("running") else "Halted")


def backoff(failures: int) -> float:
    return 0.0 if failures <= 1 else min(BACKOFF_MAX, 5.0 * 2 ** (failures - 2))


@dataclass
class VMDecision:
    create_vmi: bool = False
    delete_vmi: str | None = None  # uid of the VMI to delete
    delete_vm: bool = False  # the VM expired with kvtool.io/on-expiry: Delete
    status: dict[str, Any] = field(default_factory=dict)
    requeue_after: float | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    held: bool = False  # it would start now, but waits for its disks (a restore, a first baseline snapshot)


def _phase(vmi: dict[str, Any] | None) -> str | None:
    return ((vmi or {}).get("status") or {}).get("phase") if vmi else None


def _running_since(vmi: dict[str, Any]) -> dt.datetime | None:
    for t in reversed((vmi.get("status") or {}).get("phaseTransitionTimestamps") or []):
        if t.get("phase") == "Running":
            return timeutil.parse(t.get("phaseTransitionTimestamp"))
    return None


def permanent_failure(vm: dict[str, Any], vmi: dict[str, Any] | None) -> bool:
    """The VMI failed for a reason no restart of the same template can fix."""
    status = (vmi or {}).get("status") or {}
    return bool(vmi and status.get("phase") == "Failed" and status.get("reason") in PERMANENT_FAILURES
                and vm.get("spec", {}).get("template", {}).get("spec") == vmi.get("spec"))


def decide(vm: dict[str, Any], vmi: dict[str, Any] | None, now: dt.datetime | None = None, *,
           restoring: str | None = None, snapshotting: str | None = None, hold: bool = False) -> VMDecision:
    """restoring: the VirtualMachineRestore writing the VM's disks; snapshotting: the VirtualMachineSnapshot
    copying them; hold: no VMI may start yet (either of them says so: kvtool.controller.snapshot)."""
    now = now or timeutil.now()
    d = VMDecision()
    status = dict(vm.get("status") or {})
    strategy = run_strategy(vm)
    phase = _phase(vmi)
    vmi_deleting = bool(vmi and vmi["metadata"].get("deletionTimestamp"))
    vmi_uid = vmi["metadata"]["uid"] if vmi else None
    failure = dict(status.get("startFailure") or {})
    requests = list(status.get("stateChangeRequests") or [])

    # Crash-loop bookkeeping: count each failed VMI once; a long enough run resets the count.
    if vmi and phase == "Failed" and failure.get("lastFailedVMIUID") != vmi_uid:
        ran = _running_since(vmi)
        count = 1 if ran and now - ran > STABLE_RUN else int(failure.get("consecutiveFailCount", 0)) + 1
        retry = now + dt.timedelta(seconds=backoff(count))
        failure = {"consecutiveFailCount": count, "retries": int(failure.get("retries", 0)) + 1,
                   "lastFailedVMIUID": vmi_uid, "retryAfterTimestamp": timeutil.stamp_precise(retry)}
        why = (vmi.get("status") or {}).get("reason")
        d.events.append(("Warning", "VMIFailed", f"VMI {vmi_uid} failed" + (f" ({why})" if why else "") +
                         f"; restart #{count} after {backoff(count):.0f}s"))
    elif vmi and phase == "Running" and failure and (ran := _running_since(vmi)) and now - ran > STABLE_RUN:
        failure = {}
    retry_after = timeutil.parse(failure.get("retryAfterTimestamp")) if failure else None
    waiting = retry_after is not None and retry_after > now

    def start_vmi() -> None:
        if hold or restoring:
            d.held = True  # the restore's or snapshot's end syncs the VM again
        elif waiting:
            d.requeue_after = max(0.05, (retry_after - now).total_seconds())  # type: ignore[operator]
        else:
            d.create_vmi = True

    at, expired_cond = _expiry(vm, now)
    expired_message = expired_cond["message"] if expired_cond and expired_cond["status"] == "True" else None
    expired = expired_message is not None
    if vm["metadata"].get("deletionTimestamp"):
        pass  # the garbage collector removes the VMI
    elif expired:
        requests, failure, waiting = [], {}, False  # no start until the deadline moves (`kvtool lab extend`)
        if expiry.policy(vm) == expiry.DELETE:
            d.delete_vm = True
        elif vmi and not vmi_deleting:
            d.delete_vmi = vmi_uid
        if not conditions.is_true(vm, EXPIRED):
            d.events.append(("Normal", "Expired", str(expired_message)))
    elif requests:
        req = requests[0]
        if req.get("action") == "Stop":
            if vmi and (not req.get("uid") or req.get("uid") == vmi_uid):
                if not vmi_deleting:
                    d.delete_vmi = vmi_uid
            else:
                requests.pop(0)
        elif req.get("action") == "Start":
            if vmi is None:
                failure, waiting = {}, False
                start_vmi()
            elif phase in FINAL and not vmi_deleting:
                d.delete_vmi = vmi_uid
            elif phase not in FINAL:
                requests.pop(0)
        else:
            requests.pop(0)
        if requests:
            d.requeue_after = d.requeue_after or 1.0
    elif strategy in ("Always", "RerunOnFailure"):
        if vmi is None:
            start_vmi()
        elif failover.held(vm, vmi) or permanent_failure(vm, vmi):
            pass  # fenced but may not move, or failed for good: it says why, and waits for the user
        elif not vmi_deleting and (phase == "Failed" or (phase == "Succeeded" and strategy == "Always")):
            d.delete_vmi = vmi_uid
    elif strategy == "Once":
        if vmi is None and not status.get("created") and not status.get("printableStatus"):
            start_vmi()
    elif strategy == "Halted":
        failure = {}
        if vmi and not vmi_deleting:
            d.delete_vmi = vmi_uid

    if at is not None and not expired:  # come back at the deadline
        until = max(0.05, (at - now).total_seconds())
        d.requeue_after = min(d.requeue_after, until) if d.requeue_after is not None else until
    d.status = _status(vm, vmi, strategy, failure, waiting, requests)
    d.status["restoreInProgress"] = restoring
    d.status["snapshotInProgress"] = snapshotting
    if d.held and vmi is None:
        d.status["printableStatus"] = "Provisioning"
    if expired_cond is not None:
        d.status["conditions"].append(expired_cond)
    return d


EXPIRED = "Expired"


def _expiry(vm: dict[str, Any], now: dt.datetime) -> tuple[dt.datetime | None, dict[str, Any] | None]:
    """(deadline, the Expired condition) — (None, None) for a VM that never expires."""
    try:
        at = expiry.deadline(vm)
    except expiry.ExpiryError as exc:
        return None, conditions.condition(EXPIRED, False, "InvalidExpiry",
                                          f"{exc}; the VM does not expire until it is fixed")
    if at is None:
        return None, None
    stack = (vm["metadata"].get("labels") or {}).get(STACK_LABEL)
    extend = f"`kvtool lab extend --stack {stack} --by 1h`" if stack else f"a later {expiry.EXPIRES_AT}"
    if now < at:
        return at, conditions.condition(EXPIRED, False, "", f"expires at {timeutil.stamp(at)}")
    if expiry.policy(vm) == expiry.DELETE:
        return at, conditions.condition(EXPIRED, True, "TTLExpired",
                                        f"the lab's time ran out at {timeutil.stamp(at)}: the VM is deleted "
                                        f"({expiry.ON_EXPIRY}: {expiry.DELETE})")
    return at, conditions.condition(EXPIRED, True, "TTLExpired",
                                    f"the lab's time ran out at {timeutil.stamp(at)}: the VM is stopped until it "
                                    f"gets more time; {extend} starts it again")


def _status(vm: dict[str, Any], vmi: dict[str, Any] | None, strategy: str, failure: dict[str, Any],
            waiting: bool, requests: list[dict[str, Any]]) -> dict[str, Any]:
    phase = _phase(vmi)
    printable = _printable(vm, vmi, strategy, failure, waiting)
    ready = phase == "Running" and conditions.is_true(vmi, "Ready")
    vmi_failure = conditions.get(vmi, "Failure") if vmi else None
    scheduled = conditions.get(vmi, "PodScheduled") if vmi else None
    if printable == "ErrorUnschedulable" and scheduled:
        failure_cond = conditions.condition("Failure", True, "Unschedulable", scheduled.get("message", ""))
    elif vmi_failure and vmi_failure.get("status") == "True":
        message = vmi_failure.get("message", "")
        if permanent_failure(vm, vmi):
            message += (f" (not restarted: no retry can fix this; change the VM's spec, or fix what it names and run "
                        f"`kvtool restart {vm['metadata']['name']}`)")
        failure_cond = conditions.condition("Failure", True, vmi_failure.get("reason", ""), message)
    elif printable == "CrashLoopBackOff":
        failure_cond = conditions.condition("Failure", True, "CrashLoopBackOff",
                                            f"{failure.get('consecutiveFailCount')} consecutive failures; "
                                            f"next start after {failure.get('retryAfterTimestamp')}"
                                            + _last_failure(vm))
    else:
        failure_cond = conditions.condition("Failure", False)
    restart = bool(vmi and phase not in FINAL and
                   defaulted_spec(vm.get("spec", {}).get("template", {}).get("spec") or {}) != vmi.get("spec"))
    vmi_ready = conditions.get(vmi, "Ready") if vmi else None
    lost = conditions.get(vmi, failover.NODE_LOST) if vmi else None
    oops = conditions.get(vmi, GUEST_KERNEL_ERROR) if vmi and phase not in FINAL else None
    new_conditions = [
        conditions.condition("Ready", ready, (vmi_ready or {}).get("reason", "") if vmi else "VMINotExists",
                             (vmi_ready or {}).get("message", "") if vmi else "no VirtualMachineInstance"),
        failure_cond,
        conditions.condition("RestartRequired", restart, "TemplateChanged" if restart else "",
                             "the VM template changed; restart the VM to use it" if restart else ""),
        conditions.condition("Paused", phase == "Running" and conditions.is_true(vmi, "Paused")),
        conditions.condition(failover.NODE_LOST, (lost or {}).get("status") == "True", (lost or {}).get("reason", ""),
                             (lost or {}).get("message", "")),
        conditions.condition(GUEST_KERNEL_ERROR, (oops or {}).get("status") == "True", (oops or {}).get("reason", ""),
                             (oops or {}).get("message", "")),
    ]
    return {
        "printableStatus": printable,
        "ready": ready,
        "created": vmi is not None,
        "runStrategy": strategy,
        "vmiUID": vmi["metadata"]["uid"] if vmi else "",
        "observedGeneration": vm["metadata"].get("generation", 0),
        "conditions": new_conditions,
        "startFailure": failure or None,
        "stateChangeRequests": requests,
    }


def with_new_vmi(status_conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The VM's conditions once its VMI was just created: Ready no longer says "no VirtualMachineInstance"; it
    takes the new VMI's Ready, which it does not have yet (as `_status` reads it on the next sync)."""
    return [conditions.condition("Ready", False) if c["type"] == "Ready" else c for c in status_conditions]


LAST = "; last failure: "


def _last_failure(vm: dict[str, Any]) -> str:
    """The last VMI failure as the VM's Failure condition recorded it (its VMI is gone by now)."""
    previous = conditions.get(vm, "Failure") or {}
    if previous.get("status") != "True":
        return ""
    if previous.get("reason") == "CrashLoopBackOff":
        message = previous.get("message", "")
        return message[message.index(LAST):] if LAST in message else ""
    return f"{LAST}{previous.get('reason', '')}: {previous.get('message', '')}"


def _printable(vm: dict[str, Any], vmi: dict[str, Any] | None, strategy: str, failure: dict[str, Any],
               waiting: bool) -> str:
    if vm["metadata"].get("deletionTimestamp"):
        return "Terminating"
    if vmi is None:
        return "CrashLoopBackOff" if waiting and strategy in ("Always", "RerunOnFailure") else "Stopped"
    phase = _phase(vmi)
    restarts = strategy in ("Always", "RerunOnFailure")
    if failover.held(vm, vmi) or (restarts and permanent_failure(vm, vmi)):
        return "Stopped"
    if phase not in FINAL and conditions.is_true(vmi, failover.NODE_LOST):
        return "Unknown"
    if vmi["metadata"].get("deletionTimestamp"):
        if phase == "Failed" and restarts:  # removing a failed VMI to start a new one
            return "CrashLoopBackOff" if int(failure.get("consecutiveFailCount", 0)) > 1 else "Starting"
        return "Stopping"
    if phase in (None, "Pending", "Scheduling", "Scheduled"):
        scheduled = conditions.get(vmi, "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return "ErrorUnschedulable"
        return "Starting"
    if phase == "Running":
        ready = conditions.get(vmi, "Ready")
        if ready and ready.get("reason") == "NodeUnreachable":
            return "Unknown"
        return "Paused" if conditions.is_true(vmi, "Paused") else "Running"
    if phase == "Failed" and strategy in ("Always", "RerunOnFailure"):
        return "CrashLoopBackOff" if int(failure.get("consecutiveFailCount", 0)) > 1 else "Starting"
    if phase == "Succeeded" and strategy == "Always":
        return "Starting"
    if phase == "Unknown":
        return "Unknown"
    return "Stopped"


def defaulted_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of a VM template's spec with KubeVirt's defaults the runtime relies on (KubeVirt's VMI mutating
    webhook sets the same): a VMI that lists no interfaces and no networks gets one masquerade interface on
    the pod network, unless devices.autoattachPodInterface is false."""
    out = copy.deepcopy(spec)
    devices = out.get("domain", {}).get("devices", {})
    if not devices.get("interfaces") and not out.get("networks") and devices.get("autoattachPodInterface", True):
        out.setdefault("domain", {}).setdefault("devices", {})["interfaces"] = [{"name": "default", "masquerade": {}}]
        out["networks"] = [{"name": "default", "pod": {}}]
    return out


def vmi_for(vm: dict[str, Any]) -> dict[str, Any]:
    """The VMI to create: the template, owned by the VM, labelled like the VM's stack."""
    meta = vm["metadata"]
    template = vm["spec"]["template"]
    tmeta = template.get("metadata") or {}
    labels = {**{k: v for k, v in (meta.get("labels") or {}).items()
                 if k in ("kvtool.io/stack", "app.kubernetes.io/managed-by")},
              **(tmeta.get("labels") or {}), "kvtool.io/vm": meta["name"]}
    out: dict[str, Any] = {
        "apiVersion": vm["apiVersion"],
        "kind": "VirtualMachineInstance",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [{"apiVersion": vm["apiVersion"], "kind": "VirtualMachine", "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": defaulted_spec(template["spec"]),
    }
    if tmeta.get("annotations"):
        out["metadata"]["annotations"] = dict(tmeta["annotations"])
    return out
