"""The guest's DHCP server: Debian's dnsmasq, one per pod, serving one static lease on one interface.

dnsmasq runs with DNS off (--port=0), no config file, no lease file, bound to the bridge behind
the guest's tap only, and answers only the guest's MAC (static lease, infinite lease time, so a
guest never needs to renew). For the bridge binding the bridge has no address in the pod's
subnet (the pod IP moved to the guest), so `--shared-network` tells dnsmasq which subnet the
lease is in; the bridge's link-local address is then the DHCP server identifier.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from kvtool.podnet import netcmd

log = logging.getLogger("kvtool.podnet.dhcp")

DNS_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                      r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?")
HOSTNAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Lease:
    """What the guest is told; every field is checked before it reaches dnsmasq's command line."""

    interface: str  # where dnsmasq listens: the bridge behind the guest's tap
    mac: str
    address: ipaddress.IPv4Interface  # the guest's address and prefix
    router: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    search: tuple[str, ...] = ()
    mtu: int | None = None
    hostname: str | None = None
    shared_network: bool = False  # the interface has no address in the lease's subnet (bridge binding)
    extra_routes: tuple[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address], ...] = field(default=())

    def __post_init__(self) -> None:
        netcmd.ifname(self.interface)
        netcmd.mac(self.mac)
        for name in self.search:
            if not DNS_NAME.fullmatch(name):
                raise netcmd.NetError(f"search domain {name!r} is not a DNS name")
        if self.hostname is not None and not HOSTNAME.fullmatch(self.hostname):
            raise netcmd.NetError(f"hostname {self.hostname!r} is not a DNS label")
        if self.mtu is not None and not 576 <= self.mtu <= 65535:
            raise netcmd.NetError(f"MTU {self.mtu} is out of range")


def options(lease: Lease) -> list[str]:
    """dnsmasq's arguments after the binary (pure)."""
    ip = lease.address.ip
    args = [
        "--keep-in-foreground", "--conf-file=/dev/null", "--port=0", "--no-resolv", "--no-hosts",
        "--leasefile-ro", "--dhcp-authoritative", "--log-facility=-", "--user=root",
        f"--interface={lease.interface}", "--except-interface=lo", "--bind-interfaces",
        f"--dhcp-range={ip},static,{lease.address.netmask},infinite",
        f"--dhcp-host={lease.mac},{ip}" + (f",{lease.hostname}" if lease.hostname else ""),
    ]
    if lease.shared_network:
        args.append(f"--shared-network={lease.interface},{ip}")
    if lease.router is not None:
        if lease.router in lease.address.network:
            args.append(f"--dhcp-option=option:router,{lease.router}")
        else:
            # A gateway outside the subnet (Calico's 169.254.1.1): say how to reach it (RFC 3442; a client
            # that understands option 121 ignores option 3).
            routes = [f"{lease.router}/32,0.0.0.0", f"0.0.0.0/0,{lease.router}"]
            routes += [f"{net},{via}" for net, via in lease.extra_routes]
            args.append(f"--dhcp-option=option:classless-static-route,{','.join(routes)}")
            args.append(f"--dhcp-option=option:router,{lease.router}")
    if lease.dns:
        args.append(f"--dhcp-option=option:dns-server,{','.join(map(str, lease.dns))}")
    if lease.search:
        args.append(f"--dhcp-option=option:domain-search,{','.join(lease.search)}")
    if lease.mtu is not None:
        args.append(f"--dhcp-option=option:mtu,{lease.mtu}")
    return args


def resolv_conf(text: str) -> tuple[tuple[ipaddress.IPv4Address, ...], tuple[str, ...]]:
    """Nameservers and search domains a guest can use, from the pod's resolv.conf.

    Loopback servers (a local stub resolver) are dropped: they would be the guest's own loopback.
    """
    servers: list[ipaddress.IPv4Address] = []
    search: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                address = ipaddress.IPv4Address(words[1])
            except ValueError:
                continue
            if not address.is_loopback and address not in servers:
                servers.append(address)
        elif words and words[0] in ("search", "domain"):
            search = [w.rstrip(".") for w in words[1:] if DNS_NAME.fullmatch(w)]
    return tuple(servers[:3]), tuple(search[:6])


class Dnsmasq:
    """One dnsmasq process for one lease; its log and pid file are in the pod's state dir (so its
    command line names the pod, like the launcher's other processes)."""

    def __init__(self, lease: Lease, state_dir: Path) -> None:
        self.lease = lease
        self.log_file = state_dir / "dnsmasq.log"
        self.pid_file = state_dir / "dnsmasq.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [netcmd.tool("dnsmasq"), *options(self.lease), f"--pid-file={self.pid_file}"]
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd="/", start_new_session=True)
        log.info("event=dhcp-started pid=%d interface=%s mac=%s address=%s", self.proc.pid, self.lease.interface,
                 self.lease.mac, self.lease.address)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
