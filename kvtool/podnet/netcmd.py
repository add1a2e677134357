"""Validated `ip`, `nft` and sysctl calls, and running code inside a network namespace.

Every value that reaches a command line is checked here first (interface and namespace names,
addresses, MACs), and commands are argv lists, never a shell. `ip -batch` input is built from
the same checked tokens, one command per line, so no value can start a second command.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from kvtool.errors import KvtoolError

IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")  # IFNAMSIZ is 16 with the NUL
NETNS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
TOKEN = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")  # what an `ip -batch` word may be
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
SBIN = "/usr/sbin:/sbin:/usr/bin:/bin"
TIMEOUT = 30.0

T = TypeVar("T")


class NetError(KvtoolError):
    """A network command failed, or a value was not fit for one."""


def ifname(value: Any) -> str:
    if not isinstance(value, str) or not IFNAME.fullmatch(value) or value in (".", ".."):
        raise NetError(f"{value!r} is not a usable interface name (1-15 of A-Z a-z 0-9 _ . -)")
    return value


def netns_name(value: Any) -> str:
    if not isinstance(value, str) or not NETNS.fullmatch(value):
        raise NetError(f"{value!r} is not a usable network namespace name")
    return value


def ipv4(value: Any) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        raise NetError(f"{value!r} is not an IPv4 address") from None


def ipv4_interface(value: Any) -> ipaddress.IPv4Interface:
    """ADDRESS/PREFIX, e.g. 10.244.1.5/24."""
    try:
        return ipaddress.IPv4Interface(value)
    except (ValueError, TypeError):
        raise NetError(f"{value!r} is not an IPv4 address with a prefix length") from None


def mac(value: Any) -> str:
    text = value.lower() if isinstance(value, str) else ""
    if not MAC.fullmatch(text) or int(text[:2], 16) & 1:
        raise NetError(f"{value!r} is not a unicast MAC address")
    return text


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=SBIN)
    if not found:
        package = {"ip": "iproute2", "nft": "nftables", "dnsmasq": "dnsmasq-base"}.get(name, name)
        raise NetError(f"{name} is not installed", hint=f"apt-get install {package} (setup/apt-packages.txt)")
    return found


def run(argv: Sequence[str], *, input: str | None = None, what: str = "") -> str:
    """Run argv (its first word looked up on PATH and in sbin); stdout, or NetError with stderr."""
    full = [tool(argv[0]), *argv[1:]]
    try:
        proc = subprocess.run(full, input=input, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NetError(f"{what or argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().replace("\n", " | ")
        raise NetError(f"{what or ' '.join(argv[:4])} failed: {detail or f'exit code {proc.returncode}'}")
    return proc.stdout


def ip(*args: str, netns: str | None = None, what: str = "") -> str:
    prefix = ["-n", netns_name(netns)] if netns else []
    return run(["ip", *prefix, *args], what=what or f"ip {' '.join(args[:3])}")


def ip_json(*args: str, netns: str | None = None) -> list[dict[str, Any]]:
    out = ip("-j", *args, netns=netns)
    return json.loads(out) if out.strip() else []


def ip_batch(commands: Sequence[Sequence[str]], *, netns: str | None = None, what: str = "") -> None:
    """Several ip commands in one process; it stops at the first that fails, naming it."""
    lines = []
    for words in commands:
        for word in words:
            if not TOKEN.fullmatch(word):
                raise NetError(f"refusing ip argument {word!r}")
        lines.append(" ".join(words))
    if not lines:
        return
    prefix = ["-n", netns_name(netns)] if netns else []
    run(["ip", *prefix, "-batch", "-"], input="\n".join(lines) + "\n", what=what or "ip -batch")


def nft(script: str, *, what: str = "nft -f -") -> None:
    """Load an nftables script in this process's network namespace."""
    run(["nft", "-f", "-"], input=script, what=what)


def link_exists(name: str, netns: str | None = None) -> bool:
    try:
        ip("link", "show", "dev", ifname(name), netns=netns)
    except NetError:
        return False
    return True


# ---- network namespaces ------------------------------------------------------------------------

def netns_path(name: str) -> Path:
    return NETNS_DIR / netns_name(name)


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def list_netns(prefix: str) -> list[str]:
    """Named namespaces (ip netns) whose name starts with prefix."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
    except FileNotFoundError:
        return []


def add_netns(name: str) -> bool:
    """Create a named namespace; False if it existed already (another agent may have raced us)."""
    try:
        ip("netns", "add", netns_name(name))
    except NetError:
        if netns_exists(name):
            return False
        raise
    return True


def delete_netns(name: str) -> bool:
    """Remove a named namespace; False if there was none."""
    if not netns_exists(name):
        return False
    try:
        ip("netns", "delete", netns_name(name))
    except NetError:
        if netns_exists(name):
            raise
    return True


def _setns(fd: int) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def in_netns(path: Path, fn: Callable[[], T]) -> T:
    """fn() on a fresh thread that joined the namespace at path (a setns is per thread, so the
    caller's other threads stay where they are; sockets fn creates keep the namespace it ran in)."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=body, name=f"netns-{path.name}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def set_sysctl(key: str, value: str, netns: str | None = None) -> None:
    """Write a net.* sysctl, in this thread's namespace or in a named one."""
    if not re.fullmatch(r"net\.[a-z0-9_.-]+", key) or not re.fullmatch(r"[0-9]{1,5}", value):
        raise NetError(f"refusing sysctl {key}={value}")
    path = Path("/proc/sys") / key.replace(".", "/")

    def write() -> None:
        path.write_text(value)

    try:
        if netns:
            in_netns(netns_path(netns), write)
        else:
            write()
    except OSError as exc:
        raise NetError(f"cannot set {key}={value}: {exc.strerror or exc}") from exc


def get_sysctl(key: str) -> str:
    return (Path("/proc/sys") / key.replace(".", "/")).read_text().strip()
