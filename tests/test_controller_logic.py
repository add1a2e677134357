"""The controller's and handler's decisions, as pure functions (no cluster)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from kvtool.controller import conditions, template
from kvtool.controller import vm as vm_logic
from kvtool.controller import vmi as vmi_logic
from kvtool.handler import status as handler_status
from tests.vmfactory import vm as vm_doc

NOW = dt.datetime(2026, 11, 25, 12, 0, 0, tzinfo=dt.UTC)


def vm(strategy: str = "Always", status: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    doc = vm_doc("vm1", run_strategy=strategy, **kw)
    doc["metadata"].update(namespace="default", uid=str(uuid.uuid4()), generation=1)
    if status:
        doc["status"] = status
    return doc


def vmi(owner: dict[str, Any], phase: str | None = None, deleting: bool = False, **status: Any) -> dict[str, Any]:
    out = vm_logic.vmi_for(owner)
    out["metadata"].update(uid=str(uuid.uuid4()), resourceVersion="1")
    if deleting:
        out["metadata"]["deletionTimestamp"] = "2026-11-25T11:59:00Z"
    out["status"] = {"phase": phase, **status} if phase else dict(status)
    return out


def test_always_creates_and_halted_deletes() -> None:
    v = vm("Always")
    d = vm_logic.decide(v, None, NOW)
    assert d.create_vmi and d.status["printableStatus"] == "Stopped"
    running = vmi(v, "Running", conditions=[{"type": "Ready", "status": "True"}])
    d = vm_logic.decide(v, running, NOW)
    assert not d.create_vmi and not d.delete_vmi
    assert d.status["printableStatus"] == "Running" and d.status["ready"]
    d = vm_logic.decide(vm("Halted"), running, NOW)
    assert d.delete_vmi == running["metadata"]["uid"]


def test_crash_loop_backoff_grows_and_resets() -> None:
    v = vm("Always")
    failed = vmi(v, "Failed")
    d = vm_logic.decide(v, failed, NOW)
    assert d.delete_vmi == failed["metadata"]["uid"]
    assert d.status["startFailure"]["consecutiveFailCount"] == 1
    # First failure: restart at once. Second: wait 5 s, then 10 s ...
    v["status"] = d.status
    d = vm_logic.decide(v, None, NOW)
    assert d.create_vmi
    failed2 = vmi(v, "Failed")
    d = vm_logic.decide(v, failed2, NOW)
    assert d.status["startFailure"]["consecutiveFailCount"] == 2
    v["status"] = d.status
    d = vm_logic.decide(v, None, NOW)
    assert not d.create_vmi and d.status["printableStatus"] == "CrashLoopBackOff"
    assert 4.9 < (d.requeue_after or 0) <= 5.0
    assert vm_logic.backoff(3) == 10 and vm_logic.backoff(20) == 300
    d = vm_logic.decide(v, None, NOW + dt.timedelta(seconds=6))
    assert d.create_vmi
    # The same failed VMI is counted once, however often it is seen.
    v["status"]["startFailure"]["lastFailedVMIUID"] = failed2["metadata"]["uid"]
    again = vm_logic.decide(v, failed2, NOW)
    assert again.status["startFailure"]["consecutiveFailCount"] == 2


def test_rerun_on_failure_keeps_a_succeeded_vmi_and_always_restarts_it() -> None:
    done = vmi(vm("RerunOnFailure"), "Succeeded")
    d = vm_logic.decide(vm("RerunOnFailure"), done, NOW)
    assert not d.delete_vmi and d.status["printableStatus"] == "Stopped"
    d = vm_logic.decide(vm("Always"), done, NOW)
    assert d.delete_vmi


def test_manual_acts_on_requests_only() -> None:
    v = vm("Manual")
    assert not vm_logic.decide(v, None, NOW).create_vmi
    v["status"] = {"stateChangeRequests": [{"action": "Start"}]}
    d = vm_logic.decide(v, None, NOW)
    assert d.create_vmi
    running = vmi(v, "Running")
    d = vm_logic.decide(v, running, NOW)
    assert d.status["stateChangeRequests"] == []
    v["status"] = {"stateChangeRequests": [{"action": "Stop", "uid": running["metadata"]["uid"]}, {"action": "Start"}]}
    d = vm_logic.decide(v, running, NOW)
    assert d.delete_vmi == running["metadata"]["uid"]
    d = vm_logic.decide(v, None, NOW)  # stopped: the Stop is done, the Start comes next
    assert d.status["stateChangeRequests"] == [{"action": "Start"}]


def test_printable_statuses() -> None:
    v = vm("Always")
    unsched = vmi(v, "Scheduling", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                "message": "0/2 nodes are available: 2 Insufficient cpu."}])
    d = vm_logic.decide(v, unsched, NOW)
    assert d.status["printableStatus"] == "ErrorUnschedulable"
    failure = next(c for c in d.status["conditions"] if c["type"] == "Failure")
    assert failure["status"] == "True" and "Insufficient cpu" in failure["message"]
    paused = vmi(v, "Running", conditions=[{"type": "Paused", "status": "True"}])
    assert vm_logic.decide(v, paused, NOW).status["printableStatus"] == "Paused"
    stopping = vmi(vm("Halted"), "Running", deleting=True)
    assert vm_logic.decide(vm("Halted"), stopping, NOW).status["printableStatus"] == "Stopping"


def test_restart_required_when_template_differs() -> None:
    v = vm("Always")
    running = vmi(v, "Running")
    assert not _cond(vm_logic.decide(v, running, NOW).status, "RestartRequired")
    v["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = 4
    assert _cond(vm_logic.decide(v, running, NOW).status, "RestartRequired")


def _cond(status: dict[str, Any], ctype: str) -> bool:
    return next(c for c in status["conditions"] if c["type"] == ctype)["status"] == "True"


def test_vmi_phases_from_pods() -> None:
    v = vm("Always")
    new = vmi(v)
    d = vmi_logic.decide(new, [], None)
    assert d.create_pod and d.status and d.status["phase"] == "Scheduling"
    pod = template.launcher_pod(new, template.LauncherConfig())
    pod["metadata"].update(name=vmi_logic.pod_name(new), uid="pod-1")
    bound = {**pod, "spec": {**pod["spec"], "nodeName": "n1"}, "status": {"phase": "Running"}}
    sched = vmi(v, "Scheduling")
    sched["metadata"]["uid"] = new["metadata"]["uid"]
    pending = {**bound, "status": {"phase": "Pending"}}
    waiting = vmi_logic.decide(sched, [pending], None)
    assert waiting.status is None and not waiting.labels, "bound but not running: nothing to write yet"
    d = vmi_logic.decide(sched, [bound], True)
    assert d.status["phase"] == "Scheduled" and d.status["nodeName"] == "n1"
    assert d.status["activePods"] == {"pod-1": "n1"} and d.labels == {"kvtool.io/nodeName": "n1"}
    running = {**sched, "status": {"phase": "Running", "nodeName": "n1"}}
    assert vmi_logic.decide(running, [bound], True).status in (None, {"activePods": {"pod-1": "n1"}})
    ended = {**bound, "status": {"phase": "Failed", "containerStatuses": [
        {"name": "compute", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}}
    d = vmi_logic.decide(running, [ended], True)
    assert d.status["phase"] == "Failed" and d.status["reason"] == "LauncherExited1"
    d = vmi_logic.decide(running, [bound], False)
    ready = next(c for c in d.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "NodeUnreachable"
    vanished = vmi_logic.decide(running, [], True)
    assert vanished.status["phase"] == "Failed" and not vanished.create_pod


def test_launcher_pod_copies_scheduling_and_resources() -> None:
    v = vm("Always", memory="256Mi", cores=2)
    v["spec"]["template"]["spec"]["nodeSelector"] = {"disk": "ssd"}
    v["spec"]["template"]["spec"]["tolerations"] = [{"key": "k", "operator": "Exists"}]
    pod = template.launcher_pod({**vm_logic.vmi_for(v), "metadata": {
        **vm_logic.vmi_for(v)["metadata"], "uid": "u-1"}}, template.LauncherConfig("img:1"))
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"disk": "ssd"} and spec["tolerations"][0]["key"] == "k"
    container = spec["containers"][0]
    assert container["image"] == "img:1" and container["command"] == ["kvtool", "launcher"]
    assert container["resources"]["requests"]["cpu"] == "200m"
    overhead = template.memory_overhead(v["spec"]["template"]["spec"])
    # KubeVirt's terms: 100+25+40+30 Mi of processes, 8 Mi I/O thread, 64 Mi TCG, pages/512, 8 Mi per vCPU
    assert overhead == (100 + 25 + 40 + 30 + 8 + 64) * 2**20 + 256 * 2**20 // 512 + 2 * 8 * 2**20
    assert int(container["resources"]["requests"]["memory"]) == 256 * 2**20 + overhead
    assert container["resources"]["limits"]["memory"] == container["resources"]["requests"]["memory"]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "VirtualMachineInstance"
    env = {e["name"]: e for e in container["env"]}
    assert env["KVTOOL_POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"


def test_handler_status_from_domain() -> None:
    v = vm("Always")
    sched = vmi(v, "Scheduled", nodeName="n1")
    patch = handler_status.status_patch(sched, {"phase": "Running", "domainState": "running", "interfaces": [
        {"name": "default", "mac": "02:00:00:00:00:01", "ipAddress": "10.0.2.15"}]}, "0.1.0", "2026-11-25T12:00:00.00Z")
    assert patch and patch["phase"] == "Running" and patch["interfaces"][0]["ipAddress"] == "10.0.2.15"
    assert patch["phaseTransitionTimestamps"][-1]["phase"] == "Running"
    assert patch["launcherContainerImageVersion"] == "0.1.0"
    running = {**sched, "status": {**sched["status"], **patch}}
    assert handler_status.status_patch(running, {"phase": "Running", "domainState": "running", "interfaces": [
        {"name": "default", "mac": "02:00:00:00:00:01", "ipAddress": "10.0.2.15"}]}, "0.1.0", "later") is None
    failed = handler_status.status_patch(sched, {"phase": "Failed", "reason": "DomainStartFailed",
                                                 "message": "unsupported configuration: CPU model"}, None, "t")
    assert failed and failed["phase"] == "Failed"
    assert any(c["type"] == "Failure" and "CPU model" in c["message"] for c in failed["conditions"])


def test_a_node_back_from_a_blip_clears_the_unreachable_mark() -> None:
    owner = vm("Always")
    inst = vmi(owner, "Running", nodeName="n1", conditions=[{"type": "Ready", "status": "False",
                                                             "reason": "NodeUnreachable", "message": "x"}])
    pod = {"metadata": {"name": "p", "uid": "pu", "labels": {"kvtool.io/vmi-uid": inst["metadata"]["uid"]}},
           "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}
    d = vmi_logic.decide(inst, [pod], node_ready=True)
    ready = next(c for c in d.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "NodeReachable"
    assert vmi_logic.decide(inst, [pod], node_ready=None).status is None or "conditions" not in (
        vmi_logic.decide(inst, [pod], node_ready=None).status or {}), "unknown readiness changes nothing"


def test_put_sets_one_condition_and_keeps_the_others() -> None:
    old = [{"type": "Ready", "status": "False", "lastTransitionTime": "t0"},
           {"type": "Failure", "status": "True", "reason": "FailedCreate", "lastTransitionTime": "t1"}]
    out = conditions.put(old, conditions.condition("Failure", False))
    assert [c["type"] for c in out] == ["Ready", "Failure"]
    assert out[0] == old[0] and out[1]["status"] == "False" and out[1]["lastTransitionTime"] != "t1"
    again = conditions.put(out, conditions.condition("Failure", False))
    assert again[1]["lastTransitionTime"] == out[1]["lastTransitionTime"], "unchanged status keeps its time"
    added = conditions.put(old[:1], conditions.condition("Paused", False))
    assert [c["type"] for c in added] == ["Ready", "Paused"]
