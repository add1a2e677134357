"""What kvtool's kopf operators (controller, handler) share: how they log in and their base settings."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

IDLE_WORKER_SECONDS = 0.5


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


class NoChangeTracking(kopf.AnnotationsDiffBaseStorage):
    """No essence to diff: kvtool's operators have event and index handlers only, and keep their own caches.

    kopf builds every object's essence on every event for its change handlers (a deep copy of the whole
    body, status included, then trimmed): about a tenth of the controller's CPU at 1000 VMs, for a diff no
    handler of ours reads. Nothing is stored either (`store` is only called for change handlers)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return kopf.BodyEssence()


def configure(settings: kopf.OperatorSettings, component: str) -> None:
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = component
    settings.queueing._batch_window = 0.01
    # kopf keeps a worker per object until it has had no event for this long, and the idle worker still holds
    # the last event's whole body (managedFields included): at 1000 VMs, thousands of bodies held for 5 s (its
    # default) after each burst. A new event after this just starts a new worker.
    settings.queueing.idle_timeout = IDLE_WORKER_SECONDS
    settings.watching.server_timeout = 300
    settings.persistence.diffbase_storage = NoChangeTracking()
    settings.scanning.disabled = True  # no cluster-wide CRD/namespace scans: RBAC grants only what is used
