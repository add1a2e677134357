"""Objects every embedded cluster starts with, created once the apiserver is ready.

Idempotent: a restarted cluster re-runs it and finds everything in place.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kvtool.deploy import install, manifests
from kvtool.kube import clients, crds
from kvtool.kube.resources import Resources
from kvtool.local import pki

log = logging.getLogger(__name__)

STORAGE_CLASS = "standard"
# Where on this machine an embedded node's pod IPs are routed from (read by kvtool port-forward).
NETNS_ANNOTATION = "kvtool.io/pod-network-namespace"


def run(kubeconfig: Path, bare: bool = False) -> None:
    """bare: a plain Kubernetes (for trying `kvtool install` on it); else kvtool's CRDs and RBAC too."""
    api = clients.api_client(kubeconfig)
    ensure_storage_class(api)
    ensure_kubelet_api_access(api)
    if bare:
        return
    res = Resources(api)
    crds.install(res)
    # The same accounts, roles and admission policy `kvtool install` ships: kvtool's own components run
    # with these tokens here, so a missing permission fails here first. Then what the cluster DNS reads.
    install.apply_all(res, [*manifests.rbac_and_policy(), *dns_access()])


def ensure_storage_class(api: client.ApiClient) -> None:
    """A default StorageClass served by the controller-manager's hostPath provisioner."""
    storage = client.StorageV1Api(api)
    body = client.V1StorageClass(
        metadata=client.V1ObjectMeta(
            name=STORAGE_CLASS,
            annotations={"storageclass.kubernetes.io/is-default-class": "true"},
            labels={"app.kubernetes.io/managed-by": "kvtool"},
        ),
        provisioner="kubernetes.io/host-path",
        reclaim_policy="Delete",
        volume_binding_mode="Immediate",
    )
    try:
        storage.create_storage_class(body)
        log.info("event=created kind=StorageClass name=%s", STORAGE_CLASS)
    except ApiException as exc:
        if exc.status != 409:
            raise


def wait_for_service_account(kubeconfig: Path, namespace: str, name: str, timeout: float) -> None:
    core = client.CoreV1Api(clients.api_client(kubeconfig))
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account(name, namespace)
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def ensure_kubelet_api_access(api: client.ApiClient) -> None:
    """Let the apiserver's kubelet client use the kubelets' API (logs, exec, port-forward), as kubeadm does."""
    rbac = client.RbacAuthorizationV1Api(api)
    body = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "kvtool:apiserver-kubelet-api-admin",
                         "labels": {"app.kubernetes.io/managed-by": "kvtool"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:kubelet-api-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": pki.APISERVER_KUBELET_CLIENT.common_name}]}
    try:
        rbac.create_cluster_role_binding(client.V1ClusterRoleBinding.model_validate(body))
    except ApiException as exc:
        if exc.status != 409:
            raise


DNS_ROLE = "kvtool:coredns"


def dns_access() -> list[dict[str, Any]]:
    """What the cluster DNS reads (kubeadm's system:coredns role), for its client certificate's user."""
    labels = {"app.kubernetes.io/managed-by": "kvtool"}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": DNS_ROLE, "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                       "verbs": ["list", "watch"]},
                      {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                       "verbs": ["list", "watch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": DNS_ROLE, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": DNS_ROLE},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                             "name": pki.COREDNS.common_name}]}
    return [role, binding]


def install_kvtool(kubeconfig: Path, image: str, timeout: float, extra: list[dict[str, Any]] | None = None) -> None:
    """kvtool's controller Deployment and handler DaemonSet from `kvtool install`'s manifests (and `extra`,
    applied first: the embedded cluster's failover setting); until ready."""
    api = clients.api_client(kubeconfig)
    install.apply_all(Resources(api), [*(extra or []), *manifests.workloads(image)])
    apps = client.AppsV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        dep = apps.read_namespaced_deployment(manifests.CONTROLLER, manifests.NAMESPACE)
        ds = apps.read_namespaced_daemon_set(manifests.HANDLER, manifests.NAMESPACE)
        # No status yet (a just-created object) reads as nothing available.
        available = (dep.status.available_replicas if dep.status else None) or 0
        want = (ds.status.desired_number_scheduled if ds.status else None) or 0
        ready = (ds.status.number_ready if ds.status else None) or 0
        if available >= 1 and want > 0 and ready == want:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"kvtool's pods did not become ready within {timeout:.0f}s (controller available: "
                f"{available}, handlers ready: {ready}/{want}); "
                f"see `kubectl -n {manifests.NAMESPACE} get pods` and logs/kubelet-*.log")
        time.sleep(0.5)


def wait_for_nodes_ready(kubeconfig: Path, nodes: list[str], timeout: float,
                         node_info: dict[str, tuple[str, str]] | None = None) -> None:
    """Until every kubelet's Node reports Ready (the scheduler only uses Ready nodes).

    node_info: node -> (pod CIDR, network namespace) of the embedded network, recorded on the Node
    as it registers (the controller-manager does not allocate pod CIDRs: the node's CNI config has one).
    """
    core = client.CoreV1Api(clients.api_client(kubeconfig))
    deadline = time.monotonic() + timeout
    pending = set(nodes)
    while pending:
        for node in sorted(pending):
            try:
                obj = core.read_node(node)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                continue
            info = (node_info or {}).get(node)
            spec = obj.spec or client.V1NodeSpec()
            if info and not spec.pod_cidr:
                core.patch_node(node, {"metadata": {"annotations": {NETNS_ANNOTATION: info[1]}},
                                       "spec": {"podCIDR": info[0], "podCIDRs": [info[0]]}})
            conditions = (obj.status.conditions if obj.status else None) or []
            ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
            taints = [t.key for t in spec.taints or [] if t.key.startswith("node.kubernetes.io/not-ready")]
            if ready and not taints:
                pending.discard(node)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"node(s) {', '.join(sorted(pending))} did not become Ready within {timeout:.0f}s; "
                               "see logs/kubelet-*.log")
        time.sleep(0.2)
