"""The bindings' nftables rulesets, as text (pure, so they are unit-tested as text).

masquerade, KubeVirt's design: inbound traffic to the pod IP (on the VM's ports, or all ports when
the interface lists none) is DNATed to the guest's private address; the guest's outbound traffic
leaves SNATed to the pod IP. bridge: the pod interface and the guest's tap share a bridge, and DHCP
must not cross it (the pod's dnsmasq answers its own guest only, the guest hears no other pod's).
Each is one table (`ip kvtool`, `bridge kvtool`), replaced as a whole on every load, in the pod's own
network namespace, so it goes away with the pod.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from kvtool.podnet.netcmd import NetError, ifname

TABLE = "kvtool"
PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True, order=True)
class Port:
    protocol: str  # tcp | udp
    port: int

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise NetError(f"port protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            raise NetError(f"port {self.port!r} is not between 1 and 65535")


def ports_from_spec(entries: list[dict[str, object]] | None) -> list[Port] | None:
    """spec interfaces[].ports -> Ports; None when the interface lists none (forward everything)."""
    if not entries:
        return None
    return sorted({Port(str(e.get("protocol") or "TCP").lower(), e.get("port")) for e in entries})  # type: ignore[arg-type]


def masquerade_ruleset(*, pod_interface: str, pod_ip: ipaddress.IPv4Address, bridge: str,
                       guest_ip: ipaddress.IPv4Address, ports: list[Port] | None) -> str:
    """The whole `ip kvtool` table; loading it replaces any earlier version."""
    pod_if, bridge_if = ifname(pod_interface), ifname(bridge)
    pod, guest = ipaddress.IPv4Address(pod_ip), ipaddress.IPv4Address(guest_ip)
    match = f'iifname "{pod_if}" ip daddr {pod}'
    inbound = []
    if ports is None:
        inbound.append(f"{match} counter dnat to {guest}")
    else:
        for protocol in PROTOCOLS:
            numbers = sorted({p.port for p in ports if p.protocol == protocol})
            if numbers:
                inbound.append(f"{match} {protocol} dport {{ {', '.join(map(str, numbers))} }} counter dnat to {guest}")
    lines = [
        f"add table ip {TABLE}",
        f"delete table ip {TABLE}",  # with the line above: replace, whether or not it existed
        f"table ip {TABLE} {{",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        *(f"\t\t{rule}" for rule in inbound),
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        f'\t\tip saddr {guest} oifname "{pod_if}" counter snat to {pod}',
        "\t}",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        # Only the guest's own address may leave through the bridge (no spoofing from inside the VM).
        f'\t\tiifname "{bridge_if}" ip saddr != {guest} counter drop',
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def bridge_ruleset(*, pod_interface: str) -> str:
    """The `bridge kvtool` table: DHCP stays on the guest's side of the pod interface."""
    pod_if = ifname(pod_interface)
    lines = [
        f"add table bridge {TABLE}",
        f"delete table bridge {TABLE}",
        f"table bridge {TABLE} {{",
        "\tchain forward {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        f'\t\tiifname "{pod_if}" udp dport {{ 67, 68 }} counter drop',
        f'\t\toifname "{pod_if}" udp dport {{ 67, 68 }} counter drop',
        "\t}",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        f'\t\tiifname "{pod_if}" udp dport 67 counter drop',
        "\t}",
        "\tchain output {",
        "\t\ttype filter hook output priority filter; policy accept;",
        f'\t\toifname "{pod_if}" udp sport 67 counter drop',
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"
