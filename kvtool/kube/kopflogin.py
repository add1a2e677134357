"""How kvtool's kopf operators log in: the kubeconfig kvtool resolved (exported as $KUBECONFIG by
kvtool.cli.common.daemon_connection), else the pod's service account."""

from __future__ import annotations

import os
from typing import Any

import kopf


def login(**kwargs: Any) -> Any:
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs)
