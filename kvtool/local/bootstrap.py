"""Objects every embedded cluster starts with, created once the apiserver is ready.

Idempotent: a restarted cluster re-runs it and finds everything in place.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kubernetes import client
from kubernetes.client.rest import ApiException

from kvtool.kube import clients, crds
from kvtool.kube.resources import Resources

log = logging.getLogger(__name__)

STORAGE_CLASS = "standard"


def run(kubeconfig: Path) -> None:
    api = clients.api_client(kubeconfig)
    ensure_storage_class(api)
    crds.install(Resources(api))


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
