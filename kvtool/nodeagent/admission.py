"""Which pods this node runs, and why it refuses the others (kubelet's admission, for one kind of pod).

The node agent runs only kvtool launcher pods (docs/runtime.md): one container, the launcher
image, a `kvtool ...` command, restartPolicy Never. Anything else fails at admission with phase
Failed, reason UnsupportedPod and a message that names the first problem found; it never runs.
"""

from __future__ import annotations

import sys
from typing import Any

from kvtool.nodeagent import volumes

REASON = "UnsupportedPod"


def _problems(pod: dict[str, Any], image: str) -> str | None:
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if spec.get("initContainers"):
        return "the pod has initContainers"
    if spec.get("ephemeralContainers"):
        return "the pod has ephemeralContainers"
    if len(containers) != 1:
        return f"the pod has {len(containers)} containers"
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            return f"the pod sets {flag}"
    if spec.get("restartPolicy", "Always") != "Never":
        return f"the pod has restartPolicy {spec.get('restartPolicy', 'Always')}"
    c = containers[0]
    if c.get("image") != image:
        return f"container {c['name']!r} uses image {c.get('image')!r}"
    command = c.get("command") or []
    if not command or command[0] != "kvtool":
        return f"container {c['name']!r} has command {command!r}"
    for field in ("livenessProbe", "readinessProbe", "startupProbe", "lifecycle"):
        if c.get(field):
            return f"container {c['name']!r} has a {field} (this node runs no probes or hooks)"
    if c.get("envFrom"):
        return f"container {c['name']!r} uses envFrom"
    for var in c.get("env") or []:
        source = var.get("valueFrom") or {}
        if source and not {"fieldRef", "secretKeyRef", "configMapKeyRef"} & set(source):
            return f"env {var['name']} of container {c['name']!r} uses {', '.join(source)}"
        if "fieldRef" in source:
            try:
                volumes.field_ref(pod, source["fieldRef"].get("fieldPath", ""), "", "")
            except volumes.Unsupported:
                return f"env {var['name']} of container {c['name']!r} uses fieldRef " \
                       f"{source['fieldRef'].get('fieldPath')!r}"
    for m in c.get("volumeMounts") or []:
        if m.get("subPathExpr"):
            return f"volumeMount {m['mountPath']} uses subPathExpr"
    for vol in spec.get("volumes") or []:
        kind = next((k for k in vol if k != "name"), "?")
        if kind not in volumes.SUPPORTED_VOLUMES:
            return f"volume {vol['name']!r} is a {kind} volume"
        if kind == "hostPath" and (vol["hostPath"].get("type") or "") not in volumes.HOSTPATH_TYPES:
            return f"hostPath volume {vol['name']!r} has type {vol['hostPath']['type']}"
    return None


def what_runs_here(node: str, image: str) -> str:
    return (f"node {node} (a kvtool node agent) runs only kvtool launcher pods: one container with image {image}, "
            f"command [\"kvtool\", ...], restartPolicy Never, volumes of types "
            f"{', '.join(volumes.SUPPORTED_VOLUMES)}")


def refusal(pod: dict[str, Any], image: str, node: str) -> str | None:
    """None if the pod can run here; else the message its Failed status carries."""
    problem = _problems(pod, image)
    if problem is None:
        return None
    return f"{problem}, but {what_runs_here(node, image)}"


def argv(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The host command: `kvtool` is this interpreter's kvtool; $(VAR) expanded like kubelet does."""
    words = [volumes.expand(w, env) for w in [*(container.get("command") or []), *(container.get("args") or [])]]
    return [sys.executable, "-m", "kvtool.cli.main", *words[1:]]
