"""The Node object and its liveness: registration, the Lease, status heartbeats.

Like kubelet: the Lease in kube-node-lease is renewed every 10 s (the node lifecycle controller's
cheap liveness signal) and the full status is sent at registration and every 30 s. With the
embedded controller-manager's --node-monitor-grace-period=20s, a stopped agent's Node turns
NotReady within ~25 s; a restarted agent reports Ready again at once.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvtool import __version__
from kvtool.api.types import Kind
from kvtool.kube.resources import KubeError, Resources
from kvtool.nodeagent import status

log = logging.getLogger("kvtool.nodeagent")

NODE = Kind("v1", "Node", "nodes", namespaced=False)
LEASE = Kind("coordination.k8s.io/v1", "Lease", "leases")
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
LEASE_INTERVAL = 10.0
STATUS_INTERVAL = 30.0
READY_REASON = "KvtoolAgentReady"
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


@dataclass(frozen=True)
class NodeSpec:
    """What the agent says about its node."""

    name: str
    cpu: str
    memory: str
    pods: int
    ephemeral_storage: str
    labels: dict[str, str] = field(default_factory=dict)
    kubelet_version: str = "v0.0.0-kvtool"


def mem_total() -> str:
    """MemTotal from /proc/meminfo as a quantity (kubelet reports it in Ki)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1])}Ki"
    raise RuntimeError("no MemTotal in /proc/meminfo")


def disk_total(path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    return f"{shutil.disk_usage(path).total // 1024}Ki"


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "Linux"


def architecture() -> str:
    return ARCH.get(platform.machine(), platform.machine())


def labels(spec: NodeSpec) -> dict[str, str]:
    return {"kubernetes.io/hostname": spec.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": architecture(),
            "kvtool.io/node-agent": "true", **spec.labels}


class NodeLiveness:
    """Registers the Node and keeps its Lease and status fresh until stop is set."""

    def __init__(self, res: Resources, spec: NodeSpec, stop: threading.Event) -> None:
        self.res, self.spec, self.stop = res, spec, stop
        self.uid = ""
        self._transitions: dict[str, tuple[str, str]] = {}  # condition type -> (status, since)

    def status_doc(self) -> dict[str, Any]:
        s = self.spec
        resources = {"cpu": s.cpu, "memory": s.memory, "pods": str(s.pods), "ephemeral-storage": s.ephemeral_storage}
        stamp = status.now()
        conditions = []
        for kind, value, reason, message in (
                ("MemoryPressure", "False", "KvtoolAgentHasSufficientMemory",
                 "the node agent checks no memory pressure"),
                ("DiskPressure", "False", "KvtoolAgentHasNoDiskPressure", "the node agent checks no disk pressure"),
                ("PIDPressure", "False", "KvtoolAgentHasSufficientPID", "the node agent checks no PID pressure"),
                ("Ready", "True", READY_REASON, "kvtool node agent is posting ready status")):
            prev = self._transitions.get(kind)
            since = prev[1] if prev and prev[0] == value else stamp
            self._transitions[kind] = (value, since)
            conditions.append({"type": kind, "status": value, "reason": reason, "message": message,
                               "lastHeartbeatTime": stamp, "lastTransitionTime": since})
        return {
            "capacity": resources, "allocatable": resources, "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": status.HOST_IP}, {"type": "Hostname", "address": s.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {"machineID": _read("/etc/machine-id"), "systemUUID": _read("/etc/machine-id"),
                         "bootID": _read("/proc/sys/kernel/random/boot_id"), "kernelVersion": platform.release(),
                         "osImage": os_image(), "containerRuntimeVersion": f"{status.RUNTIME}://{__version__}",
                         "kubeletVersion": s.kubelet_version, "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": architecture()},
        }

    def register(self) -> None:
        """Create the Node, or bring an existing one's labels and status up to date."""
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.spec.name, "labels": labels(self.spec)}}
        try:
            node = self.res.create(NODE, body, field_manager=status.FIELD_MANAGER)
            log.info("event=registered node=%s", self.spec.name)
        except KubeError as exc:
            if exc.status != 409:
                raise
            node = self.res.merge_patch(NODE, None, self.spec.name, {"metadata": {"labels": labels(self.spec)}},
                                        field_manager=status.FIELD_MANAGER)
            log.info("event=re-registered node=%s", self.spec.name)
        self.uid = node["metadata"]["uid"]
        for cond in (node.get("status") or {}).get("conditions") or []:
            if cond.get("type") and cond.get("lastTransitionTime"):
                self._transitions[cond["type"]] = (cond.get("status", ""), cond["lastTransitionTime"])
        self.post_status()
        self.renew_lease()

    def post_status(self) -> None:
        try:
            self.res.request("PATCH", self.res.path(NODE, None, self.spec.name, "status"),
                             query={"fieldManager": status.FIELD_MANAGER}, body={"status": self.status_doc()},
                             content_type=status.STRATEGIC_MERGE, what=f"update status of node {self.spec.name}")
        except KubeError as exc:
            if exc.status != 404:
                raise
            log.warning("event=node-missing node=%s action=register", self.spec.name)
            self.register()

    def renew_lease(self) -> None:
        micro = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() % 1 * 1e6):06d}Z"
        spec = {"holderIdentity": self.spec.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": micro}
        try:
            self.res.merge_patch(LEASE, LEASE_NAMESPACE, self.spec.name, {"spec": spec},
                                 field_manager=status.FIELD_MANAGER)
        except KubeError as exc:
            if exc.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.spec.name, "uid": self.uid}
            self.res.create(LEASE, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                    "metadata": {"name": self.spec.name, "namespace": LEASE_NAMESPACE,
                                                 "ownerReferences": [owner]},
                                    "spec": spec}, field_manager=status.FIELD_MANAGER)

    def run(self) -> None:
        """Heartbeats until stop; failures are logged and retried on the next beat."""
        next_status = time.monotonic() + STATUS_INTERVAL
        while not self.stop.wait(LEASE_INTERVAL):
            try:
                self.renew_lease()
                if time.monotonic() >= next_status:
                    self.post_status()
                    next_status = time.monotonic() + STATUS_INTERVAL
            except Exception as exc:  # the loop's edge: the API may be restarting
                log.warning("event=heartbeat-failed node=%s error=%r", self.spec.name, str(exc))


def default_spec(name: str, root: Path, cpu: int | None, memory: str | None, pods: int,
                 extra_labels: dict[str, str], kubelet_version: str) -> NodeSpec:
    return NodeSpec(name=name, cpu=str(cpu or os.cpu_count() or 1), memory=memory or mem_total(), pods=pods,
                    ephemeral_storage=disk_total(root), labels=extra_labels, kubelet_version=kubelet_version)
