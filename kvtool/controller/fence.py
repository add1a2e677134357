"""Fence agents: make sure a lost node runs nothing any more, out of band, before its VMs move.

`job`, for real clusters: the admin's fence hook as a Kubernetes Job (like medik8s' Fence Agents
Remediation runs fence_ipmilan & co.): its spec comes from the failover ConfigMap, kvtool adds the
node's name ($NODE_NAME), keeps it off the lost node, and counts the node fenced when the Job
completes. A failed Job is a failed fencing, retried with backoff.

`embedded` switches the node off through the embedded cluster's power switch (an HTTPS endpoint
of its supervisor, kvtool.local.powerapi), like fence_ipmilan talks to a BMC; its address, bearer
token and CA come from the Secret kvtool-system/kvtool-fence-embedded that `kvtool cluster up`
writes. The token is never logged.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import ssl
import urllib.error
import urllib.request
from typing import Any

from kvtool.controller import failover

TIMEOUT = 30.0


class FenceError(Exception):
    """The node could not be fenced (yet): nothing may start elsewhere; try again later."""


def _field(secret: dict[str, Any], key: str) -> str:
    value = (secret.get("data") or {}).get(key)
    if not value:
        raise FenceError(f"Secret {failover.EMBEDDED_SECRET} has no {key!r}")
    return base64.b64decode(value).decode()


def embedded(node: str, secret: dict[str, Any] | None) -> str:
    """Power `node` off through the embedded cluster's switch; what it reported."""
    if secret is None:
        raise FenceError(f"Secret kvtool-system/{failover.EMBEDDED_SECRET} is missing: the embedded power switch "
                         "is only there in `kvtool cluster up` clusters")
    endpoint, token, ca = _field(secret, "endpoint"), _field(secret, "token"), _field(secret, "ca.crt")
    if not endpoint.startswith("https://"):
        raise FenceError(f"Secret {failover.EMBEDDED_SECRET}: endpoint must be an https:// URL, got {endpoint!r}")
    context = ssl.create_default_context(cadata=ca)
    request = urllib.request.Request(f"{endpoint.rstrip('/')}/v1/nodes/{node}/power-off", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise FenceError(f"power switch {endpoint} refused: HTTP {exc.code} {detail}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FenceError(f"power switch {endpoint} unreachable: {exc}") from exc
    if reply.get("power") != "off":
        raise FenceError(f"power switch {endpoint} did not confirm power off: {reply}")
    return f"powered off by the embedded power switch ({reply.get('killed', 0)} processes stopped)"


JOB_DEADLINE = 300  # seconds a fence Job may run unless its spec says otherwise
JOB_LABEL = "kvtool.io/fence-node"


def job_name(node: str) -> str:
    """One fence Job per node at a time; names stay DNS labels whatever the node is called."""
    slug = re.sub(r"[^a-z0-9-]", "-", node.lower())[:40].strip("-")
    return f"kvtool-fence-{slug}"


def job_manifest(node: str, spec: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The admin's Job spec, for this node: $NODE_NAME in every container, never scheduled on the node itself."""
    spec = copy.deepcopy(spec)
    spec.setdefault("backoffLimit", 0)
    spec.setdefault("activeDeadlineSeconds", JOB_DEADLINE)
    pod = spec.setdefault("template", {}).setdefault("spec", {})
    pod.setdefault("restartPolicy", "Never")
    for container in pod.get("containers") or []:
        container["env"] = [*(container.get("env") or []), {"name": "NODE_NAME", "value": node}]
    away = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [node]}]}
    affinity = pod.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    required = affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {"nodeSelectorTerms": [{}]})
    for term in required.setdefault("nodeSelectorTerms", [{}]):
        term.setdefault("matchExpressions", []).extend(away["matchExpressions"])
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job_name(node), "namespace": namespace,
                         "labels": {JOB_LABEL: node, "app.kubernetes.io/managed-by": "kvtool"}},
            "spec": spec}


def job_outcome(job: dict[str, Any]) -> tuple[bool, str] | None:
    """(fenced, message) once the Job finished, None while it runs."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return True, f"fence Job {job['metadata']['name']} completed"
        if cond.get("type") == "Failed":
            return False, (f"fence Job {job['metadata']['name']} failed: {cond.get('reason', '')} "
                           f"{cond.get('message', '')}".strip())
    return None
