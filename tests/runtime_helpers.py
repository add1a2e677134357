"""Helpers for runtime tests: wait on VM/VMI state through the real API, find processes."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import yaml

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


DENIALS = re.compile(r'^apiserver_validating_admission_policy_check_total\{(?P<labels>[^}]*)\} (?P<n>[0-9.e+]+)$',
                     re.MULTILINE)


def refusals(cluster: Cluster, policy: str) -> float:
    """How many requests the admission policy has refused so far (the apiserver's own count)."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    return sum(float(m["n"]) for m in DENIALS.finditer(text)
               if f'policy="{policy}"' in m["labels"] and 'enforcement_action="deny"' in m["labels"])


def refusing_policy(policy: str, user: str, operation: str, resource: str, allowed: str, message: str,
                    group: str = "kvtool.io", reason: str | None = None) -> list[dict[str, Any]]:
    """An admission policy (and its binding) that refuses `user`'s `operation` on `resource` unless the CEL
    expression `allowed` holds: injected API errors that only one component sees. The refusal is 422 Invalid,
    or 403 with reason="Forbidden" (what a quota or a webhook answers)."""
    validation = {"expression": allowed, "message": message, **({"reason": reason} if reason else {})}
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": policy},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{"apiGroups": [group], "apiVersions": ["*"],
                                                          "operations": [operation], "resources": [resource]}]},
                  "matchConditions": [{"name": "component", "expression": f"request.userInfo.username == '{user}'"}],
                  "validations": [validation]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": policy}, "spec": {"policyName": policy, "validationActions": ["Deny"]}},
    ]


@contextlib.contextmanager
def injected(cluster: Cluster, policy: list[dict[str, Any]]) -> Iterator[str]:
    """The refusing policy (from refusing_policy) in force inside the block, removed on the way out; its name."""
    name = policy[0]["metadata"]["name"]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(policy))
    try:
        yield name
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name, check=False)


def wait_converged(cluster: Cluster, name: str, policy: str, timeout: float = 120) -> None:
    """The VM Running once the faults stopped, with no further event about it; prints the figure."""
    faults_stopped = time.monotonic()
    wait_running(cluster, name, timeout=timeout)
    print(f"refusals injected: {refusals(cluster, policy):.0f}; faults stopped -> VM Running in "
          f"{time.monotonic() - faults_stopped:.1f} s")
