"""Helpers for pod-network tests: scratch namespaces, HTTP from inside a namespace, what a node holds.

A namespace is either a name (`ip netns`: scratch namespaces, an embedded node's `kvt-<id>-<n>`) or
a path to a namespace file (a pod's, `/proc/<pid>/ns/net` of one of its processes: containerd pins
pod namespaces inside the node's mount namespace, where this machine cannot name them).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kvtool.podnet import forward, netcmd
from tests.conftest import Cluster
from tests.processes import pod_processes

Netns = str | Path  # a named namespace, or a namespace file

# A pod's plain process (tests/pod_http_server.py), run with python3 -c.
POD_HTTP_SERVER = (Path(__file__).parent / "pod_http_server.py").read_text()


def _path(netns: Netns) -> Path:
    return netns if isinstance(netns, Path) else netcmd.netns_path(netns)


def http_get(netns: Netns, url: str, timeout: float = 5) -> str:
    """GET url from inside a network namespace (a thread that joined it)."""
    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.read().decode()
    return netcmd.in_netns(_path(netns), fetch)


def try_get(netns: Netns, url: str) -> str | None:
    try:
        return http_get(netns, url, timeout=3)
    except OSError:
        return None


def links(netns: Netns) -> list[str]:
    return [link["ifname"] for link in netcmd.in_netns(_path(netns), lambda: netcmd.ip_json("link", "show"))]


def sh(*argv: str, netns: Netns | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """argv (never a shell) in the machine's namespace, a named namespace or a namespace file."""
    if isinstance(netns, Path):
        prefix = ["nsenter", f"--net={netns}", "--"]
    else:
        prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout, check=False)


# ---- the embedded cluster's nodes and pods -------------------------------------------------------

def node(cluster: Cluster, name: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl("get", "node", name, "-o", "json").stdout)


def node_netns(cluster: Cluster, name: str) -> str:
    """The node's own network namespace, as its Node says (the annotation `kvtool port-forward` uses)."""
    annotations = node(cluster, name)["metadata"].get("annotations") or {}
    value = annotations.get(forward.NETNS_ANNOTATION)
    assert value, f"node {name} has no {forward.NETNS_ANNOTATION} annotation: {annotations}"
    return netcmd.netns_name(value)


def pod_cidr(cluster: Cluster, name: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(node(cluster, name)["spec"]["podCIDR"])


def launcher_image(cluster: Cluster) -> str:
    """The kvtool image every node imported (what the handler DaemonSet runs): never spelled out here."""
    images = cluster.kubectl("-n", "kvtool-system", "get", "ds", "kvtool-handler",
                             "-o", "jsonpath={..image}").stdout.split()
    assert images, "the kvtool-handler DaemonSet names no image"
    return images[0]


def pod_pids(cluster: Cluster, node_name: str, pod_uid: str) -> set[int]:
    """Every process of a pod (its sandbox, its containers and what they started, QEMU included)."""
    return set(pod_processes(pod_uid))


def pod_netns(cluster: Cluster, node_name: str, pod_uid: str) -> Path:
    """The pod's network namespace: that of any of its processes (they all share the sandbox's)."""
    for pid in sorted(pod_pids(cluster, node_name, pod_uid)):
        path = Path(f"/proc/{pid}/ns/net")
        with contextlib.suppress(OSError):
            os.stat(path)
            return path
    raise AssertionError(f"pod {pod_uid} has no process on {node_name}")


def bridge_ports(netns: str, bridge: str = "cni0") -> set[str]:
    """The interfaces enslaved to a bridge in a named namespace (the CNI bridge's pod veths); none
    while there is no bridge (the CNI plugin makes it with the node's first pod)."""
    if not netcmd.link_exists(bridge, netns=netns):
        return set()
    return {link["ifname"] for link in netcmd.ip_json("link", "show", "master", bridge, netns=netns)}


def ipam_reservations(cluster: Cluster, node_name: str) -> dict[str, str]:
    """host-local IPAM's reservations on a node: address -> the pod sandbox (container id) holding it."""
    ipam_dir = cluster.home / "nodes" / node_name / "cni" / "state" / "ipam" / "kvtool"
    out = {}
    for entry in ipam_dir.iterdir() if ipam_dir.is_dir() else []:
        with contextlib.suppress(ValueError, OSError):  # not an address (lock, last_reserved_ip.0), or just released
            address = str(ipaddress.IPv4Address(entry.name))
            out[address] = entry.read_text().split()[0]
    return out


def root_nft_tables() -> set[str]:
    """The nftables tables of the machine's own network namespace."""
    result = sh("nft", "list", "tables")
    assert result.returncode == 0, result.stderr
    return set(result.stdout.splitlines())


# ---- scratch namespaces (unit-level wiring) ------------------------------------------------------

@contextlib.contextmanager
def scratch_namespaces(*roles: str) -> Iterator[dict[str, str]]:
    """Fresh named namespaces kvt-t<random>-<role>, each with lo up; all deleted afterwards."""
    tag = secrets.token_hex(3)
    made = {role: f"kvt-t{tag}-{role}" for role in roles}
    try:
        for name in made.values():
            netcmd.add_netns(name)
            netcmd.ip("link", "set", "lo", "up", netns=name)
        yield made
    finally:
        for name in made.values():
            for link in (links(name) if netcmd.netns_exists(name) else []):
                if link != "lo":
                    with contextlib.suppress(netcmd.NetError):
                        netcmd.ip("link", "delete", link, netns=name)
            netcmd.delete_netns(name)


def veth(a_netns: str, a_name: str, b_netns: str, b_name: str) -> None:
    netcmd.ip("link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b_netns, netns=a_netns)
    netcmd.ip("link", "set", a_name, "up", netns=a_netns)
    netcmd.ip("link", "set", b_name, "up", netns=b_netns)


UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] && echo "lease ip=$ip mask=$mask router=$router dns=$dns staticroutes=$staticroutes"
exit 0
"""


def udhcpc(netns: str, interface: str, script_dir: Path, tries: int = 4) -> str:
    """What the tiny guest's DHCP client is told on interface (busybox udhcpc, as in the guest)."""
    script = script_dir / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    result = sh("busybox", "udhcpc", "-i", interface, "-s", str(script), "-n", "-q", "-t", str(tries), "-T", "1",
                "-O", "staticroutes", netns=netns, timeout=20)
    return result.stdout + result.stderr
