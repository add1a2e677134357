"""The controller's and handler's decisions, as pure functions (no cluster)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from kvtool.api.types import PAUSE_ANNOTATION, claim_volumes, wants_paused
from kvtool.controller import conditions, operator, template
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
    placed = vmi_logic.decide(sched, [pending], None)
    assert placed.status and "phase" not in placed.status, "bound but not running: still Scheduling"
    assert placed.status["nodeName"] == "n1" and placed.status["activePods"] == {"pod-1": "n1"}
    d = vmi_logic.decide(sched, [bound], True)
    assert d.status["phase"] == "Scheduled" and d.status["nodeName"] == "n1"
    assert d.status["activePods"] == {"pod-1": "n1"}
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
    # KubeVirt's terms: 100+25+40+30 Mi of processes, 8 Mi I/O thread, pages/512, 8 Mi per vCPU; and TCG's 48 Mi
    # plus the translation cache the launcher gives QEMU, an eighth of the guest (32 Mi)
    assert overhead == (100 + 25 + 40 + 30 + 8 + 48 + 32) * 2**20 + 256 * 2**20 // 512 + 2 * 8 * 2**20
    assert int(container["resources"]["requests"]["memory"]) == 256 * 2**20 + overhead
    assert container["resources"]["limits"]["memory"] == container["resources"]["requests"]["memory"]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "VirtualMachineInstance"
    env = {e["name"]: e for e in container["env"]}
    assert env["KVTOOL_POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"


def test_the_launcher_pod_carries_what_each_claim_asks_for() -> None:
    bound = {"spec": {"resources": {"requests": {"storage": "1Gi"}}}, "status": {"capacity": {"storage": "2Gi"}}}
    assert template.claim_size(bound) == 2 << 30  # the bound volume's capacity wins over the request
    assert template.claim_size({"spec": {"resources": {"requests": {"storage": "500M"}}}}) == 500_000_000
    for unusable in (None, {}, {"spec": {"resources": {"requests": {"storage": "lots"}}}},
                     {"status": {"capacity": {"storage": "0"}}}):
        assert template.claim_size(unusable) is None
    v = vm("Always")
    vmi = {**vm_logic.vmi_for(v), "metadata": {**vm_logic.vmi_for(v)["metadata"], "uid": "u-1"}}
    env = {e["name"]: e for e in template.launcher_pod(vmi, template.LauncherConfig(), {"data": 5, "a": 7})[
        "spec"]["containers"][0]["env"]}
    assert json.loads(env["KVTOOL_CLAIM_SIZES"]["value"]) == {"a": 7, "data": 5}
    plain = template.launcher_pod(vmi, template.LauncherConfig())["spec"]["containers"][0]["env"]
    assert "KVTOOL_CLAIM_SIZES" not in {e["name"] for e in plain}


def test_a_guest_kernel_error_shows_on_the_vmi_and_the_vm_as_a_problem() -> None:
    from kvtool import inventory
    from kvtool.launchercom import protocol

    v = vm("Always")
    vmi = {**vm_logic.vmi_for(v), "status": {"phase": "Running", "conditions": []}}
    vmi["metadata"] = {**vmi["metadata"], "uid": "u-1"}
    domain = protocol.domain_status(phase="Running", domain_state="Running",
                                    guest_kernel_error="list_del corruption. next->prev should be 1, but was 2.")
    patch = handler_status.status_patch(vmi, domain, None, "2026-12-01T12:00:00Z")
    cond = next(c for c in patch["conditions"] if c["type"] == "GuestKernelError")
    assert cond["status"] == "True" and "list_del corruption" in cond["message"]
    assert f"kvtool restart {v['metadata']['name']}" in cond["message"]
    healthy = handler_status.status_patch(vmi, protocol.domain_status(phase="Running", domain_state="Running"),
                                          None, "2026-12-01T12:00:00Z")
    assert all(c["type"] != "GuestKernelError" for c in (healthy or {}).get("conditions", []))
    vmi["status"]["conditions"] = patch["conditions"]
    vm_status = vm_logic._status(v, vmi, "Always", {}, False, [])
    vm_cond = next(c for c in vm_status["conditions"] if c["type"] == "GuestKernelError")
    assert vm_cond["status"] == "True"
    assert inventory.problem({"status": vm_status}).startswith("GuestKernelError: the guest's kernel reported")


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


def test_status_unchanged_ignores_condition_times_but_not_fields_or_condition_words() -> None:
    ready = {"type": "Ready", "status": "True", "reason": "Up", "lastTransitionTime": "t0"}
    current = {"printableStatus": "Running", "ready": True, "conditions": [ready]}
    assert conditions.status_unchanged(current, {"ready": True, "conditions": [{**ready, "lastTransitionTime": "t9"}]})
    assert not conditions.status_unchanged(current, {"ready": False, "conditions": [ready]})
    assert not conditions.status_unchanged(current, {"conditions": [{**ready, "message": "now with words"}]})
    assert not conditions.status_unchanged(None, {"ready": True})
    assert conditions.status_unchanged(None, {}), "an empty status over none changes nothing"


def test_claim_volumes_names_claims_and_data_volumes_only() -> None:
    spec = {"volumes": [{"name": "root", "containerDisk": {"image": "debian-12"}},
                        {"name": "data", "persistentVolumeClaim": {"claimName": "lab-data"}},
                        {"name": "dv", "dataVolume": {"name": "lab-dv"}},
                        {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config\n"}}]}
    assert claim_volumes(spec) == [("data", "lab-data"), ("dv", "lab-dv")]
    assert claim_volumes({}) == []


def test_launcher_pod_takes_kubevirt_pod_fields_probes_and_credentials() -> None:
    v = vm("Always")
    spec = v["spec"]["template"]["spec"]
    fields = {"priorityClassName": "high", "schedulerName": "my-scheduler", "dnsPolicy": "None",
              "dnsConfig": {"nameservers": ["10.0.0.10"], "searches": ["lab.local"]}, "hostname": "web",
              "subdomain": "lab", "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                                                                 "whenUnsatisfiable": "DoNotSchedule"}]}
    spec.update(fields, serviceAccountName="vm-sa",
                readinessProbe={"httpGet": {"port": 80, "path": "/healthz"}, "periodSeconds": 2},
                livenessProbe={"tcpSocket": {"port": 22}, "failureThreshold": 5},
                accessCredentials=[{"sshPublicKey": {"source": {"secret": {"secretName": "keys"}},
                                                     "propagationMethod": {"noCloud": {}}}}])
    spec["domain"]["devices"]["autoattachVSOCK"] = True
    inst = vm_logic.vmi_for(v)
    inst["metadata"]["uid"] = "u-1"
    pod = template.launcher_pod(inst, template.LauncherConfig(service_account="launcher"))
    for key, value in fields.items():
        assert pod["spec"][key] == value, key
    assert pod["spec"]["serviceAccountName"] == "vm-sa", "the VMI's service account wins over the default"
    compute = pod["spec"]["containers"][0]
    assert compute["readinessProbe"] == {"httpGet": {"port": 80, "path": "/healthz"}, "periodSeconds": 2}
    assert compute["livenessProbe"] == {"tcpSocket": {"port": 22}, "failureThreshold": 5}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["ac-keys"] == {"name": "ac-keys", "secret": {"secretName": "keys"}}
    assert volumes["vhost-vsock"]["hostPath"] == {"path": "/dev/vhost-vsock", "type": "CharDevice"}
    mounts = {m["name"]: m["mountPath"] for m in compute["volumeMounts"]}
    assert mounts["ac-keys"] == f"{template.ACCESS_CREDENTIALS}/keys"


def test_readiness_probe_ready_follows_the_pod_and_the_handler_leaves_it() -> None:
    owner = vm("Always")
    owner["spec"]["template"]["spec"]["readinessProbe"] = {"tcpSocket": {"port": 22}}
    inst = vmi(owner, "Running", nodeName="n1", domainState="Running")
    pod = {"metadata": {"name": "p", "uid": "pu", "labels": {"kvtool.io/vmi-uid": inst["metadata"]["uid"]}},
           "spec": {"nodeName": "n1"}, "status": {"phase": "Running", "conditions": [
               {"type": "Ready", "status": "False", "message": "containers with unready status: [compute]"}]}}
    ready = conditions.get({"status": vmi_logic.decide(inst, [pod], True).status}, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "GuestNotReady")
    assert "unready status" in ready["message"]
    pod["status"]["conditions"][0]["status"] = "True"
    ready = conditions.get({"status": vmi_logic.decide(inst, [pod], True).status}, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "GuestReady")
    patch = handler_status.status_patch(inst, {"phase": "Running", "domainState": "Running"}, None, "t") or {}
    assert "Ready" not in {c["type"] for c in patch.get("conditions", [])}, "a running probed guest: not the handler's"
    stopped = handler_status.status_patch(inst, {"phase": "Failed", "reason": "DomainCrashed"}, None, "t") or {}
    assert conditions.get({"status": stopped}, "Ready")["status"] == "False"
    unprobed = vmi(vm("Always"), "Running", nodeName="n1", domainState="Running")
    pod["metadata"]["labels"]["kvtool.io/vmi-uid"] = unprobed["metadata"]["uid"]
    said = vmi_logic.decide(unprobed, [pod], True).status or {}
    assert "conditions" not in said, "no probe: the controller says nothing about Ready"


def test_start_strategy_paused_until_unpaused() -> None:
    owner = vm("Always")
    owner["spec"]["template"]["spec"]["startStrategy"] = "Paused"
    inst = vm_logic.vmi_for(owner)
    assert wants_paused(inst)
    inst["metadata"]["annotations"] = {PAUSE_ANNOTATION: "false"}
    assert not wants_paused(inst), "`kvtool unpause` (annotation false) wins over startStrategy"
    assert not wants_paused(vm_logic.vmi_for(vm("Always")))


def test_overcommit_guest_overhead_requests_the_guest_and_limits_the_whole() -> None:
    spec = vm("Always", memory="256Mi")["spec"]["template"]["spec"]
    spec["domain"]["resources"] = {"overcommitGuestOverhead": True}
    res = template.resources(spec)
    assert int(res["requests"]["memory"]) == 256 * 2**20
    assert int(res["limits"]["memory"]) == 256 * 2**20 + template.memory_overhead(spec)


def test_a_vmi_without_interfaces_gets_the_pod_network_unless_told_not_to() -> None:
    owner = vm("Always")
    spec = owner["spec"]["template"]["spec"]
    spec["domain"]["devices"].pop("interfaces", None)
    spec.pop("networks", None)
    inst = vm_logic.vmi_for(owner)
    assert inst["spec"]["networks"] == [{"name": "default", "pod": {}}]
    assert inst["spec"]["domain"]["devices"]["interfaces"] == [{"name": "default", "masquerade": {}}]
    inst["metadata"]["uid"] = "u"
    inst["status"] = {"phase": "Running"}
    status = vm_logic.decide(owner, inst, NOW).status
    assert conditions.get({"status": status}, "RestartRequired")["status"] == "False", "the default is no change"
    spec["domain"]["devices"]["autoattachPodInterface"] = False
    assert "networks" not in vm_logic.vmi_for(owner)["spec"]


def expiring(ttl: str | None = "1h", expires_at: str | None = None, on_expiry: str | None = None,
             **kw: Any) -> dict[str, Any]:
    v = vm("Always", **kw)
    v["metadata"]["creationTimestamp"] = "2026-11-25T11:30:00Z"
    v["metadata"]["labels"] = {"kvtool.io/stack": "intro"}
    notes = {"kvtool.io/ttl": ttl, "kvtool.io/expires-at": expires_at, "kvtool.io/on-expiry": on_expiry}
    v["metadata"]["annotations"] = {k: val for k, val in notes.items() if val is not None}
    return v


def test_a_vm_runs_until_its_ttl_and_the_controller_comes_back_at_the_deadline() -> None:
    v = expiring("1h")  # created 11:30: expires 12:30, NOW is 12:00
    d = vm_logic.decide(v, None, NOW)
    assert d.create_vmi and d.requeue_after == 1800.0
    expired = conditions.get({"status": d.status}, "Expired")
    assert expired and expired["status"] == "False" and expired["message"] == "expires at 2026-11-25T12:30:00Z"


def test_an_expired_vm_is_stopped_and_says_how_to_get_more_time() -> None:
    v = expiring("20m")  # expired at 11:50
    running = vmi(v, "Running", conditions=[{"type": "Ready", "status": "True"}])
    d = vm_logic.decide(v, running, NOW)
    assert d.delete_vmi == running["metadata"]["uid"] and not d.create_vmi and not d.delete_vm
    assert d.events == [("Normal", "Expired", "the lab's time ran out at 2026-11-25T11:50:00Z: the VM is stopped "
                                              "until it gets more time; `kvtool lab extend --stack intro --by 1h` "
                                              "starts it again")]
    v["status"] = d.status
    d = vm_logic.decide(v, None, NOW)
    assert not d.create_vmi and d.status["printableStatus"] == "Stopped" and d.events == []
    assert conditions.is_true({"status": d.status}, "Expired")
    # A start request cannot override the deadline; a later expires-at (kvtool lab extend) starts it again.
    v["status"] = {**d.status, "stateChangeRequests": [{"action": "Start"}]}
    d = vm_logic.decide(v, None, NOW)
    assert not d.create_vmi and d.status["stateChangeRequests"] == []
    v["status"] = d.status
    v["metadata"]["annotations"]["kvtool.io/expires-at"] = "2026-11-25T13:00:00Z"
    d = vm_logic.decide(v, None, NOW)
    assert d.create_vmi and d.requeue_after == 3600.0


def test_on_expiry_delete_deletes_the_vm_and_bad_annotations_never_expire() -> None:
    d = vm_logic.decide(expiring("20m", on_expiry="Delete"), None, NOW)
    assert d.delete_vm and not d.create_vmi
    d = vm_logic.decide(expiring("soon"), None, NOW)
    assert d.create_vmi and not d.delete_vm
    bad = conditions.get({"status": d.status}, "Expired")
    assert bad and bad["status"] == "False" and bad["reason"] == "InvalidExpiry"
    assert "annotation kvtool.io/ttl: 'soon' is not a duration" in bad["message"]
    assert conditions.get({"status": vm_logic.decide(vm("Always"), None, NOW).status}, "Expired") is None


def test_status_rows_show_the_student_and_the_time_left() -> None:
    from kvtool import inventory
    from kvtool.api import expiry

    v = expiring("1h")  # created 11:30, NOW 12:00
    v["metadata"]["labels"]["kvtool.io/student"] = "ada"
    row = inventory.vm_row(v, None, NOW)
    assert (row["student"], row["expires"]) == ("ada", "30m00s")
    assert inventory.vm_row(expiring("20m"), None, NOW)["expires"] == "expired"
    assert inventory.vm_row(vm("Always"), None, NOW)["expires"] == ""
    assert [expiry.human(s) for s in (45, 3700, 90000, None)] == ["45s", "1h01m", "1d1h", ""]


def test_what_the_indexes_hold_decodes_to_a_private_copy_and_knows_its_version() -> None:
    body = {"metadata": {"name": "v", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                         "managedFields": [{"manager": "kvtool"}]},
            "status": {"nodeName": "n1", "phase": "Running"}}
    held = operator.Held(operator.trimmed(body))
    assert held.node == "n1" and held.uid == "u1" and held.version == 7
    first = held.body()
    assert "managedFields" not in first["metadata"] and first["status"] == body["status"]
    first["status"]["phase"] = "Failed"
    assert held.body()["status"]["phase"] == "Running", "each reader gets its own copy"
    newer = operator.Held({**body, "metadata": {**body["metadata"], "resourceVersion": "9"}})
    assert operator._caught_up(newer, held) and operator._caught_up(held, held), "as new or newer: the cache's"
    assert not operator._caught_up(held, newer), "older than what the controller wrote: the written one"
    other = operator.Held({**body, "metadata": {**body["metadata"], "uid": "u2", "resourceVersion": "1"}})
    assert operator._caught_up(other, newer), "another object of that name: the written one went"
