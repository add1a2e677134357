"""IP address management for one node's pod CIDR, like CNI's host-local plugin.

The first host address is the node bridge's (the pods' gateway); pods get the others, handed
out round-robin from the last one reserved, so a just-freed address is not reused at once (a
peer's ARP cache or conntrack entry may still point at the old pod). Reservations are files
`<dir>/<cidr>/<ip>` holding the pod uid, created with O_EXCL: they survive agent restarts, and
`collect()` frees those whose pod is gone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path

from kvtool.podnet.netcmd import NetError

UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
LAST = "last_reserved_ip"


class Exhausted(NetError):
    """Every address of the pod CIDR is taken."""


def parse_cidr(text: str) -> ipaddress.IPv4Network:
    """A node's podCIDR: IPv4, room for a gateway and at least one pod."""
    try:
        network = ipaddress.IPv4Network(text, strict=True)
    except (ValueError, TypeError):
        raise NetError(f"podCIDR {text!r} is not an IPv4 network") from None
    if network.prefixlen > 30:
        raise NetError(f"podCIDR {text} is too small for a gateway and a pod")
    return network


def gateway(network: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return network.network_address + 1


def allocate(network: ipaddress.IPv4Network, used: Iterable[ipaddress.IPv4Address],
             last: ipaddress.IPv4Address | None = None) -> ipaddress.IPv4Address:
    """The next free pod address after `last` (wrapping around); Exhausted if there is none."""
    first = int(gateway(network)) + 1
    end = int(network.broadcast_address)  # exclusive
    size = end - first
    taken = {int(a) for a in used}
    start = int(last) + 1 if last is not None and first <= int(last) < end else first
    for step in range(size):
        candidate = first + (start - first + step) % size
        if candidate not in taken:
            return ipaddress.IPv4Address(candidate)
    raise Exhausted(f"no free pod address left in {network} ({size} in use)")


class Store:
    """Reservations of one pod CIDR on disk. One writer: the node agent's worker thread."""

    def __init__(self, root: Path, network: ipaddress.IPv4Network) -> None:
        self.network = network
        self.dir = root / str(network).replace("/", "_")

    def owners(self) -> dict[ipaddress.IPv4Address, str]:
        """Reserved address -> pod uid."""
        found = {}
        for entry in self.dir.glob("*.*.*.*") if self.dir.is_dir() else []:
            try:
                found[ipaddress.IPv4Address(entry.name)] = entry.read_text().strip()
            except (ValueError, OSError):
                continue
        return found

    def lookup(self, uid: str) -> ipaddress.IPv4Address | None:
        return next((ip for ip, owner in self.owners().items() if owner == uid), None)

    def reserve(self, uid: str) -> ipaddress.IPv4Address:
        """The pod's address: the one it has, or a new one."""
        if not UID.fullmatch(uid):
            raise NetError(f"{uid!r} is not a pod uid")
        existing = self.lookup(uid)
        if existing is not None:
            return existing
        self.dir.mkdir(parents=True, exist_ok=True)
        last = None
        with contextlib.suppress(OSError, ValueError):
            last = ipaddress.IPv4Address((self.dir / LAST).read_text().strip())
        while True:
            address = allocate(self.network, self.owners(), last)
            try:
                fd = os.open(self.dir / str(address), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:  # a file the listing missed (half-written): skip past it
                last = address
                continue
            with os.fdopen(fd, "w") as f:
                f.write(uid)
            (self.dir / LAST).write_text(str(address))
            return address

    def release(self, uid: str) -> list[ipaddress.IPv4Address]:
        freed = [ip for ip, owner in self.owners().items() if owner == uid]
        for address in freed:
            (self.dir / str(address)).unlink(missing_ok=True)
        return freed

    def collect(self, live: set[str]) -> list[tuple[ipaddress.IPv4Address, str]]:
        """Free the reservations of pods not in `live`; what was freed."""
        stale = [(ip, owner) for ip, owner in self.owners().items() if owner not in live]
        for address, _ in stale:
            (self.dir / str(address)).unlink(missing_ok=True)
        return stale
