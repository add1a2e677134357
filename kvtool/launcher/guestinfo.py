"""What the guest says about itself on its serial console: readiness, its IP address, and its kernel's
reports of trouble (an oops, a panic, a soft lockup: a guest that may be hung says so only there).

There is no guest agent in the tiny guest; its /init prints marker lines
(kvtool.images.guest_scripts) that QEMU appends to the console log. A thread
tails that file and reports each marker once per occurrence. Only the marker
lines are parsed, and only their fixed fields are kept: the console also
carries whatever a user typed, which is never logged.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvtool.images import guest_scripts

log = logging.getLogger("kvtool.launcher.guestinfo")

POLL_INTERVAL = 0.05
IDLE_INTERVAL = 0.5
MAX_LINE = 4096  # longer "lines" (binary noise, a pasted blob) are skipped, not buffered without end

_READY = re.compile(re.escape(guest_scripts.MARKER_READY) + r" hostname=([A-Za-z0-9.-]{1,253})")
_IP = re.compile(re.escape(guest_scripts.MARKER_IP)
                 + r" ([A-Za-z0-9_.-]{1,15}) ([0-9.]{7,15})/([0-9]{1,2})(?: gw=([0-9.]{7,15}|none))?")


# A kernel message line ("[   43.35] ...") that says the kernel is in trouble; the message is kept, cut short.
_KERNEL_TROUBLE = re.compile(r"^\[ *[0-9]+\.[0-9]+\] ((?:Kernel panic - not syncing|BUG|kernel BUG at|watchdog: BUG|"
                             r"Oops|general protection fault|list_(?:add|del) corruption)\b[ -~]*)")
KERNEL_MESSAGE_CHARS = 200


@dataclass(frozen=True)
class GuestIP:
    interface: str  # the guest's name for it (eth0)
    address: str
    prefix: int
    gateway: str | None


def parse_line(line: str) -> tuple[str, object] | None:
    """("ready", hostname) | ("ip", GuestIP) | ("kernel-error", message) | None for any other line."""
    if match := _KERNEL_TROUBLE.match(line.strip("\r")):
        return "kernel-error", match.group(1)[:KERNEL_MESSAGE_CHARS].rstrip()
    if match := _READY.search(line):
        return "ready", match.group(1)
    if match := _IP.search(line):
        try:
            address = str(ipaddress.IPv4Address(match.group(2)))
        except ValueError:
            return None
        prefix = int(match.group(3))
        if prefix > 32:
            return None
        gateway = match.group(4) if match.group(4) not in (None, "none") else None
        return "ip", GuestIP(match.group(1), address, prefix, gateway)
    return None


class ConsoleLogWatcher:
    """Tails the console log from its start; calls on_ready(hostname), on_ip(GuestIP) and
    on_kernel_error(message) per marker."""

    def __init__(self, path: Path, on_ready: Callable[[str], None], on_ip: Callable[[GuestIP], None],
                 on_kernel_error: Callable[[str], None]) -> None:
        self.path = path
        self.on_ready = on_ready
        self.on_ip = on_ip
        self.on_kernel_error = on_kernel_error
        self._stop = threading.Event()
        self._seen: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="console-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _run(self) -> None:
        file = None
        partial = b""
        try:
            while not self._stop.is_set():
                if file is None:
                    try:
                        file = self.path.open("rb")  # QEMU only appends: one handle follows it
                    except FileNotFoundError:
                        self._stop.wait(POLL_INTERVAL)
                        continue
                data = file.read(1 << 20)
                if not data:
                    # Fast while the guest boots; once it reported both markers, a slower pace is enough.
                    self._stop.wait(IDLE_INTERVAL if self._seen >= {"ready", "ip"} else POLL_INTERVAL)
                    continue
                lines = (partial + data).split(b"\n")
                partial = lines.pop()
                if len(partial) > MAX_LINE:
                    partial = b""
                for raw in lines:
                    if len(raw) <= MAX_LINE:
                        self._line(raw.decode("utf-8", "replace"))
        finally:
            if file is not None:
                file.close()

    def _line(self, line: str) -> None:
        parsed = parse_line(line)
        if parsed is None:
            return
        kind, value = parsed
        self._seen.add(kind)
        try:
            if kind == "ready":
                self.on_ready(str(value))
            elif isinstance(value, GuestIP):
                self.on_ip(value)
            elif kind == "kernel-error":
                self.on_kernel_error(str(value))
        except Exception:
            log.exception("event=guestinfo-callback-failed marker=%s", kind)
