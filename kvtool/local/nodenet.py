"""The embedded cluster's network: a bridge on the machine, one network namespace per node.

Every embedded node is a host with its own address: namespace `kvt-<id>-<n>` holds the
node's `eth0` (a veth whose other end is on the cluster bridge `kvt<id>` in the machine's
namespace), its kubelet, containerd and kube-proxy, and the CNI bridge its pods hang off.
The machine keeps `.1` of the cluster subnet on that bridge; the apiserver listens there,
so kubelets reach it and it reaches each kubelet (logs, exec, port-forward) directly.
Pod subnets (10.244.<n-1>.0/24) are routed between the node namespaces only; traffic from a
pod to anything outside the cluster's pods (the apiserver) is masqueraded to its node's
address. The machine gets the bridge, its connected /24, and a route to each node's pod subnet via the node
(the apiserver calls webhooks at pod IPs); all of them go with the bridge.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from kvtool import paths
from kvtool.podnet import netcmd

CLUSTER_CIDR = "10.244.0.0/16"
NODE_HOST_OFFSET = 10  # node n is .<10+n> on the cluster bridge
NODE_TABLE = "kvtool-node"


@dataclass(frozen=True)
class ClusterNetwork:
    """The cluster bridge's subnet, chosen once per home and kept in <home>/network.json."""

    cluster_id: str
    subnet: str

    @property
    def bridge(self) -> str:
        return netcmd.ifname(f"kvt{self.cluster_id}")

    @property
    def gateway(self) -> str:
        return str(ipaddress.IPv4Network(self.subnet).network_address + 1)

    def node_ip(self, index: int) -> str:
        return str(ipaddress.IPv4Network(self.subnet).network_address + NODE_HOST_OFFSET + index)

    def node_netns(self, index: int) -> str:
        return netcmd.netns_name(f"kvt-{self.cluster_id}-{index}")

    def host_veth(self, index: int) -> str:
        return netcmd.ifname(f"kvt{self.cluster_id}n{index}")

    @staticmethod
    def pod_cidr(index: int) -> str:
        return str(list(ipaddress.IPv4Network(CLUSTER_CIDR).subnets(new_prefix=24))[index - 1])


def _candidates(cluster_id: str) -> list[ipaddress.IPv4Network]:
    """Subnets to try, starting at one derived from the cluster id (two homes rarely collide)."""
    seed = int(hashlib.sha256(cluster_id.encode()).hexdigest()[:8], 16)
    out = []
    for step in range(64):
        value = seed + step
        out.append(ipaddress.IPv4Network(f"10.{200 + value % 40}.{(value // 40) % 256}.0/24"))
    return out


def _used_networks() -> list[ipaddress.IPv4Network]:
    used = []
    for route in netcmd.ip_json("-4", "route", "show", "table", "all"):
        dst = route.get("dst", "")
        with contextlib.suppress(ValueError):
            if dst and dst != "default" and not dst.startswith(("broadcast", "local")):
                used.append(ipaddress.IPv4Network(dst, strict=False))
    for link in netcmd.ip_json("-4", "addr", "show"):
        for addr in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                used.append(ipaddress.IPv4Interface(f"{addr['local']}/{addr['prefixlen']}").network)
    return used


def choose(home: Path) -> ClusterNetwork:
    """The home's cluster network: the one it had, else the first candidate no route or address overlaps."""
    cluster_id = paths.cluster_id(home)
    saved = home / "network.json"
    if saved.exists():
        doc = json.loads(saved.read_text())
        return ClusterNetwork(cluster_id=cluster_id, subnet=doc["subnet"])
    used = _used_networks()
    for net in _candidates(cluster_id):
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            chosen = ClusterNetwork(cluster_id=cluster_id, subnet=str(net))
            paths.write_atomic(saved, json.dumps(asdict(chosen)) + "\n")
            return chosen
    raise netcmd.NetError("no free 10.200-239.x.0/24 subnet for the cluster bridge",
                          hint="remove stale bridges (`ip -br link | grep kvt`) or other clusters' routes")


def ensure_bridge(net: ClusterNetwork) -> None:
    """The cluster bridge with the machine's address on it (idempotent)."""
    prefix = ipaddress.IPv4Network(net.subnet).prefixlen
    if not netcmd.link_exists(net.bridge):
        netcmd.ip("link", "add", net.bridge, "type", "bridge")
    addrs = {a["local"] for link in netcmd.ip_json("-4", "addr", "show", "dev", net.bridge)
             for a in link.get("addr_info", [])}
    if net.gateway not in addrs:
        netcmd.ip("addr", "add", f"{net.gateway}/{prefix}", "dev", net.bridge)
    netcmd.ip("link", "set", net.bridge, "up")


def ensure_node(net: ClusterNetwork, index: int, nodes: int) -> None:
    """Node <index>'s namespace: eth0 on the bridge, routes to the other nodes' pods, masquerade out."""
    ns = net.node_netns(index)
    netcmd.add_netns(ns)
    netcmd.ip("link", "set", "lo", "up", netns=ns)
    prefix = ipaddress.IPv4Network(net.subnet).prefixlen
    if not netcmd.link_exists("eth0", netns=ns):
        host = net.host_veth(index)
        if netcmd.link_exists(host):
            netcmd.ip("link", "delete", host)
        netcmd.ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
        netcmd.ip("link", "set", host, "master", net.bridge)
        netcmd.ip("link", "set", host, "up")
        netcmd.ip("addr", "add", f"{net.node_ip(index)}/{prefix}", "dev", "eth0", netns=ns)
        netcmd.ip("link", "set", "eth0", "up", netns=ns)
        netcmd.ip("route", "add", "default", "via", net.gateway, netns=ns)
    for other in range(1, nodes + 1):
        if other != index:
            netcmd.ip("route", "replace", net.pod_cidr(other), "via", net.node_ip(other), netns=ns)
    # The control plane reaches pods as a real cluster's does (webhooks): this node's pods via its address. The
    # route goes with the bridge.
    netcmd.ip("route", "replace", net.pod_cidr(index), "via", net.node_ip(index))
    netcmd.set_sysctl("net.ipv4.ip_forward", "1", netns=ns)
    # kube-proxy's service rules must see traffic between pods on the node's own CNI bridge.
    with contextlib.suppress(netcmd.NetError):
        netcmd.set_sysctl("net.bridge.bridge-nf-call-iptables", "1", netns=ns)
    script = (f"table ip {NODE_TABLE}\ndelete table ip {NODE_TABLE}\n"
              f"table ip {NODE_TABLE} {{\n"
              "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n"
              f"    ip saddr {CLUSTER_CIDR} ip daddr != {CLUSTER_CIDR} oifname \"eth0\" masquerade\n"
              "  }\n}\n")
    netcmd.in_netns(netcmd.netns_path(ns), lambda: netcmd.nft(script, what=f"nft: node {index}'s masquerade"))


def remove(home: Path) -> list[str]:
    """Delete the node namespaces and the bridge of a home's cluster; what was removed."""
    saved = home / "network.json"
    cluster_id = paths.cluster_id(home)
    removed = []
    for ns in netcmd.list_netns(f"kvt-{cluster_id}-"):
        with contextlib.suppress(netcmd.NetError):
            netcmd.ip("link", "delete", "eth0", netns=ns)
        if netcmd.delete_netns(ns):
            removed.append(ns)
    if saved.exists():
        net = ClusterNetwork(cluster_id=cluster_id, subnet=json.loads(saved.read_text())["subnet"])
        if netcmd.link_exists(net.bridge):
            netcmd.ip("link", "delete", net.bridge)
            removed.append(net.bridge)
    return removed


PARTITION_TABLE = "kvtool-partition"


def partition(netns: str, gateway: str) -> None:
    """Cut the node off from the machine's bridge address, where the apiserver listens (a network partition).

    Everything to or from `gateway` is dropped in the node's namespace, its pods' traffic included (it is
    forwarded through there): the node and its VMs keep running, but no heartbeat reaches the cluster.
    """
    rule = f"ip daddr {gateway} drop\n    ip saddr {gateway} drop"
    chains = "".join(f"  chain {hook} {{\n    type filter hook {hook} priority -300; policy accept;\n    {rule}\n  }}\n"
                     for hook in ("input", "output", "forward"))
    script = (f"table inet {PARTITION_TABLE}\ndelete table inet {PARTITION_TABLE}\n"
              f"table inet {PARTITION_TABLE} {{\n{chains}}}\n")
    netcmd.in_netns(netcmd.netns_path(netns), lambda: netcmd.nft(script, what=f"nft: partition {netns}"))


def heal(netns: str) -> None:
    """Undo `partition` (idempotent)."""
    script = f"table inet {PARTITION_TABLE}\ndelete table inet {PARTITION_TABLE}\n"
    netcmd.in_netns(netcmd.netns_path(netns), lambda: netcmd.nft(script, what=f"nft: heal {netns}"))


def partitioned(netns: str) -> bool:
    def check() -> bool:
        try:
            netcmd.run(["nft", "list", "table", "inet", PARTITION_TABLE], what="nft list")
            return True
        except netcmd.NetError:
            return False

    return netcmd.in_netns(netcmd.netns_path(netns), check)
