"""Objects every embedded cluster starts with, created once the apiserver is ready.

Idempotent: a restarted cluster re-runs it and finds everything in place.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

from kvtool.deploy import install, manifests
from kvtool.kube import clients, crds
from kvtool.kube.resources import Resources

log = logging.getLogger(__name__)

STORAGE_CLASS = "standard"


def run(kubeconfig: Path, bare: bool = False) -> None:
    """bare: a plain Kubernetes (for trying `kvtool install` on it); else kvtool's CRDs and RBAC too."""
    api = clients.api_client(kubeconfig)
    ensure_storage_class(api)
    if bare:
        return
    res = Resources(api)
    crds.install(res)
    # The same accounts, roles and admission policy `kvtool install` ships: kvtool's own components run
    # with these tokens here, so a missing permission fails here first.
    install.apply_all(res, manifests.rbac_and_policy())


TOKEN_SECONDS = 365 * 86400


def service_account_token(kubeconfig: Path, account: str, node: str | None = None) -> str:
    """A token of kvtool-system/<account>; bound to a Node so the API server names the node in it."""
    core = client.CoreV1Api(clients.api_client(kubeconfig))
    spec = client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
    if node is not None:
        obj = core.read_node(node)
        spec.bound_object_ref = client.V1BoundObjectReference(api_version="v1", kind="Node", name=node,
                                                              uid=obj.metadata.uid)
    result = core.create_namespaced_service_account_token(account, manifests.NAMESPACE,
                                                          client.AuthenticationV1TokenRequest(spec=spec))
    return result.status.token


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


def wait_for_nodes_ready(kubeconfig: Path, nodes: list[str], timeout: float) -> None:
    """Until every node agent's Node reports Ready (the scheduler only uses Ready nodes)."""
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
            ready = any(c.type == "Ready" and c.status == "True" for c in obj.status.conditions or [])
            taints = [t.key for t in obj.spec.taints or [] if t.key.startswith("node.kubernetes.io/not-ready")]
            if ready and not taints:
                pending.discard(node)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"node(s) {', '.join(sorted(pending))} did not become Ready within {timeout:.0f}s; "
                               "see logs/node-agent-*.log")
        time.sleep(0.2)
