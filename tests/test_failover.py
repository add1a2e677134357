"""Fenced failover on node loss, with real guests on real kubelets: power a node off or cut its
network, and watch its VMs come back elsewhere only after the node was fenced.

The failover grace is lowered for these tests (ConfigMap kvtool-system/kvtool-failover) so each
case takes seconds; bench/failover.py measures the default 40 s.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Cluster, kvtool
from tests.processes import ExitWatch, qemu_for, start_time
from tests.runtime_helpers import condition, describe_vm, get, vm_status, wait_running
from tests.vmfactory import vm
from tests.waiting import wait_for

NODES = ("kvtool-node-1", "kvtool-node-2")
GRACE = 12  # the shortest the setting allows: above the kubelet's 10 s lease renewals
CONFIG = "kvtool-failover"
STACK = "failover"


def _failover_setting(cluster: Cluster, **data: str) -> None:
    cluster.kubectl("-n", "kvtool-system", "patch", "configmap", CONFIG, "--type=merge",
                    "-p", json.dumps({"data": data}))


@pytest.fixture(scope="module")
def fast_failover(cluster: Cluster, tiny_image: str) -> Iterator[None]:
    before = json.loads(cluster.kubectl("-n", "kvtool-system", "get", "configmap", CONFIG, "-o", "json").stdout)
    assert before["data"]["fenceAgent"] == "embedded", "cluster up configures its power switch as the fence agent"
    _failover_setting(cluster, nodeLostGraceSeconds=str(GRACE))
    yield
    _failover_setting(cluster, **before["data"])


def _apply(tmp: Path, *docs: dict[str, Any]) -> None:
    """Each test's VMs as a stack of their own (an apply prunes what its stack no longer names)."""
    path = tmp / f"{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    kvtool("apply", "-f", str(path), "--stack", STACK, "--auto-approve", check=True)


def _name() -> str:
    return f"fo-{uuid.uuid4().hex[:5]}"


def _pinned(doc: dict[str, Any], node: str) -> dict[str, Any]:
    doc["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    return doc


def _preferring(doc: dict[str, Any], node: str) -> dict[str, Any]:
    """Starts on `node` while it is up, may run anywhere once it is not."""
    doc["spec"]["template"]["spec"]["affinity"] = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": {"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}}]}}
    return doc


def _node(cluster: Cluster, node: str) -> dict[str, Any]:
    found = get(cluster, "node", node, namespace="")
    assert found is not None
    return found


def _back_in_service(cluster: Cluster, node: str) -> None:
    """Power on and reconnect `node`; until it is Ready, unfenced and its handler serves it again."""
    kvtool("cluster", "node", "heal", node, check=True)
    kvtool("cluster", "node", "start", node, check=True)

    def serving() -> bool:
        n = _node(cluster, node)
        annotations = n["metadata"].get("annotations") or {}
        taints = [t["key"] for t in n.get("spec", {}).get("taints") or []]
        pods = json.loads(cluster.kubectl("-n", "kvtool-system", "get", "pods", "-l",
                                          "app.kubernetes.io/name=kvtool-handler", "-o", "json").stdout)["items"]
        handler_ready = any(p["spec"].get("nodeName") == node and condition(p, "Ready").get("status") == "True"
                            for p in pods)
        return (condition(n, "Ready").get("status") == "True" and "kvtool.io/fence-state" not in annotations
                and not any(t.startswith("node.kubernetes.io/") for t in taints) and handler_ready)

    wait_for(serving, timeout=120, what=f"{node} back in service: Ready, fence lifted, handler ready")


def _replacement(cluster: Cluster, name: str, old: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The VM's next VMI once it runs (the old one may still read Running until the node is judged lost)."""
    def running_anew() -> bool:
        vmi = get(cluster, "vmi", name)
        return bool(vmi and vmi["metadata"]["uid"] != old["metadata"]["uid"] and vm_status(cluster, name) == "Running")

    wait_for(running_anew, timeout=timeout, what=f"a new VMI of {name} Running", describe=describe_vm(cluster, name))
    return wait_running(cluster, name)


def _marker_uptime(name: str) -> float:
    """The guest's own uptime in its readiness line (KVTOOL-GUEST-READY hostname=... uptime=...)."""
    out = kvtool("console", name, "--tail").stdout
    line = next(ln for ln in reversed(out.splitlines()) if "KVTOOL-GUEST-READY" in ln)
    return float(line.split("uptime=")[1].split()[0])


def _partition_and_fail_over(cluster: Cluster, name: str) -> str:
    """Partition the running VM's node until the VM runs elsewhere; that node. Checks that its old QEMU
    exited before the new one started. The caller puts the node back in service."""
    first = wait_running(cluster, name)
    node = first["status"]["nodeName"]
    [old_qemu] = qemu_for(f"default_{name}")
    watch = ExitWatch(old_qemu)
    kvtool("cluster", "node", "partition", node, check=True)
    try:
        again = _replacement(cluster, name, first, timeout=GRACE + 150)
        assert again["status"]["nodeName"] != node
        [new_qemu] = qemu_for(f"default_{name}")
        watch.thread.join(timeout=10)
        assert watch.exited_at is not None, "the partitioned node's QEMU was stopped by fencing"
        started = start_time(new_qemu)
        assert watch.exited_at <= started, (
            f"the replacement QEMU started at {started:.2f}, before the old one exited at {watch.exited_at:.2f}")
    except BaseException:
        _back_in_service(cluster, node)
        raise
    return node


def test_a_powered_off_node_s_vm_boots_again_on_the_other_node(cluster: Cluster, fast_failover: None,
                                                                tmp_path: Path) -> None:
    always, manual, opted = _name(), _name(), _name()
    opt_doc = _pinned(vm(opted, run_strategy="Always"), NODES[0])
    opt_doc["metadata"]["annotations"] = {"kvtool.io/failover": "disabled"}
    # One apply of the whole stack: an apply of stack "failover" prunes what it does not name.
    _apply(tmp_path, _preferring(vm(always, run_strategy="Always"), NODES[0]),
           _pinned(vm(manual, run_strategy="Manual"), NODES[0]), opt_doc)
    kvtool("start", manual, check=True)
    first = {n: wait_running(cluster, n) for n in (always, manual, opted)}
    assert {v["status"]["nodeName"] for v in first.values()} == {NODES[0]}
    wait_for(lambda: "KVTOOL-GUEST-READY" in kvtool("console", always, "--tail").stdout, timeout=90,
             what="the guest's first boot marker")
    stopped_at = time.time()
    kvtool("cluster", "node", "stop", NODES[0], check=True)
    try:
        assert not qemu_for(f"default_{always}"), "power off leaves no QEMU of the node behind"
        again = _replacement(cluster, always, first[always], timeout=GRACE + 90)
        assert again["status"]["nodeName"] == NODES[1]
        wait_for(lambda: "KVTOOL-GUEST-READY" in kvtool("console", always, "--tail").stdout, timeout=90,
                 what="the guest's boot marker on the new node")
        assert _marker_uptime(always) < time.time() - stopped_at, "the guest booted afresh on the new node"
        fenced = _node(cluster, NODES[0])
        assert fenced["metadata"]["annotations"]["kvtool.io/fence-state"] == "Fenced"
        assert {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"} in \
            fenced["spec"]["taints"]
        # Manual is not restarted: its VMI ends Failed (NodeFenced) and stays that way.
        old = get(cluster, "vmi", manual)
        assert old is not None and old["metadata"]["uid"] == first[manual]["metadata"]["uid"]
        assert old["status"]["phase"] == "Failed" and old["status"]["reason"] == "NodeFenced"
        assert condition(old, "NodeLost")["reason"] == "NodeFenced"
        assert vm_status(cluster, manual) == "Stopped"
        # Opted out: fenced with its node, not restarted, and it says why.
        wait_for(lambda: condition(get(cluster, "vm", opted), "NodeLost").get("reason") == "FailoverOptedOut",
                 timeout=30, what="the opted-out VM's reason", describe=describe_vm(cluster, opted))
        assert vm_status(cluster, opted) == "Stopped"
        assert get(cluster, "vmi", opted)["metadata"]["uid"] == first[opted]["metadata"]["uid"]
    finally:
        _back_in_service(cluster, NODES[0])
    for n in (always, manual, opted):
        cluster.kubectl("delete", "vm", n, "--wait=false")


def test_a_partitioned_node_s_qemu_is_gone_before_the_replacement_starts(cluster: Cluster, fast_failover: None,
                                                                          tmp_path: Path) -> None:
    name = _name()
    _apply(tmp_path, _preferring(vm(name, run_strategy="Always"), NODES[1]))
    node = _partition_and_fail_over(cluster, name)
    try:
        lost = condition(get(cluster, "vm", name), "NodeLost")
        assert lost.get("status") != "True", lost
    finally:
        _back_in_service(cluster, node)
    assert len(qemu_for(f"default_{name}")) == 1, "after heal and power-on the VM runs exactly once"
    cluster.kubectl("delete", "vm", name, "--wait=false")


def test_without_a_fence_agent_nothing_moves_and_the_vm_says_why(cluster: Cluster, fast_failover: None,
                                                                 tmp_path: Path) -> None:
    name = _name()
    _apply(tmp_path, _pinned(vm(name, run_strategy="Always"), NODES[1]))
    first = wait_running(cluster, name)
    _failover_setting(cluster, fenceAgent="none")
    kvtool("cluster", "node", "partition", NODES[1], check=True)
    try:
        wait_for(lambda: condition(get(cluster, "vm", name), "NodeLost").get("reason") == "NoFenceAgent",
                 timeout=GRACE + 60, what="NodeLost, reason NoFenceAgent", describe=describe_vm(cluster, name))
        lost = condition(get(cluster, "vm", name), "NodeLost")
        assert "no fence agent is configured" in lost["message"] and "fenceAgent" in lost["message"]
        assert vm_status(cluster, name) == "Unknown"
        vmi = get(cluster, "vmi", name)
        assert vmi["metadata"]["uid"] == first["metadata"]["uid"] and vmi["status"]["phase"] == "Running"
        assert "kvtool.io/fence-state" not in (_node(cluster, NODES[1])["metadata"].get("annotations") or {})
        assert qemu_for(f"default_{name}"), "nobody fenced the node: its guest still runs there"
        status = kvtool("status", "--stack", "failover")
        assert "no fence agent" in status.stdout, status.stdout
    finally:
        kvtool("cluster", "node", "heal", NODES[1], check=True)
        try:
            # Healed before anyone fenced it: the same VMI goes on, and the condition clears.
            wait_for(lambda: condition(get(cluster, "vm", name), "NodeLost").get("status") == "False", timeout=60,
                     what="NodeLost cleared after heal", describe=describe_vm(cluster, name))
        finally:
            try:
                _back_in_service(cluster, NODES[1])
            finally:
                # Only now may a fence agent come back: before, it would fence the node that is healing.
                _failover_setting(cluster, fenceAgent="embedded")
    assert get(cluster, "vmi", name)["metadata"]["uid"] == first["metadata"]["uid"]
    cluster.kubectl("delete", "vm", name, "--wait=false")


def test_a_vm_on_a_node_local_volume_waits_for_its_node(cluster: Cluster, fast_failover: None,
                                                        tmp_path: Path) -> None:
    name = _name()
    pv_dir = tmp_path / "pv"
    pv_dir.mkdir()
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{name}-pv"},
          "spec": {"capacity": {"storage": "64Mi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                   "persistentVolumeReclaimPolicy": "Retain", "local": {"path": str(pv_dir)},
                   "claimRef": {"namespace": "default", "name": f"{name}-data"},
                   "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                       {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODES[0]]}]}]}}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"{name}-data"},
           "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": f"{name}-pv",
                    "resources": {"requests": {"storage": "64Mi"}}}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([pv, pvc]))
    doc = vm(name, run_strategy="Always")
    spec = doc["spec"]["template"]["spec"]
    spec["domain"]["devices"]["disks"].append({"name": "data", "disk": {"bus": "virtio"}})
    spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": f"{name}-data"}}]
    _apply(tmp_path, doc)
    first = wait_running(cluster, name)
    assert first["status"]["nodeName"] == NODES[0]
    kvtool("cluster", "node", "stop", NODES[0], check=True)
    try:
        wait_for(lambda: condition(get(cluster, "vmi", name), "FailoverBlocked").get("status") == "True",
                 timeout=GRACE + 60, what="FailoverBlocked on the VMI", describe=describe_vm(cluster, name))
        blocked = condition(get(cluster, "vmi", name), "FailoverBlocked")
        assert blocked["reason"] == "NodeLocalDisk" and f"{name}-pv" in blocked["message"], blocked
        vm_obj = get(cluster, "vm", name)
        assert vm_status(cluster, name) == "Stopped"
        assert condition(vm_obj, "Failure")["reason"] == "NodeFenced"
        assert get(cluster, "vmi", name)["metadata"]["uid"] == first["metadata"]["uid"], "not restarted elsewhere"
    finally:
        _back_in_service(cluster, NODES[0])
    # Its node is back: the VM starts again there, with its disk.
    again = _replacement(cluster, name, first, timeout=120)
    assert again["status"]["nodeName"] == NODES[0]
    cluster.kubectl("delete", "vm", name, "--wait=true", timeout=120)
    cluster.kubectl("delete", "pvc", f"{name}-data", "--wait=false")
    cluster.kubectl("delete", "pv", f"{name}-pv", "--wait=false")


# The admin's fence command, as a real cluster would run fence_ipmilan: here it asks the embedded power switch,
# with the credentials from the Secret mounted into the Job's pod.
FENCE_SCRIPT = """
import json, os, ssl, urllib.request
read = lambda key: open('/etc/fence/' + key).read().strip()
request = urllib.request.Request(read('endpoint') + '/v1/nodes/' + os.environ['NODE_NAME'] + '/power-off',
                                 method='POST', headers={'Authorization': 'Bearer ' + read('token')})
context = ssl.create_default_context(cafile='/etc/fence/ca.crt')
print(json.load(urllib.request.urlopen(request, context=context, timeout=30)))
"""


def test_a_fence_job_of_the_admin_fences_a_partitioned_node(cluster: Cluster, fast_failover: None,
                                                           tmp_path: Path) -> None:
    image = cluster.kubectl("-n", "kvtool-system", "get", "deploy", "kvtool-controller", "-o",
                            "jsonpath={.spec.template.spec.containers[0].image}").stdout
    job = {"template": {"spec": {
        "containers": [{"name": "fence", "image": image, "imagePullPolicy": "IfNotPresent",
                        "command": ["python3", "-c", FENCE_SCRIPT],
                        "volumeMounts": [{"name": "creds", "mountPath": "/etc/fence", "readOnly": True}]}],
        "volumes": [{"name": "creds", "secret": {"secretName": "kvtool-fence-embedded"}}]}}}
    name = _name()
    _apply(tmp_path, _preferring(vm(name, run_strategy="Always"), NODES[1]))
    wait_running(cluster, name)
    _failover_setting(cluster, fenceAgent="job", fenceJob=yaml.safe_dump(job))
    try:
        node = _partition_and_fail_over(cluster, name)
    except BaseException:
        _failover_setting(cluster, fenceAgent="embedded", fenceJob="")
        raise
    try:
        annotations = _node(cluster, node)["metadata"]["annotations"]
        assert annotations["kvtool.io/fence-state"] == "Fenced"
        assert annotations["kvtool.io/fence-message"] == f"fence Job kvtool-fence-{node} completed"
        wait_for(lambda: cluster.kubectl("-n", "kvtool-system", "get", "job", f"kvtool-fence-{node}",
                                         check=False).returncode != 0, timeout=30,
                 what="the finished fence Job removed")
    finally:
        _failover_setting(cluster, fenceAgent="embedded", fenceJob="")
        _back_in_service(cluster, node)
    cluster.kubectl("delete", "vm", name, "--wait=false")


def test_node_switches_name_the_nodes_they_know(cluster: Cluster) -> None:
    result = kvtool("cluster", "node", "stop", "kvtool-node-9")
    assert result.returncode == 1
    assert "no node named 'kvtool-node-9'; have ['kvtool-node-1', 'kvtool-node-2']" in result.stderr
    status = kvtool("cluster", "node", "status", NODES[0], check=True)
    assert status.stdout.strip() == f"{NODES[0]}: power on, network connected"
