"""Helpers for pod-network tests: scratch namespaces, HTTP from inside a namespace, what a node holds."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from kvtool.local.layout import Layout
from kvtool.podnet import embedded, netcmd
from tests.conftest import Cluster


def names(cluster: Cluster) -> embedded.ClusterNames:
    return embedded.ClusterNames(Layout(cluster.home).cluster_id)


def http_get(netns: str, url: str, timeout: float = 5) -> str:
    """GET url from inside a named network namespace (a thread that joined it)."""
    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.read().decode()
    return netcmd.in_netns(netcmd.netns_path(netns), fetch)


def try_get(netns: str, url: str) -> str | None:
    try:
        return http_get(netns, url, timeout=3)
    except OSError:
        return None


def links(netns: str) -> list[str]:
    return [link["ifname"] for link in netcmd.ip_json("link", "show", netns=netns)]


def sh(*argv: str, netns: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout, check=False)


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
