"""The handler's own heartbeat, and what it does first when its node comes back.

The heartbeat is a coordination.k8s.io Lease `kvtool-handler-<node>` in kvtool's namespace,
renewed every RENEW seconds. The controller counts a node lost only when this Lease and the
kubelet's Node Lease both go stale (kvtool.controller.failover), so a restarting kubelet or a
crashing handler alone never triggers fencing.

A node that returns (a partition healed, a powered-off node started) may find VMs of its own
that were failed and restarted elsewhere meanwhile. Before the handler follows any VMI, it
destroys every domain on the node that no live VMI claims: one VM never runs twice.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from kvtool.api import timeutil
from kvtool.api.types import LEASE, VIRTUAL_MACHINE_INSTANCE
from kvtool.deploy import manifests
from kvtool.kube.resources import Resources
from kvtool.launchercom.client import LauncherClient, LauncherError, LauncherUnavailable

log = logging.getLogger("kvtool.handler")

LEASE_PREFIX = manifests.HANDLER_LEASE_PREFIX
RENEW = 2.0
# A renewal that has not answered by then is abandoned, and the next beat goes out on a new connection.
# Without a bound, a request sent into a network partition hung on after the partition healed (TCP's
# retransmissions back off to tens of seconds): the node looked lost past the failover grace though it
# was back, and a fence agent would have powered it off.
RENEW_TIMEOUT = 4.0
FIELD_MANAGER = "kvtool-handler"


def lease(node: str, namespace: str, now: str) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_PREFIX + node, "namespace": namespace,
                         "labels": {"app.kubernetes.io/name": "kvtool-handler", "kvtool.io/node": node}},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": int(RENEW * 5), "renewTime": now}}


async def beat(res: Resources, node: str, namespace: str) -> None:
    """Renew the Lease forever; a failed renewal is logged once and retried on the next beat."""
    failing = False
    while True:
        try:
            await asyncio.to_thread(res.apply, LEASE, lease(node, namespace, timeutil.stamp_micro()), force=True,
                                    field_manager=FIELD_MANAGER, parse=False, timeout=RENEW_TIMEOUT)
            if failing:
                log.info("node=%s event=heartbeat-resumed", node)
            failing = False
        except Exception as exc:  # the API is away (urllib3 errors are not OSErrors): beat on regardless
            if not failing:
                log.warning("node=%s event=heartbeat-failed error=%r", node, str(exc))
            failing = True
        await asyncio.sleep(RENEW)


def claimed_pods(vmis: list[dict[str, Any]], node: str) -> set[str]:
    """Launcher pod UIDs that live VMIs on this node still claim."""
    out: set[str] = set()
    for vmi in vmis:
        status = vmi.get("status") or {}
        if status.get("nodeName") != node or status.get("phase") in ("Succeeded", "Failed") or \
                vmi["metadata"].get("deletionTimestamp"):
            continue
        out |= {uid for uid, where in (status.get("activePods") or {}).items() if where == node}
    return out


def on_node(node: str) -> str:
    """The field selector of a node's VMIs (the VMI CRD's selectable status.nodeName)."""
    return f"status.nodeName={node}"


def sweep_leftovers(res: Resources, node: str, sockets_dir: Path) -> list[str]:
    """Destroy domains no live VMI on this node claims; the pod UIDs whose domains were destroyed."""
    if not sockets_dir.is_dir():
        return []
    vmis, _ = res.list(VIRTUAL_MACHINE_INSTANCE, None, field_selector=on_node(node))
    claimed = claimed_pods(vmis, node)
    destroyed = []
    for sock in sorted(sockets_dir.glob("*.sock")):
        pod_uid = sock.name.removesuffix(".sock")
        if pod_uid in claimed:
            continue
        try:
            with LauncherClient(sock, timeout=5.0) as client:
                client.ping()
                client.shutdown(0)
        except LauncherUnavailable:
            continue  # nothing listens: a socket its dead launcher left
        except LauncherError as exc:
            log.warning("node=%s pod=%s event=leftover-destroy-failed error=%r", node, pod_uid, str(exc))
            continue
        log.warning("node=%s pod=%s event=leftover-destroyed reason=no-live-vmi-claims-it", node, pod_uid)
        destroyed.append(pod_uid)
    return destroyed
