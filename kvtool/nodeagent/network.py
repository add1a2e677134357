"""Embedded mode's CNI: each pod gets a network namespace, a veth into its node's bridge and an
address from the node's podCIDR (Node.spec.podCIDR, set by the controller-manager).

Names and the layout are kvtool.podnet.embedded's (docs/runtime.md, "Pod networking"). The
container process is started inside the pod's namespace (the shim joins it), so the launcher,
its libvirtd and QEMU, and the guest's tap and bridge all live there. A pod's network is created
before its container starts and removed when the container has ended or the pod is deleted; an
agent that starts again removes what belongs to no pod it knows (collect_garbage) and leaves the
running pods' namespaces as they are. Every step is idempotent, keyed by the pod uid.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from kvtool.kube.resources import KubeError, Resources
from kvtool.nodeagent import node as node_mod
from kvtool.nodeagent import status
from kvtool.nodeagent.volumes import Pending
from kvtool.podnet import embedded, ipam, netcmd

log = logging.getLogger("kvtool.nodeagent")

ATTACHMENT_FILE = "network.json"


@dataclass(frozen=True)
class Attachment:
    """A pod's place on the node's network; kept in <pod dir>/network.json."""

    ip: ipaddress.IPv4Address
    prefix: int
    gateway: ipaddress.IPv4Address
    netns: str

    @property
    def netns_path(self) -> Path:
        return netcmd.netns_path(self.netns)

    def to_json(self) -> str:
        return json.dumps({"ip": str(self.ip), "prefix": self.prefix, "gateway": str(self.gateway),
                           "netns": self.netns})

    @classmethod
    def load(cls, pod_dir: Path) -> Attachment | None:
        try:
            doc = json.loads((pod_dir / ATTACHMENT_FILE).read_text())
            return cls(ipaddress.IPv4Address(doc["ip"]), int(doc["prefix"]), ipaddress.IPv4Address(doc["gateway"]),
                       netcmd.netns_name(doc["netns"]))
        except (OSError, ValueError, KeyError, TypeError, netcmd.NetError):
            return None


class PodNetwork:
    """The pod network of one node of one embedded cluster."""

    def __init__(self, cluster_id: str, node: str, state_dir: Path, res: Resources) -> None:
        self.names = embedded.ClusterNames(cluster_id)
        self.node = node
        self.ipam_dir = state_dir / "ipam"
        self.res = res
        self.bridge = self.names.bridge(node)
        self._network: ipaddress.IPv4Network | None = None

    @property
    def host_netns(self) -> str:
        return self.names.netns

    # ---- the node: the cluster's host namespace and this node's bridge

    def ensure_node(self) -> ipaddress.IPv4Network:
        """The node's podCIDR, its bridge up with the gateway address; Pending until the CIDR is assigned."""
        if self._network is not None and netcmd.link_exists(self.bridge, self.host_netns):
            return self._network
        try:
            node = self.res.get(node_mod.NODE, None, self.node)
        except KubeError as exc:
            raise Pending(f"cannot read node {self.node}: {exc.message}") from exc
        cidr = ((node or {}).get("spec") or {}).get("podCIDR")
        if not cidr:
            raise Pending(f"waiting for the controller-manager to give node {self.node} a podCIDR")
        network = ipam.parse_cidr(cidr)
        if netcmd.add_netns(self.host_netns):
            log.info("event=netns-created node=%s netns=%s", self.node, self.host_netns)
        netcmd.ip("link", "set", "lo", "up", netns=self.host_netns)
        netcmd.set_sysctl("net.ipv4.ip_forward", "1", netns=self.host_netns)
        self._ensure_bridge(network)
        self._annotate()
        self._network = network
        log.info("event=pod-network-ready node=%s pod_cidr=%s bridge=%s netns=%s", self.node, network, self.bridge,
                 self.host_netns)
        return network

    def _ensure_bridge(self, network: ipaddress.IPv4Network) -> None:
        ns, bridge = self.host_netns, self.bridge
        if not netcmd.link_exists(bridge, ns):
            netcmd.ip("link", "add", bridge, "type", "bridge", netns=ns)
        wanted = ipaddress.IPv4Interface(f"{ipam.gateway(network)}/{network.prefixlen}")
        have = set()
        for link in netcmd.ip_json("-4", "addr", "show", "dev", bridge, netns=ns):
            for info in link.get("addr_info") or []:
                have.add(ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}"))
        for stale in have - {wanted}:  # the node got another podCIDR (its Node was recreated)
            netcmd.ip("addr", "del", str(stale), "dev", bridge, netns=ns)
        if wanted not in have:
            netcmd.ip("addr", "add", str(wanted), "dev", bridge, netns=ns)
        netcmd.ip("link", "set", bridge, "up", netns=ns)

    def _annotate(self) -> None:
        """Tell port-forward where this node's pod IPs are reachable."""
        try:
            self.res.merge_patch(node_mod.NODE, None, self.node,
                                 {"metadata": {"annotations": {embedded.NETNS_ANNOTATION: self.host_netns}}},
                                 field_manager=status.FIELD_MANAGER)
        except KubeError as exc:
            log.warning("event=node-annotate-failed node=%s error=%r", self.node, exc.message)

    # ---- pods

    def attach(self, uid: str, pod_dir: Path) -> Attachment:
        """Give a pod whose container has not started yet its namespace, veth and address (anew)."""
        network = self.ensure_node()
        address = ipam.Store(self.ipam_dir, network).reserve(uid)
        netns, veth = self.names.pod_netns(self.node, uid), self.names.veth(uid)
        self._remove_links(uid)  # leftovers of an attempt that never ran a container
        netcmd.add_netns(netns)
        gateway = ipam.gateway(network)
        pod_if = embedded.POD_INTERFACE
        netcmd.ip_batch([["link", "set", "lo", "up"],
                         ["link", "add", pod_if, "type", "veth", "peer", "name", veth, "netns", self.host_netns],
                         ["addr", "add", f"{address}/{network.prefixlen}", "dev", pod_if],
                         ["link", "set", pod_if, "up"],
                         ["route", "add", "default", "via", str(gateway), "dev", pod_if]],
                        netns=netns, what=f"set up {pod_if} in {netns}")
        netcmd.ip("link", "set", veth, "master", self.bridge, "up", netns=self.host_netns)
        attachment = Attachment(address, network.prefixlen, gateway, netns)
        (pod_dir / ATTACHMENT_FILE).write_text(attachment.to_json())
        log.info("event=pod-network-attached node=%s uid=%s ip=%s netns=%s veth=%s", self.node, uid, address, netns,
                 veth)
        return attachment

    def detach(self, uid: str) -> None:
        """Remove a pod's namespace, veth and address; nothing happens for parts already gone."""
        removed = self._remove_links(uid)
        freed = [ip for store in self._stores() for ip in store.release(uid)]
        if removed or freed:
            log.info("event=pod-network-detached node=%s uid=%s ip=%s", self.node, uid,
                     ",".join(map(str, freed)) or "-")

    def _remove_links(self, uid: str) -> bool:
        netns, veth = self.names.pod_netns(self.node, uid), self.names.veth(uid)
        existed = netcmd.netns_exists(netns)
        if existed:
            # eth0 first: a process still inside would keep the namespace (and the veth) alive.
            with contextlib.suppress(netcmd.NetError):
                netcmd.ip("link", "delete", embedded.POD_INTERFACE, netns=netns)
            netcmd.delete_netns(netns)
        if netcmd.netns_exists(self.host_netns) and netcmd.link_exists(veth, self.host_netns):
            netcmd.ip("link", "delete", veth, netns=self.host_netns)
            existed = True
        return existed

    def _stores(self) -> list[ipam.Store]:
        stores = []
        for entry in sorted(self.ipam_dir.iterdir()) if self.ipam_dir.is_dir() else []:
            with contextlib.suppress(netcmd.NetError):
                stores.append(ipam.Store(self.ipam_dir, ipam.parse_cidr(entry.name.replace("_", "/"))))
        return stores

    def collect_garbage(self, live: set[str]) -> list[str]:
        """Remove namespaces, veths and addresses of this node that belong to no pod in `live`."""
        removed = []
        prefix = self.names.node_netns_prefix(self.node)
        for netns in netcmd.list_netns(prefix):
            uid = netns[len(prefix):]
            if uid not in live:
                self.detach(uid)
                removed.append(netns)
        for store in self._stores():
            removed += [f"{ip} ({uid})" for ip, uid in store.collect(live)]
        if netcmd.netns_exists(self.host_netns) and netcmd.link_exists(self.bridge, self.host_netns):
            keep = {self.names.veth(uid) for uid in live}
            for link in netcmd.ip_json("link", "show", "master", self.bridge, netns=self.host_netns):
                name = link.get("ifname", "")
                if name.startswith("kvtv") and name not in keep:
                    netcmd.ip("link", "delete", netcmd.ifname(name), netns=self.host_netns)
                    removed.append(name)
        if removed:
            log.info("event=pod-network-orphans-removed node=%s removed=%s", self.node, ",".join(removed))
        return removed
