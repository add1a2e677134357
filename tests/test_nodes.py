"""Real nodes: every embedded node is a kubelet on containerd, and the cluster behaves like one.

What a user of kubectl expects of any cluster is checked against the embedded one: node facts in
`kubectl get nodes -o wide`, `kubectl logs` and `exec` into a launcher pod, the handler DaemonSet on
every node, pod-to-pod traffic across nodes, `kubectl drain`, a dead kubelet turning its Node
NotReady, and the launcher pod's memory limit enforced on QEMU by its container's memory cgroup.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kvtool.controller import template
from tests.conftest import Cluster, kvtool
from tests.processes import qemu_for
from tests.runtime_helpers import condition, get, wait_running
from tests.vmfactory import vm
from tests.waiting import wait_for

NODES = ("kvtool-node-1", "kvtool-node-2")


@pytest.fixture(scope="module")
def image(cluster: Cluster) -> str:
    """The kvtool image every node imported (the handler DaemonSet runs it)."""
    return cluster.kubectl("-n", "kvtool-system", "get", "ds", "kvtool-handler",
                           "-o", "jsonpath={.spec.template.spec.containers[0].image}").stdout


def _apply(tmp: Path, *docs: dict[str, Any]) -> None:
    path = tmp / f"{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    kvtool("apply", "-f", str(path), "--stack", "nodes", "--auto-approve", check=True)


def _launcher(cluster: Cluster, name: str) -> dict[str, Any]:
    pods = json.loads(cluster.kubectl("get", "pods", "-l", f"kvtool.io/vmi={name}", "-o", "json").stdout)["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    assert len(running) == 1, [p["metadata"]["name"] for p in pods]
    return running[0]


@pytest.fixture(scope="module")
def pinned(cluster: Cluster, tiny_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running VM on node 1."""
    name = f"nodes-{uuid.uuid4().hex[:5]}"
    doc = vm(name, run_strategy="Always")
    doc["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": NODES[0]}
    _apply(tmp_path_factory.mktemp("pinned"), doc)
    wait_running(cluster, name)
    yield name
    cluster.kubectl("delete", "vm", name, "--wait=false", check=False)


def test_nodes_are_real_kubelets_on_containerd_with_their_own_ips(cluster: Cluster) -> None:
    wide = cluster.kubectl("get", "nodes", "-o", "wide").stdout
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == list(NODES), wide
    ips = set()
    for node in nodes:
        info = node["status"]["nodeInfo"]
        assert info["kubeletVersion"].startswith("v1.34."), wide
        assert info["containerRuntimeVersion"].startswith("containerd://2."), wide
        ips.update(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
        assert condition(node, "Ready").get("status") == "True"
    assert len(ips) == len(NODES) and "127.0.0.1" not in ips, wide
    for line in wide.splitlines()[1:]:
        assert "containerd://2." in line and " v1.34." in line, wide


def test_the_handler_daemonset_has_one_ready_pod_per_node(cluster: Cluster) -> None:
    ds = get(cluster, "ds", "kvtool-handler", namespace="kvtool-system") or {}
    assert ds["status"]["desiredNumberScheduled"] == len(NODES) == ds["status"]["numberReady"], ds.get("status")
    pods = json.loads(cluster.kubectl("-n", "kvtool-system", "get", "pods", "-l",
                                      "app.kubernetes.io/name=kvtool-handler", "-o", "json").stdout)["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == list(NODES)
    controller = get(cluster, "deploy", "kvtool-controller", namespace="kvtool-system") or {}
    assert controller["status"].get("availableReplicas", 0) >= 1


def test_kubectl_logs_and_exec_reach_the_launcher(cluster: Cluster, pinned: str) -> None:
    pod = _launcher(cluster, pinned)["metadata"]["name"]
    logs = cluster.kubectl("logs", pod, "-c", "compute").stdout
    assert "component=launcher" in logs and f"vmi=default/{pinned}" in logs, logs[-2000:]
    out = cluster.kubectl("exec", pod, "-c", "compute", "--", "kvtool", "--version").stdout
    assert out.startswith("kvtool "), out
    env = cluster.kubectl("exec", pod, "-c", "compute", "--", "printenv", "KVTOOL_NODE_NAME").stdout.strip()
    assert env == NODES[0]


def test_qemu_runs_inside_the_launcher_containers_memory_limit(cluster: Cluster, pinned: str) -> None:
    pod = _launcher(cluster, pinned)
    limit = int(pod["spec"]["containers"][0]["resources"]["limits"]["memory"])
    vmi = get(cluster, "vmi", pinned) or {}
    assert limit == template.guest_memory(vmi["spec"]) + template.memory_overhead(vmi["spec"])
    pids = wait_for(lambda: qemu_for(f"default_{pinned}"), 30, what="the VM's QEMU process")
    memory_cgroup = next(line.split(":", 2)[2] for line in Path(f"/proc/{pids[0]}/cgroup").read_text().splitlines()
                         if line.split(":", 2)[1] == "memory")
    assert f"/pod{pod['metadata']['uid']}/" in memory_cgroup, memory_cgroup  # the pod's container, not the node's
    on_disk = int((Path("/sys/fs/cgroup/memory") / memory_cgroup.lstrip("/") / "memory.limit_in_bytes").read_text())
    assert on_disk == limit, (memory_cgroup, on_disk, limit)


def test_a_pod_on_node_1_reaches_a_pod_on_node_2(cluster: Cluster, image: str) -> None:
    name = f"echo-{uuid.uuid4().hex[:5]}"
    server = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"test": "nodes"}},
              "spec": {"nodeSelector": {"kubernetes.io/hostname": NODES[1]}, "restartPolicy": "Never",
                       "containers": [{"name": "web", "image": image,
                                       "command": ["python3", "-m", "http.server", "8080", "-d", "/etc"]}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(server))
    try:
        ip = wait_for(lambda: ((get(cluster, "pod", name) or {}).get("status") or {}).get("podIP")
                      if ((get(cluster, "pod", name) or {}).get("status") or {}).get("phase") == "Running" else None,
                      60, what=f"pod {name} Running with an IP")
        client = f"curl-{uuid.uuid4().hex[:5]}"
        fetch = ("import urllib.request,sys\n"
                 "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().splitlines()[0])\n")
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": client, "labels": {"test": "nodes"}},
                "spec": {"nodeSelector": {"kubernetes.io/hostname": NODES[0]}, "restartPolicy": "Never",
                         "containers": [{"name": "fetch", "image": image,
                                         "command": ["python3", "-c", fetch, f"http://{ip}:8080/hostname"]}]}}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
        phase = wait_for(lambda: ((get(cluster, "pod", client) or {}).get("status") or {}).get("phase")
                         in ("Succeeded", "Failed") and get(cluster, "pod", client)["status"]["phase"], 90,
                         what=f"pod {client} on {NODES[0]} to finish")
        logs = cluster.kubectl("logs", client).stdout
        # The server pod's /etc/hostname (the kubelet writes the pod's name there), fetched from node 1.
        assert phase == "Succeeded" and logs.strip() == name, logs
    finally:
        cluster.kubectl("delete", "pod", "-l", "test=nodes", "--wait=false", check=False)


def test_pods_find_services_by_name_through_the_cluster_dns(cluster: Cluster, image: str) -> None:
    """As on any cluster: a pod resolves a Service's name (the kubelet gives it the cluster DNS), and no
    kubelet complains that there is none (MissingClusterDNS, once an event per pod sync)."""
    name = f"dns-{uuid.uuid4().hex[:5]}"
    lookup = ("import socket\n"
              "for n in ('kubernetes.default.svc.cluster.local', 'kubernetes.default',\n"
              "          'kvtool-controller.kvtool-system'):\n"
              "    print(n, socket.gethostbyname(n))\n")
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"test": "nodes-dns"}},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": NODES[1]}, "restartPolicy": "Never",
                     "containers": [{"name": "lookup", "image": image, "command": ["python3", "-c", lookup]}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    try:
        phase = wait_for(lambda: ((get(cluster, "pod", name) or {}).get("status") or {}).get("phase")
                         in ("Succeeded", "Failed") and get(cluster, "pod", name)["status"]["phase"], 90,
                         what=f"pod {name} to finish")
        logs = cluster.kubectl("logs", name).stdout
        controller_ip = cluster.kubectl("-n", "kvtool-system", "get", "svc", "kvtool-controller",
                                        "-o", "jsonpath={.spec.clusterIP}").stdout
        assert phase == "Succeeded", logs
        assert logs.splitlines() == ["kubernetes.default.svc.cluster.local 10.96.0.1", "kubernetes.default 10.96.0.1",
                                     f"kvtool-controller.kvtool-system {controller_ip}"], logs
        missing = cluster.kubectl("get", "events", "-A", "--field-selector", "reason=MissingClusterDNS",
                                  "-o", "name").stdout
        assert missing.strip() == "", missing
    finally:
        cluster.kubectl("delete", "pod", name, "--wait=false", check=False)


def test_drain_evicts_launcher_pods_and_always_vms_come_back_elsewhere(cluster: Cluster, tiny_image: str,
                                                                       tmp_path: Path) -> None:
    name = f"drain-{uuid.uuid4().hex[:5]}"
    doc = vm(name, run_strategy="Always")
    doc["spec"]["template"]["spec"]["nodeSelector"] = {"kvtool.io/test-drain": "yes"}
    for node in NODES:
        cluster.kubectl("label", "node", node, "kvtool.io/test-drain=yes", "--overwrite")
    _apply(tmp_path, doc)
    try:
        vmi = wait_running(cluster, name)
        source = vmi["status"]["nodeName"]
        old_pod = _launcher(cluster, name)["metadata"]["uid"]
        cluster.kubectl("drain", source, "--ignore-daemonsets", "--delete-emptydir-data", "--force",
                        "--pod-selector=kvtool.io=virt-launcher", "--timeout=120s", timeout=180)
        vmi = wait_for(lambda: (v := get(cluster, "vmi", name)) and (v.get("status") or {}).get("phase") == "Running"
                       and v["status"].get("nodeName") != source and v, 180,
                       what=f"{name} running again on a node other than {source}")
        assert vmi["status"]["nodeName"] in NODES and _launcher(cluster, name)["metadata"]["uid"] != old_pod
    finally:
        for node in NODES:
            cluster.kubectl("uncordon", node, check=False)
            cluster.kubectl("label", "node", node, "kvtool.io/test-drain-", check=False)
        cluster.kubectl("delete", "vm", name, "--wait=false", check=False)


def test_a_stopped_kubelet_makes_its_node_not_ready(cluster: Cluster) -> None:
    node = NODES[1]
    kvtool("cluster", "stop-component", f"kubelet-{node}", check=True)
    try:
        wait_for(lambda: condition(get(cluster, "node", node, namespace=""), "Ready").get("status") == "Unknown",
                 90, what=f"{node} NotReady (Unknown) after its kubelet stopped")
    finally:
        kvtool("cluster", "start-component", f"kubelet-{node}", check=True)
    wait_for(lambda: condition(get(cluster, "node", node, namespace=""), "Ready").get("status") == "True",
             90, what=f"{node} Ready again")
