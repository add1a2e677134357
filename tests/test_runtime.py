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
from tests.runtime_helpers import (
    condition,
    describe_vm,
    get,
    processes_mentioning,
    qemu_for,
    vm_status,
    wait_for,
    wait_running,
)
from tests.vmfactory import vm


@pytest.fixture(scope="session")
def tiny_image(cluster: Cluster) -> str:
    kvtool("image", "build", "tiny-linux", check=True, timeout=600)
    return "tiny-linux"


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
    cid = running[0]["status"]["containerStatuses"][0]["containerID"]
    return int(cid.rsplit("//", 1)[1])


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
    pod_uid = next(iter(vmi["status"]["activePods"]))
    pod_dir_markers = processes_mentioning(pod_uid)
    assert pod_dir_markers, "the launcher and its libvirtd run from the pod's directories"
    delete_vm(cluster, name)
    wait_for(lambda: not processes_mentioning(pod_uid), timeout=60, what="no process of the pod left")
    wait_for(lambda: cluster.kubectl("get", "pods", "-l", f"kvtool.io/vmi={name}", "-o", "name").stdout.strip() == "",
             timeout=60, what="the launcher pod object to be deleted by its node agent")
    leftovers = [p for p in cluster.home.glob(f"nodes/*/pods/{pod_uid}")]
    assert not leftovers, f"pod dirs left behind: {leftovers}"
    sockets = list(Path("/run").glob(f"kvt-*/*/sockets/{pod_uid}*"))
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
    wait_for(lambda: vm_status(cluster, name) == "CrashLoopBackOff", timeout=120, what="CrashLoopBackOff",
             describe=describe_vm(cluster, name))
    delete_vm(cluster, name)


def test_a_vm_bigger_than_any_node_is_unschedulable(cluster: Cluster, name: str, tmp_path: Path) -> None:
    apply(tmp_path, vm(name, run_strategy="Always", cores=64))
    wait_for(lambda: vm_status(cluster, name) == "ErrorUnschedulable", timeout=60, what="ErrorUnschedulable",
             describe=describe_vm(cluster, name))
    failure = condition(get(cluster, "vm", name), "Failure")
    assert "Insufficient cpu" in failure["message"], failure
    delete_vm(cluster, name)


def test_controller_restart_mid_create_makes_no_duplicates(cluster: Cluster, tiny_image: str, name: str,
                                                          tmp_path: Path) -> None:
    apply(tmp_path, vm(name, run_strategy="Always"))
    kvtool("cluster", "restart-component", "controller", check=True)
    wait_running(cluster, name)
    kvtool("cluster", "restart-component", "controller", check=True)
    pods = cluster.kubectl("get", "pods", "-l", f"kvtool.io/vmi={name}", "-o", "name").stdout.split()
    assert len(pods) == 1, pods
    assert len(qemu_for(f"default_{name}")) == 1
    delete_vm(cluster, name)


def test_handler_restart_keeps_vms_running(cluster: Cluster, tiny_image: str, name: str, tmp_path: Path) -> None:
    apply(tmp_path, vm(name, run_strategy="Always"))
    node = wait_running(cluster, name)["status"]["nodeName"]
    qemu = qemu_for(f"default_{name}")
    kvtool("cluster", "restart-component", f"handler-{node}", check=True)
    # Status flows again through the new handler: pausing works end to end.
    kvtool("pause", name, check=True)
    wait_for(lambda: vm_status(cluster, name) == "Paused", what="Paused after a handler restart",
             describe=describe_vm(cluster, name))
    kvtool("unpause", name, check=True)
    wait_for(lambda: vm_status(cluster, name) == "Running", what="Running")
    assert qemu_for(f"default_{name}") == qemu, "the domain kept running through the handler restart"
    delete_vm(cluster, name)


def test_stopped_node_agent_marks_its_vms_and_leaks_nothing(cluster: Cluster, tiny_image: str, name: str,
                                                           tmp_path: Path) -> None:
    apply(tmp_path, vm(name, run_strategy="Always"))
    node = wait_running(cluster, name)["status"]["nodeName"]
    kvtool("cluster", "stop-component", f"node-agent-{node}", check=True)
    try:
        wait_for(lambda: vm_status(cluster, name) == "Unknown", timeout=90,
                 what="the VM marked Unknown when its node stops reporting", describe=describe_vm(cluster, name))
        assert condition(get(cluster, "vm", name), "Ready")["status"] == "False"
        # Deleted while its node is away: the node agent cleans up when it returns.
        cluster.kubectl("delete", "vm", name, "--wait=false")
    finally:
        kvtool("cluster", "start-component", f"node-agent-{node}", check=True)
    wait_for(lambda: not qemu_for(f"default_{name}") and get(cluster, "vmi", name) is None, timeout=120,
             what="the domain gone after the node agent came back")
    wait_for(lambda: condition(get(cluster, "node", node, namespace=""), "Ready").get("status") == "True",
             timeout=60, what=f"{node} Ready again")
