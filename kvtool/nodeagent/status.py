"""Pod status documents the agent reports, shaped like kubelet's, and the events it records.

Written as strategic-merge patches of pods/status: conditions merge by type (the scheduler's
PodScheduled is kept) and containerStatuses by name. Each document is computed only from the
pod and the container's record, so re-sending it after an agent restart changes nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kvtool import __version__
from kvtool.api.types import Kind
from kvtool.kube.resources import KubeError, Resources
from kvtool.nodeagent.runner import Exited, Record

log = logging.getLogger("kvtool.nodeagent")

POD = Kind("v1", "Pod", "pods")
EVENT = Kind("v1", "Event", "events")
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
FIELD_MANAGER = "kvtool-node-agent"
HOST_IP = "127.0.0.1"
# A node agent without a pod network runs pods in the host's network: their IP is the node's.
POD_IP = HOST_IP
RUNTIME = "kvtool-process"
IMAGE_ID = f"{RUNTIME}://kvtool@{__version__}"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _condition(kind: str, ok: bool, since: str, reason: str | None = None, message: str | None = None) -> dict:
    cond: dict[str, Any] = {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None,
                            "lastTransitionTime": since}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _base(pod: dict[str, Any], phase: str, accepted_at: str, pod_ip: str | None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
                              "startTime": (pod.get("status") or {}).get("startTime") or accepted_at}
    if pod_ip:
        status.update(podIP=pod_ip, podIPs=[{"ip": pod_ip}])
    return status


def _conditions(pod: dict[str, Any], accepted_at: str, *, sandbox: bool, ready: bool, since: str,
                reason: str | None, message: str | None = None) -> list[dict[str, Any]]:
    conds = [_condition("PodReadyToStartContainers", sandbox, since if not sandbox else accepted_at),
             _condition("Initialized", True, accepted_at),
             _condition("ContainersReady", ready, since, None if ready else reason, message),
             _condition("Ready", ready, since, None if ready else reason, message)]
    existing = {c.get("type") for c in (pod.get("status") or {}).get("conditions") or []}
    if "PodScheduled" not in existing:  # a pod created with spec.nodeName never met the scheduler
        conds.append(_condition("PodScheduled", True, accepted_at))
    return conds


def _container(container: dict[str, Any], state: dict[str, Any], *, running: bool, record: Record | None,
               last_state: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": container["name"], "image": container.get("image", ""), "imageID": IMAGE_ID,
                           "started": running, "ready": running,
                           "restartCount": record.restart_count if record else 0,
                           "state": state, "lastState": last_state or {}}
    if record is not None:
        doc["containerID"] = f"{RUNTIME}://{record.pid}"
    return doc


def pending(pod: dict[str, Any], container: dict[str, Any], accepted_at: str, message: str | None = None) -> dict:
    """Accepted, its container not started yet (volumes being prepared, or waiting on a claim)."""
    waiting = {"reason": "ContainerCreating", **({"message": message} if message else {})}
    status = _base(pod, "Pending", accepted_at, None)
    status["conditions"] = _conditions(pod, accepted_at, sandbox=False, ready=False, since=accepted_at,
                                       reason="ContainersNotReady",
                                       message=f"containers with unready status: [{container['name']}]")
    status["containerStatuses"] = [_container(container, {"waiting": waiting}, running=False, record=None)]
    return status


def running(pod: dict[str, Any], container: dict[str, Any], accepted_at: str, record: Record,
            pod_ip: str = POD_IP) -> dict:
    status = _base(pod, "Running", accepted_at, pod_ip)
    status["conditions"] = _conditions(pod, accepted_at, sandbox=True, ready=True, since=record.started_at,
                                       reason=None)
    status["containerStatuses"] = [_container(container, {"running": {"startedAt": record.started_at}},
                                              running=True, record=record)]
    return status


def terminated(pod: dict[str, Any], container: dict[str, Any], accepted_at: str, record: Record | None,
               exited: Exited, started_at: str | None = None, pod_ip: str | None = POD_IP) -> dict:
    """The container ended; with restartPolicy Never so did the pod: Succeeded on 0, else Failed."""
    phase = "Succeeded" if exited.exit_code == 0 else "Failed"
    state: dict[str, Any] = {"exitCode": exited.exit_code, "reason": exited.reason,
                             "startedAt": record.started_at if record else started_at,
                             "finishedAt": exited.finished_at}
    if record is not None:
        state["containerID"] = f"{RUNTIME}://{record.pid}"
    if exited.signal:
        state["signal"] = exited.signal
    if exited.message:
        state["message"] = exited.message
    status = _base(pod, phase, accepted_at, pod_ip)
    reason = "PodCompleted" if phase == "Succeeded" else "ContainersNotReady"
    status["conditions"] = _conditions(
        pod, accepted_at, sandbox=False, ready=False, since=exited.finished_at, reason=reason,
        message=None if phase == "Succeeded" else f"containers with unready status: [{container['name']}]")
    status["containerStatuses"] = [_container(container, {"terminated": state}, running=False, record=record)]
    return status


def refused(reason: str, message: str) -> dict:
    """Kubelet's admission failure: the pod fails before anything of it runs."""
    return {"phase": "Failed", "reason": reason, "message": message}


def patch(res: Resources, pod: dict[str, Any], status: dict[str, Any]) -> dict[str, Any] | None:
    """Send a status document; None if the pod is gone. The uid guards against a recreated namesake."""
    meta = pod["metadata"]
    body = {"metadata": {"uid": meta["uid"]}, "status": status}
    try:
        return res.request("PATCH", res.path(POD, meta["namespace"], meta["name"], "status"),
                           query={"fieldManager": FIELD_MANAGER}, body=body, content_type=STRATEGIC_MERGE,
                           what=f"update status of pod {meta['namespace']}/{meta['name']}")
    except KubeError as exc:
        if exc.status in (404, 409):
            return None
        raise


def event(res: Resources, pod: dict[str, Any], node: str, reason: str, message: str, warning: bool = False) -> None:
    """Record an Event on the pod, as kubelet does (kubectl describe shows it); failures only log."""
    meta = pod["metadata"]
    stamp = now()
    body = {"apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": meta["namespace"],
                               "name": meta["name"], "uid": meta["uid"]},
            "reason": reason, "message": message, "type": "Warning" if warning else "Normal",
            "source": {"component": "kvtool-node-agent", "host": node}, "reportingComponent": "kvtool-node-agent",
            "reportingInstance": node, "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1}
    try:
        res.request("POST", res.path(EVENT, meta["namespace"]), body=body, what="create event")
    except KubeError as exc:
        log.warning("event=event-failed pod=%s/%s reason=%s error=%r", meta["namespace"], meta["name"], reason,
                    exc.message)
