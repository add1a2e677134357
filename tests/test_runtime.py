"""The VM runtime end to end on the embedded cluster: controller, node agents, handlers, launchers, QEMU.

Each test is one behaviour the runtime issue names. VMs boot the tiny-linux
guest under TCG (~3-5 s); tests use their own VM names and clean up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import Cluster, kvtool
from tests.processes import pod_processes, qemu_for
from tests.runtime_helpers import (
    condition,
    describe_vm,
    get,
    injected,
    refusals,
    refusing_policy,
    vm_status,
    wait_for,
    wait_running,
)
from tests.vmfactory import vm

CONTROLLER_USER = "system:serviceaccount:kvtool-system:kvtool-controller"


@pytest.fixture
def name() -> str:
    return f"rt-{uuid.uuid4().hex[:6]}"


def apply(tmp_path: Path, *docs: dict, stack: str = "runtime") -> None:
    f = tmp_path / f"{uuid.uuid4().hex[:6]}.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    kvtool("apply", "-f", str(f), "--stack", stack, "--auto-approve", check=True)


def launcher_pid(cluster: Cluster, vm_name: str) -> int:
    pods = json.loads(cluster.kubectl("get", "pods", "-l", f"kvtool.io/vmi={vm_name}", "-o", "json").stdout)["items"]
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    assert running, f"no running launcher pod for {vm_name}"
    # The compute container's first process: `kvtool launcher ...`, in the pod's cgroup.
    launchers = [pid for pid in pod_processes(running[0]["metadata"]["uid"])
                 if b"\0launcher\0" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(launchers) == 1, launchers
    return launchers[0]


def delete_vm(cluster: Cluster, vm_name: str) -> None:
    cluster.kubectl("delete", "vm", vm_name, "--wait=false", check=False)
    wait_for(lambda: get(cluster, "vmi", vm_name) is None and not qemu_for(f"default_{vm_name}"), timeout=120,
             what=f"{vm_name} to be gone")


def test_vm_boots_and_the_console_shows_the_guest(cluster: Cluster, tiny_image: str, name: str,
                                                 tmp_path: Path) -> None:
    apply(tmp_path, vm(name, run_strategy="Always", user_data="#!/bin/sh\necho hello-from-$(hostname)\n"))
    vmi = wait_running(cluster, name)
    status = vmi["status"]
    assert status["nodeName"].startswith("kvtool-node-")
    assert [t["phase"] for t in status["phaseTransitionTimestamps"]][-1] == "Running"
    assert status.get("launcherContainerImageVersion")
    wait_for(lambda: "KVTOOL-GUEST-READY" in kvtool("console", name, "--tail").stdout, timeout=60,
             what="the guest's readiness marker on the serial console")
    table = kvtool("status", "--stack", "runtime", check=True).stdout
    row = next(line for line in table.splitlines() if line.startswith(name))
    assert "Running" in row and status["nodeName"] in row
    steps = [line for line in kvtool("status", name, "--timeline", check=True).stdout.splitlines()
             if line.split()[:1] and line.split()[0][:2].isdigit()]
    whats = " | ".join(steps)
    # Every phase the VMI went through, in order. `Scheduled` is skipped when the handler reports `Running`
    # before the kubelet reports the pod running (docs/runtime.md, "Who writes which status").
    phases = [t["phase"] for t in status["phaseTransitionTimestamps"]]
    assert phases[0] == "Scheduling", phases
    for step in ("VM created", *(f"VMI {p}" for p in phases), "container compute started", "VMI Ready"):
        assert step in whats, f"{step!r} in the timeline: {whats}"
    order = [whats.index(f"VMI {p}") for p in phases] + [whats.index("VMI Ready")]
    assert order == sorted(order), whats
    assert len(qemu_for(f"default_{name}")) == 1
    delete_vm(cluster, name)


def test_verbs_stop_start_pause_restart(cluster: Cluster, tiny_image: str, name: str, tmp_path: Path) -> None:
    apply(tmp_path, vm(name, run_strategy="Always"))
    first = wait_running(cluster, name)["metadata"]["uid"]
    kvtool("pause", name, check=True)
    wait_for(lambda: vm_status(cluster, name) == "Paused", what="Paused", describe=describe_vm(cluster, name))
    kvtool("unpause", name, check=True)
    wait_for(lambda: vm_status(cluster, name) == "Running", what="Running again")
    kvtool("restart", name, check=True)
    second = wait_for(lambda: (v := get(cluster, "vmi", name)) and v["metadata"]["uid"] != first and
                      (v.get("status") or {}).get("phase") == "Running" and v["metadata"]["uid"], timeout=120,
                      what="a new VMI after restart", describe=describe_vm(cluster, name))
    assert second != first
    kvtool("stop", name, check=True)
    wait_for(lambda: vm_status(cluster, name) == "Stopped" and get(cluster, "vmi", name) is None, timeout=90,
             what="Stopped", describe=describe_vm(cluster, name))
    assert not qemu_for(f"default_{name}")
    kvtool("start", name, check=True)
    wait_running(cluster, name)
    # The same verbs through kubectl's plugin mechanism.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               KUBECONFIG=str(cluster.kubeconfig))
    out = subprocess.run([str(cluster.kubectl_path), "virt", "stop", name], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: vm_status(cluster, name) == "Stopped", timeout=90, what="Stopped via kubectl virt")
    delete_vm(cluster, name)


def test_killed_launcher_fails_the_vmi_and_always_gets_a_new_one(cluster: Cluster, tiny_image: str, name: str,
                                                                  tmp_path: Path) -> None:
    apply(tmp_path, vm(name, run_strategy="Always"))
    first = wait_running(cluster, name)["metadata"]["uid"]
    os.kill(launcher_pid(cluster, name), signal.SIGKILL)
    wait_for(lambda: (v := get(cluster, "vmi", name)) and v["metadata"]["uid"] != first and
             (v.get("status") or {}).get("phase") == "Running", timeout=120, what="a new running VMI",
             describe=describe_vm(cluster, name))
    assert len(qemu_for(f"default_{name}")) == 1, "exactly one domain: the old one must not be left behind"
    events = cluster.kubectl("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json").stdout
    assert any(e["reason"] == "VMIFailed" for e in json.loads(events)["items"])
    delete_vm(cluster, name)


def test_deleting_a_vm_removes_domain_daemon_pod_and_dirs(cluster: Cluster, tiny_image: str, name: str,
                                                         tmp_path: Path) -> None:
    apply(tmp_path, vm(name, run_strategy="Always"))
    vmi = wait_running(cluster, name)
    pod_uid, node = next(iter(vmi["status"]["activePods"].items()))
    assert pod_processes(pod_uid), "the launcher, its libvirtd and QEMU run in the pod's cgroup"
    delete_vm(cluster, name)
    wait_for(lambda: not pod_processes(pod_uid) and not qemu_for(f"default_{name}"), timeout=60,
             what="no process of the pod left")
    wait_for(lambda: cluster.kubectl("get", "pods", "-l", f"kvtool.io/vmi={name}", "-o", "name").stdout.strip() == "",
             timeout=60, what="the launcher pod object deleted once its kubelet finished it")
    pod_dir = cluster.home / "nodes" / node / "kubelet" / "pods" / pod_uid
    wait_for(lambda: not pod_dir.exists(), timeout=90, what=f"the kubelet to remove the pod's dir {pod_dir}")
    sockets = list(Path("/run").glob(f"kvt-*/{node}/sockets/{pod_uid}*"))
    assert not sockets, f"sockets left behind: {sockets}"


def test_libvirt_rejecting_the_domain_is_a_failure_with_its_message(cluster: Cluster, tiny_image: str, name: str,
                                                                   tmp_path: Path) -> None:
    doc = vm(name, run_strategy="Always")
    doc["spec"]["template"]["spec"]["domain"]["cpu"]["model"] = "no-such-cpu-model"
    apply(tmp_path, doc)

    def failed_with_reason() -> dict | None:
        v = get(cluster, "vm", name)
        failure = condition(v, "Failure")
        return v if failure.get("status") == "True" and "no-such-cpu-model" in failure.get("message", "") else None

    v = wait_for(failed_with_reason, timeout=120, what="a Failure condition carrying libvirt's message",
                 describe=describe_vm(cluster, name))
    assert v["status"]["printableStatus"] in ("CrashLoopBackOff", "Starting"), v["status"]
    # Backing off between VMIs, the VM still says what went wrong last.
    wait_for(lambda: vm_status(cluster, name) == "CrashLoopBackOff" and "last failure: DomainStartFailed" in
             condition(get(cluster, "vm", name), "Failure").get("message", "") and "no-such-cpu-model" in
             condition(get(cluster, "vm", name), "Failure").get("message", ""), timeout=120,
             what="CrashLoopBackOff naming the last failure", describe=describe_vm(cluster, name))
    delete_vm(cluster, name)


def test_a_failure_no_retry_can_fix_stops_the_vm_with_its_reason(cluster: Cluster, tiny_image: str, name: str,
                                                                 tmp_path: Path) -> None:
    doc = vm(name, run_strategy="Always")
    spec = doc["spec"]["template"]["spec"]
    spec["domain"]["devices"]["disks"].append({"name": "root", "disk": {"bus": "virtio"}})
    spec["volumes"] = [{"name": "root", "containerDisk": {"image": tiny_image}}]  # a kernel image, not a disk
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    refused = kvtool("validate", str(path))
    assert refused.returncode == 1 and "containerDisk.image: image 'tiny-linux' is a kernel image" in refused.stderr
    cluster.kubectl("apply", "-f", str(path))  # kubectl knows no image store: the runtime must say it

    def stopped() -> dict | None:
        v = get(cluster, "vm", name)
        failure = condition(v, "Failure")
        return v if vm_status(cluster, name) == "Stopped" and failure.get("reason") == "InvalidVMI" else None

    v = wait_for(stopped, timeout=120, what="the VM Stopped with reason InvalidVMI",
                 describe=describe_vm(cluster, name))
    message = condition(v, "Failure")["message"]
    assert "is a kernel image" in message and "not restarted" in message, message
    failed = get(cluster, "vmi", name)
    assert failed is not None and failed["status"]["phase"] == "Failed"
    assert v["status"].get("startFailure", {}).get("consecutiveFailCount") == 1, "no crash loop"
    detail = kvtool("status", name, check=True).stdout
    assert "Status:" in detail and "Stopped" in detail and "InvalidVMI" in detail and "not restarted" in detail, detail
    delete_vm(cluster, name)


def test_a_vm_bigger_than_any_node_is_unschedulable(cluster: Cluster, name: str, tmp_path: Path) -> None:
    apply(tmp_path, vm(name, run_strategy="Always", cores=64))
    wait_for(lambda: vm_status(cluster, name) == "ErrorUnschedulable", timeout=60, what="ErrorUnschedulable",
             describe=describe_vm(cluster, name))
    failure = condition(get(cluster, "vm", name), "Failure")
    assert "Insufficient cpu" in failure["message"], failure
    delete_vm(cluster, name)


def _kvtool_pods(cluster: Cluster, app: str, node: str | None = None) -> list[str]:
    selector = [f"--field-selector=spec.nodeName={node}"] if node else []
    return cluster.kubectl("-n", "kvtool-system", "get", "pods", "-l", f"app.kubernetes.io/name={app}", *selector,
                           "-o", "jsonpath={.items[*].metadata.name}").stdout.split()


def _leader(cluster: Cluster) -> str:
    lease = get(cluster, "lease", "kvtool-controller", namespace="kvtool-system") or {}
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def test_controller_restart_mid_create_makes_no_duplicates(cluster: Cluster, tiny_image: str, name: str,
                                                          tmp_path: Path) -> None:
    # Mid-create, made certain: an admission policy refuses the controller's launcher pod for this VM (403, as
    # a quota would: retried), so the leader has created the VMI but not its pod when it dies (no graceful
    # Lease release).
    pod_of_vm = ("!(has(object.metadata.labels) && 'kvtool.io/vmi' in object.metadata.labels && "
                 f"object.metadata.labels['kvtool.io/vmi'] == '{name}')")
    with injected(cluster, refusing_policy(f"test-midcreate-{name}", CONTROLLER_USER, "CREATE", "pods", pod_of_vm,
                                           "injected fault: the launcher pod is refused", group="",
                                           reason="Forbidden")) as policy:
        probe = {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": f"probe-{name}", "namespace": "default", "labels": {"kvtool.io/vmi": name}},
                 "spec": {"containers": [{"name": "c", "image": "probe"}]}}
        wait_for(lambda: "injected fault" in cluster.kubectl(
            "create", "--dry-run=server", f"--as={CONTROLLER_USER}", "-f", "-", input=yaml.safe_dump(probe),
            check=False).stderr, timeout=30, what="the admission policy in force")
        apply(tmp_path, vm(name, run_strategy="Always"))
        wait_for(lambda: refusals(cluster, policy) >= 1 and condition(get(cluster, "vmi", name), "Failure").get(
            "reason") == "FailedCreate", timeout=60,
                 what="the VMI created and its launcher pod refused (the VMI says so): the controller mid-create")
        vmi_uid = (get(cluster, "vmi", name) or {})["metadata"]["uid"]
        leader = _leader(cluster)
        cluster.kubectl("-n", "kvtool-system", "delete", "pod", leader, "--grace-period=0", "--force")
        wait_for(lambda: _leader(cluster) not in ("", leader), timeout=90, what="another replica leading")
    wait_running(cluster, name, timeout=180)
    assert (get(cluster, "vmi", name) or {})["metadata"]["uid"] == vmi_uid, "the new leader finished that VMI"
    pods = cluster.kubectl("get", "pods", "-l", f"kvtool.io/vmi={name}", "-o", "name").stdout.split()
    assert len(pods) == 1, pods
    assert len(qemu_for(f"default_{name}")) == 1
    delete_vm(cluster, name)


def test_handler_restart_keeps_vms_running(cluster: Cluster, tiny_image: str, name: str, tmp_path: Path) -> None:
    apply(tmp_path, vm(name, run_strategy="Always"))
    node = wait_running(cluster, name)["status"]["nodeName"]
    qemu = qemu_for(f"default_{name}")
    [old] = _kvtool_pods(cluster, "kvtool-handler", node)
    cluster.kubectl("-n", "kvtool-system", "delete", "pod", old)
    wait_for(lambda: (pods := _kvtool_pods(cluster, "kvtool-handler", node)) and old not in pods
             and (get(cluster, "pod", pods[0], namespace="kvtool-system") or {}).get("status", {}).get("phase")
             == "Running", timeout=90, what=f"the DaemonSet's new handler on {node}")
    # Status flows again through the new handler: pausing works end to end.
    kvtool("pause", name, check=True)
    wait_for(lambda: vm_status(cluster, name) == "Paused", what="Paused after a handler restart",
             describe=describe_vm(cluster, name))
    kvtool("unpause", name, check=True)
    wait_for(lambda: vm_status(cluster, name) == "Running", what="Running")
    assert qemu_for(f"default_{name}") == qemu, "the domain kept running through the handler restart"
    delete_vm(cluster, name)


def test_stopped_kubelet_marks_its_vms_and_leaks_nothing(cluster: Cluster, tiny_image: str, name: str,
                                                         tmp_path: Path) -> None:
    apply(tmp_path, vm(name, run_strategy="Always"))
    node = wait_running(cluster, name)["status"]["nodeName"]
    kvtool("cluster", "stop-component", f"kubelet-{node}", check=True)
    try:
        wait_for(lambda: vm_status(cluster, name) == "Unknown", timeout=90,
                 what="the VM marked Unknown when its node stops reporting", describe=describe_vm(cluster, name))
        assert condition(get(cluster, "vm", name), "Ready")["status"] == "False"
        # Deleted while its node is away: the kubelet finishes the pod when it returns.
        cluster.kubectl("delete", "vm", name, "--wait=false")
    finally:
        kvtool("cluster", "start-component", f"kubelet-{node}", check=True)
    wait_for(lambda: not qemu_for(f"default_{name}") and get(cluster, "vmi", name) is None, timeout=120,
             what="the domain gone after the kubelet came back")
    wait_for(lambda: condition(get(cluster, "node", node, namespace=""), "Ready").get("status") == "True",
             timeout=60, what=f"{node} Ready again")
