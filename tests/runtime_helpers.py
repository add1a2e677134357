"""Helpers for runtime tests: wait on VM/VMI state through the real API, find processes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.conftest import Cluster
from tests.waiting import wait_for


def get(cluster: Cluster, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
    scope = ["-n", namespace] if namespace else []
    result = cluster.kubectl("get", kind, name, *scope, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def vm_status(cluster: Cluster, name: str) -> str:
    vm = get(cluster, "vm", name) or {}
    return (vm.get("status") or {}).get("printableStatus", "")


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c.get("type") == ctype), {})


def describe_vm(cluster: Cluster, name: str) -> Callable[[], str]:
    def text() -> str:
        vm = get(cluster, "vm", name)
        vmi = get(cluster, "vmi", name)
        pods = cluster.kubectl("get", "pods", "-l", f"kvtool.io/vmi={name}", "-o", "wide", check=False).stdout
        return (f"VM status: {json.dumps((vm or {}).get('status'), indent=1)}\n"
                f"VMI status: {json.dumps((vmi or {}).get('status'), indent=1)}\npods:\n{pods}")
    return text


def wait_running(cluster: Cluster, name: str, timeout: float = 120) -> dict[str, Any]:
    wait_for(lambda: vm_status(cluster, name) == "Running" and (get(cluster, "vm", name) or {}).get(
        "status", {}).get("ready"), timeout=timeout, what=f"VM {name} Running", describe=describe_vm(cluster, name))
    vmi = get(cluster, "vmi", name)
    assert vmi is not None
    return vmi
