"""The VM's side of pod networking: the guest's NIC behind the pod's interface (KubeVirt's bindings).

Runs in the pod's network namespace, which the CNI made (standard bridge plugin, in embedded mode), and
needs nothing there beyond NET_ADMIN/NET_RAW, /dev/net/tun and (masquerade) IP forwarding:
- masquerade (the default): bridge `k6t-<pod if>` with 10.0.2.1/24 and tap `tap0`; the guest is
  10.0.2.2, told so by DHCP; nftables table `ip kvtool` DNATs inbound traffic for the pod IP (the
  interface's ports, or everything) to the guest and SNATs the guest's outbound traffic to the pod IP.
- bridge: the pod IP and MAC move to the guest (KubeVirt's SetupDefaultPodNetwork): the pod interface
  loses its address, gets a new MAC and joins bridge `k6t-<pod if>` (169.254.75.10/32: a source
  address for DHCP) with `tap0`; DHCP gives the guest the pod IP, prefix and gateway.
In both, dnsmasq (kvtool.podnet.dhcp) serves the one lease on the bridge only.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvtool.launcher.config import Config
from kvtool.podnet import dhcp, nat, netcmd

log = logging.getLogger("kvtool.launcher.network")

GUEST_NETWORK = ipaddress.IPv4Network("10.0.2.0/24")
GUEST_GATEWAY = ipaddress.IPv4Address("10.0.2.1")
GUEST_IP = ipaddress.IPv4Address("10.0.2.2")
BRIDGE_ADDRESS = "169.254.75.10/32"
TAP = "tap0"
BINDINGS = ("masquerade", "bridge")
RESOLV_CONF = Path("/etc/resolv.conf")


@dataclass(frozen=True)
class PodInterface:
    """The CNI's interface as the launcher found it."""

    name: str
    address: ipaddress.IPv4Interface
    mac: str
    mtu: int
    gateway: ipaddress.IPv4Address | None


@dataclass(frozen=True)
class Request:
    """A spec interface on the pod network."""

    name: str
    binding: str
    mac: str | None  # spec macAddress
    ports: list[nat.Port] | None  # None: all ports


@dataclass(frozen=True)
class Wired:
    """What the domain and the status need of a wired interface."""

    name: str
    binding: str
    tap: str
    mac: str  # the guest's
    pod_ip: ipaddress.IPv4Address
    guest_ip: ipaddress.IPv4Address
    pod_interface: str


def requests(spec: Mapping[str, Any]) -> list[Request]:
    """The spec's interfaces with a binding (the converter checks the rest of the spec)."""
    devices = ((spec.get("domain") or {}).get("devices") or {})
    found = []
    for iface in devices.get("interfaces") or []:
        binding = next((b for b in BINDINGS if b in iface), None)
        if binding is None:
            continue
        mac = netcmd.mac(iface["macAddress"]) if iface.get("macAddress") else None
        found.append(Request(str(iface.get("name")), binding, mac, nat.ports_from_spec(iface.get("ports"))))
    if len(found) > 1:
        raise netcmd.NetError(f"{len(found)} interfaces use the pod network; it takes one (as in KubeVirt)")
    return found


def read_pod_interface(name: str) -> PodInterface:
    links = netcmd.ip_json("addr", "show", "dev", netcmd.ifname(name))
    if not links:
        raise netcmd.NetError(f"the pod has no interface {name}")
    link = links[0]
    inet = [a for a in link.get("addr_info") or [] if a.get("family") == "inet" and a.get("scope") == "global"]
    if not inet:
        raise netcmd.NetError(f"pod interface {name} has no IPv4 address (was it given to a guest already?)")
    address = netcmd.ipv4_interface(f"{inet[0]['local']}/{inet[0]['prefixlen']}")
    routes = netcmd.ip_json("-4", "route", "show", "default", "dev", name)
    gateway = netcmd.ipv4(routes[0]["gateway"]) if routes and routes[0].get("gateway") else None
    return PodInterface(name, address, netcmd.mac(link.get("address")), int(link.get("mtu") or 1500), gateway)


def ensure_forwarding() -> None:
    """masquerade routes between the pod interface and the bridge: the pod's namespace must forward."""
    if netcmd.get_sysctl("net.ipv4.ip_forward") == "1":
        return
    try:
        netcmd.set_sysctl("net.ipv4.ip_forward", "1")
    except netcmd.NetError as exc:
        raise netcmd.NetError(f"{exc.message}; the masquerade binding needs IP forwarding in the pod",
                              hint="allow the sysctl net.ipv4.ip_forward=1 on the launcher pod "
                                   "(kubelet --allowed-unsafe-sysctls) or give the launcher a writable /proc/sys") \
            from exc


def bridge_name(pod_interface: str) -> str:
    return f"k6t-{pod_interface}"[:15]


class PodNetworking:
    """Wires the guest's interface and runs its DHCP server; close() stops the server."""

    def __init__(self, config: Config) -> None:
        if config.pod_interface is None:
            raise ValueError("no pod interface")
        self.config = config
        self.pod_interface = config.pod_interface
        self.servers: list[dhcp.Dnsmasq] = []

    def setup(self, spec: Mapping[str, Any], generated_mac: Callable[[str], str]) -> dict[str, Wired]:
        """Interface name -> Wired, for the spec's interface on the pod network (if it has one)."""
        wired = {}
        for request in requests(spec):
            pod = read_pod_interface(self.pod_interface)
            if request.binding == "masquerade":
                wired[request.name] = self._masquerade(request, pod, request.mac or generated_mac(request.name))
            else:
                wired[request.name] = self._bridge(request, pod, generated_mac)
        return wired

    def _lease(self, bridge: str, mac: str, address: ipaddress.IPv4Interface,
               router: ipaddress.IPv4Address | None, mtu: int, shared: bool) -> dhcp.Lease:
        try:
            dns, search = dhcp.resolv_conf(RESOLV_CONF.read_text())
        except OSError:
            dns, search = (), ()
        return dhcp.Lease(interface=bridge, mac=mac, address=address, router=router, dns=dns, search=search,
                          mtu=mtu, hostname=self.config.name, shared_network=shared)

    def _serve(self, lease: dhcp.Lease) -> None:
        server = dhcp.Dnsmasq(lease, self.config.state_dir)
        server.start()
        self.servers.append(server)

    def _masquerade(self, request: Request, pod: PodInterface, mac: str) -> Wired:
        ensure_forwarding()
        bridge, mtu = bridge_name(pod.name), str(pod.mtu)
        netcmd.ip_batch([["link", "add", bridge, "type", "bridge"],
                         ["link", "set", bridge, "mtu", mtu],
                         ["addr", "add", f"{GUEST_GATEWAY}/{GUEST_NETWORK.prefixlen}", "dev", bridge],
                         ["tuntap", "add", "dev", TAP, "mode", "tap"],
                         ["link", "set", TAP, "mtu", mtu, "master", bridge, "up"],
                         ["link", "set", bridge, "up"]], what="create the masquerade bridge and tap")
        netcmd.nft(nat.masquerade_ruleset(pod_interface=pod.name, pod_ip=pod.address.ip, bridge=bridge,
                                          guest_ip=GUEST_IP, ports=request.ports), what="load the masquerade rules")
        guest = ipaddress.IPv4Interface(f"{GUEST_IP}/{GUEST_NETWORK.prefixlen}")
        self._serve(self._lease(bridge, mac, guest, GUEST_GATEWAY, pod.mtu, shared=False))
        log.info("event=network-wired binding=masquerade interface=%s pod_ip=%s guest_ip=%s tap=%s ports=%s",
                 request.name, pod.address.ip, GUEST_IP, TAP,
                 ",".join(f"{p.protocol}/{p.port}" for p in request.ports) if request.ports else "all")
        return Wired(request.name, "masquerade", TAP, mac, pod.address.ip, GUEST_IP, pod.name)

    def _bridge(self, request: Request, pod: PodInterface, generated_mac: Callable[[str], str]) -> Wired:
        bridge, mtu = bridge_name(pod.name), str(pod.mtu)
        mac = request.mac or pod.mac  # the guest takes the pod's MAC; the pod interface gets a new one
        new_pod_mac = generated_mac(f"{request.name}/pod-interface")
        netcmd.ip_batch([["addr", "del", str(pod.address), "dev", pod.name],
                         ["link", "set", pod.name, "down"],
                         ["link", "set", pod.name, "address", new_pod_mac],
                         ["link", "add", bridge, "type", "bridge"],
                         ["link", "set", bridge, "address", generated_mac(f"{request.name}/bridge"), "mtu", mtu],
                         ["addr", "add", BRIDGE_ADDRESS, "dev", bridge],
                         ["link", "set", pod.name, "master", bridge, "up"],
                         # A hairpin-mode node bridge (the CNI bridge plugin's) reflects the guest's own
                         # broadcasts back in through the pod interface; learned there, the guest's MAC
                         # would pull every frame for the guest away from the tap (KubeVirt turns it off too).
                         ["link", "set", "dev", pod.name, "type", "bridge_slave", "learning", "off"],
                         ["tuntap", "add", "dev", TAP, "mode", "tap"],
                         ["link", "set", TAP, "mtu", mtu, "master", bridge, "up"],
                         ["link", "set", bridge, "up"]], what="move the pod interface onto the guest's bridge")
        netcmd.nft(nat.bridge_ruleset(pod_interface=pod.name), what="load the bridge rules")
        self._serve(self._lease(bridge, mac, pod.address, pod.gateway, pod.mtu, shared=True))
        log.info("event=network-wired binding=bridge interface=%s pod_ip=%s mac=%s tap=%s", request.name,
                 pod.address, mac, TAP)
        return Wired(request.name, "bridge", TAP, mac, pod.address.ip, pod.address.ip, pod.name)

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers.clear()
