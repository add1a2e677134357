"""Install kvtool's CRDs (server-side apply) and wait until the API serves them."""

from __future__ import annotations

import time
from typing import Any

from kvtool.api import crd
from kvtool.api.types import Kind
from kvtool.errors import KvtoolError
from kvtool.kube.resources import Resources

CRD_KIND = Kind("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions",
                namespaced=False)


def install(res: Resources, timeout: float = 60, docs: list[dict[str, Any]] | None = None) -> list[str]:
    """kvtool's CRDs, or the given ones (KubeVirt's, for its API as a target), applied and established."""
    names = []
    for doc in crd.all_crds() if docs is None else docs:
        res.apply(CRD_KIND, doc, force=True)
        names.append(doc["metadata"]["name"])
    for name in names:
        wait_established(res, name, timeout)
    return names


def wait_established(res: Resources, name: str, timeout: float = 60) -> None:
    """Until the API serves the CRD's resource (its Established condition)."""
    deadline = time.monotonic() + timeout
    while True:
        obj = res.get(CRD_KIND, None, name) or {}
        conds = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or []}
        if conds.get("Established") == "True":
            return
        if time.monotonic() > deadline:
            raise KvtoolError(f"CRD {name} was not established within {timeout:.0f}s: {conds}")
        time.sleep(0.1)
