"""The embedded control plane is a real Kubernetes: each test proves one component works."""

from __future__ import annotations

import json
import time
import uuid

from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.conftest import Cluster, kvtool
from tests.waiting import wait_for


def test_api_answers_readyz_and_version(cluster: Cluster) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(cluster.kubectl("get", "--raw", "/version").stdout)
    assert version["major"] == "1" and version["minor"] == "34", version
    assert version["gitVersion"].startswith("v1.34.")


def test_kubectl_get_namespaces(cluster: Cluster) -> None:
    out = cluster.kubectl("get", "ns", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system"} <= set(out)


def test_scheduler_binds_a_pod_to_a_node(cluster: Cluster) -> None:
    core = client.CoreV1Api(cluster.api())
    node_name = f"sched-test-{uuid.uuid4().hex[:6]}"
    node = client.V1Node(
        metadata=client.V1ObjectMeta(name=node_name, labels={"kvtool-test": node_name}),
        status=client.V1NodeStatus(capacity={"cpu": "4", "memory": "8Gi", "pods": "10"},
                                   allocatable={"cpu": "4", "memory": "8Gi", "pods": "10"}),
    )
    core.create_node(node)
    try:
        # A node needs Ready=True in its status before the scheduler considers it.
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        core.patch_node_status(node_name, {"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "Test", "lastHeartbeatTime": now,
             "lastTransitionTime": now}]}})
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name=f"pod-{node_name}"),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="c", image="example.invalid/none:1")],
                node_selector={"kvtool-test": node_name},
                tolerations=[client.V1Toleration(operator="Exists")],
            ),
        )
        core.create_namespaced_pod("default", pod)
        bound = wait_for(lambda: core.read_namespaced_pod(f"pod-{node_name}", "default").spec.node_name,
                         what="the scheduler to bind the pod")
        assert bound == node_name
        # The scheduler records its event after the binding, asynchronously.
        wait_for(lambda: any(e.reason == "Scheduled" for e in core.list_namespaced_event(
            "default", field_selector=f"involvedObject.name=pod-{node_name}").items), 30,
            what="the scheduler's Scheduled event")
    finally:
        core.delete_namespaced_pod(f"pod-{node_name}", "default", grace_period_seconds=0)
        core.delete_node(node_name)


def test_garbage_collector_deletes_orphans(cluster: Cluster) -> None:
    core = client.CoreV1Api(cluster.api())
    owner = core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="owner-")))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name=owner.metadata.name,
                                  uid=owner.metadata.uid)
    dependent = core.create_namespaced_config_map(
        "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="dependent-",
                                                                   owner_references=[ref])))
    core.delete_namespaced_config_map(owner.metadata.name, "default")

    def gone() -> bool:
        try:
            core.read_namespaced_config_map(dependent.metadata.name, "default")
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, timeout=60, what="the garbage collector to delete the dependent")


def test_pvc_gets_a_hostpath_volume(cluster: Cluster) -> None:
    core = client.CoreV1Api(cluster.api())
    name = f"pvc-{uuid.uuid4().hex[:6]}"
    pvc = client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=client.V1VolumeResourceRequirements(requests={"storage": "16Mi"})),
    )
    core.create_namespaced_persistent_volume_claim("default", pvc)
    try:
        bound = wait_for(lambda: core.read_namespaced_persistent_volume_claim(name, "default").spec.volume_name,
                         what="the provisioner to bind the claim")
        pv = core.read_persistent_volume(bound)
        assert pv.spec.host_path is not None and pv.spec.host_path.path.startswith("/tmp/")
        assert pv.spec.storage_class_name == "standard"
        assert core.read_namespaced_persistent_volume_claim(name, "default").status.phase == "Bound"
    finally:
        core.delete_namespaced_persistent_volume_claim(name, "default")


def test_cluster_up_twice_is_harmless(cluster: Cluster) -> None:
    before = json.loads((cluster.home / "cluster.json").read_text())
    result = kvtool("cluster", "up", check=True)
    assert "already running" in result.stderr
    after = json.loads((cluster.home / "cluster.json").read_text())
    assert {k: v["pid"] for k, v in before["components"].items()} == \
           {k: v["pid"] for k, v in after["components"].items()}
    assert after["server"] == before["server"]


def test_status_shows_components_and_kubeconfig(cluster: Cluster) -> None:
    result = kvtool("cluster", "status", check=True)
    for name in ("etcd", "apiserver", "scheduler", "controller-manager"):
        assert name in result.stdout
    assert "ready" in result.stdout
    assert f"{cluster.home / 'kubeconfig'} (from the embedded cluster" in result.stdout
