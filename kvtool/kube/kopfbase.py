"""What kvtool's kopf operators (controller, handler) share: how they log in and their base settings."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf


def login(**kwargs: Any) -> Any:
    """The kubeconfig kvtool resolved (exported as $KUBECONFIG by kvtool.cli.common.daemon_connection),
    else the pod's service account.

    In a pod, through the official client's in-cluster config: like client-go it dials
    $KUBERNETES_SERVICE_HOST (the Service IP), where kopf's own service-account login dials
    `kubernetes.default.svc`, a name only a cluster DNS add-on resolves.
    """
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kopf.login_via_client(**kwargs)
    return kopf.login_with_service_account(**kwargs)


def configure(settings: kopf.OperatorSettings, component: str) -> None:
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = component
    settings.queueing._batch_window = 0.01
    settings.watching.server_timeout = 300
    settings.scanning.disabled = True  # no cluster-wide CRD/namespace scans: RBAC grants only what is used
