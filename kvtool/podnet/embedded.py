"""Names of embedded mode's pod network, and removing all of one cluster's network at once.

Several embedded clusters may run on one machine, each with nodes kvtool-node-1/2 and each with
pod CIDR 10.244.0.0/16, so nothing goes into the machine's own network namespace: every cluster
has its own "host network" namespace `kvt-<id>` (id: the 8 hex digits of the cluster's home,
as in /run/kvt-<id>), which holds one bridge per node, `kvtbr-<node hash>` with the node's
podCIDR gateway address, and one veth per pod, `kvtv<pod uid hash>`. All bridges share that
namespace, so the route between nodes' pod CIDRs is just IP forwarding there. A pod's own
namespace is `kvt-<id>-<node hash>-<pod uid>`, with `eth0` (the veth's peer) holding the pod IP.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass

from kvtool.podnet import netcmd

CLUSTER_ID = re.compile(r"[0-9a-f]{8}")
POD_INTERFACE = "eth0"
# The Node annotation that tells port-forward which namespace the node's pod IPs are reachable in.
NETNS_ANNOTATION = "kvtool.io/pod-network-namespace"


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class ClusterNames:
    cluster_id: str

    def __post_init__(self) -> None:
        if not CLUSTER_ID.fullmatch(self.cluster_id):
            raise netcmd.NetError(f"cluster id {self.cluster_id!r} is not 8 lower-case hex digits")

    @property
    def netns(self) -> str:
        """The cluster's host network namespace: node bridges and pods' veths."""
        return f"kvt-{self.cluster_id}"

    @property
    def pod_netns_prefix(self) -> str:
        return f"kvt-{self.cluster_id}-"

    @staticmethod
    def node_token(node: str) -> str:
        return _digest(node, 6)

    def bridge(self, node: str) -> str:
        return f"kvtbr-{self.node_token(node)}"

    def node_netns_prefix(self, node: str) -> str:
        return f"{self.pod_netns_prefix}{self.node_token(node)}-"

    def pod_netns(self, node: str, pod_uid: str) -> str:
        return netcmd.netns_name(f"{self.node_netns_prefix(node)}{pod_uid}")

    @staticmethod
    def veth(pod_uid: str) -> str:
        return f"kvtv{_digest(pod_uid, 10)}"


def remove_cluster(cluster_id: str) -> list[str]:
    """Delete every namespace of one cluster (pods' first, then its host namespace); their names.

    A pod's eth0 is deleted before its namespace: a process still inside would keep the namespace,
    and with it the veth and its address, alive after the name is gone.
    """
    names = ClusterNames(cluster_id)
    removed = []
    for name in netcmd.list_netns(names.pod_netns_prefix):
        with contextlib.suppress(netcmd.NetError):
            netcmd.ip("link", "delete", POD_INTERFACE, netns=name)
        if netcmd.delete_netns(name):
            removed.append(name)
    if netcmd.delete_netns(names.netns):
        removed.append(names.netns)
    return removed
