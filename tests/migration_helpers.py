"""Watch a guest through a live migration: a counter on its serial console, read from both launchers' logs.

The guest prints `TICK <n> <uptime>` every 100 ms. A thread tails the console logs of every launcher pod
of the VMI (source and target, on this machine's view of each node's kubelet dir) and stamps each new line
with the host's monotonic clock when it first appears. The guest's own clock stops while it is paused for
the last copy, so only the host sees the downtime: the longest gap between two consecutive ticks. Shared by
tests/test_migration.py and bench/migration.py.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvtool import consoles, paths
from tests.guest_helpers import KVTOOL_CLI

OOPS_MARKS = ("BUG:", "Oops", "Kernel panic", "corruption", "WARNING:", "general protection")
TICK = re.compile(rb"TICK (\d+) (\d+\.\d+)")
def disk_counter_user_data(writes: dict[str, str]) -> str:
    """The counter, after writing a line to each disk (`/dev/vdb`: text) past the guest's page cache, and a
    `DISK-READ <n> <what each disk starts with>` line every tenth tick, read back the same way."""
    lines = ["#!/bin/sh"]
    reads = []
    for dev, text in writes.items():
        lines.append(f"echo '{text}' | dd of={dev} bs=4096 conv=sync,fsync oflag=direct 2>/dev/null")
        reads.append(f"$(dd if={dev} bs=4096 count=1 iflag=direct 2>/dev/null | head -c 40)")
    lines += ["i=0", "while true; do echo \"TICK $i $(cut -d' ' -f1 /proc/uptime)\"",
              f"  [ $((i % 10)) -eq 0 ] && echo \"DISK-READ $i {' '.join(reads)}\"",
              "  i=$((i+1)); usleep 100000; done"]
    return "\n".join(lines) + "\n"


COUNTER_USER_DATA = ("#!/bin/sh\n"
                     "i=0\n"
                     "while true; do echo \"TICK $i $(cut -d' ' -f1 /proc/uptime)\"; i=$((i+1)); usleep 100000; done\n")


@dataclass
class Tick:
    n: int
    uptime: float
    seen: float  # host monotonic time the line appeared
    pod: str


@dataclass
class CounterWatch:
    """Tails the console logs of a VMI's launcher pods; call `add_pods` as pods appear."""

    home: Path
    period: float = 0.005
    ticks: list[Tick] = field(default_factory=list)
    _files: dict[str, tuple[Path, int]] = field(default_factory=dict)  # pod uid -> (log, offset)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_pods(self, active_pods: dict[str, str]) -> None:
        for uid, node in active_pods.items():
            with self._lock:
                if uid not in self._files:
                    path = consoles.node_path(node, uid, Path(consoles.PRIVATE) / "console.log", self.home)
                    self._files[uid] = (path, 0)

    def add_file(self, key: str, path: Path) -> None:
        """A console log by its path (launchers run outside a cluster: the plain-libvirt floor)."""
        with self._lock:
            self._files.setdefault(key, (path, 0))

    def start(self) -> CounterWatch:
        self._thread = threading.Thread(target=self._run, daemon=True, name="counter-watch")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        partial: dict[str, bytes] = {}
        while not self._stop.wait(self.period):
            with self._lock:
                files = dict(self._files)
            for uid, (path, offset) in files.items():
                try:
                    with path.open("rb") as f:
                        f.seek(offset)
                        data = f.read()
                except OSError:
                    continue
                if not data:
                    continue
                now = time.monotonic()
                with self._lock:
                    self._files[uid] = (path, offset + len(data))
                text = partial.pop(uid, b"") + data
                lines = text.split(b"\n")
                partial[uid] = lines.pop()
                for line in lines:
                    if m := TICK.search(line):
                        self.ticks.append(Tick(int(m.group(1)), float(m.group(2)), now, uid))

    def last(self) -> Tick | None:
        return self.ticks[-1] if self.ticks else None

    def wait_ticks(self, pod: str | None = None, after: int = -1, timeout: float = 60) -> Tick:
        """The first tick with n > after (from `pod`, if given), waiting for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for tick in list(self.ticks):
                if tick.n > after and (pod is None or tick.pod == pod):
                    return tick
            time.sleep(0.02)
        raise AssertionError(f"no TICK > {after}{' from pod ' + pod if pod else ''} within {timeout} s; "
                             f"last: {self.last()}")

    def report(self, since: float, until: float) -> dict[str, Any]:
        """Over ticks first seen in [since, until]: the longest host-time gap between consecutive counter values,
        whether the counter ever went back (a reboot) or skipped, and the guest uptime across."""
        window = sorted((t for t in self.ticks if since <= t.seen <= until), key=lambda t: t.n)
        unique: dict[int, Tick] = {}
        for t in window:
            unique.setdefault(t.n, t)
        ordered = [unique[n] for n in sorted(unique)]
        gaps = [(b.seen - a.seen, a, b) for a, b in itertools.pairwise(ordered)]
        longest = max(gaps, default=(0.0, None, None), key=lambda g: g[0])
        resets = [(a.n, b.n) for a, b in itertools.pairwise(ordered) if b.uptime < a.uptime]
        skipped = [(a.n, b.n) for a, b in itertools.pairwise(ordered) if b.n != a.n + 1]
        return {"ticks": len(ordered), "longest_gap_s": longest[0],
                "gap_between": (longest[1].n, longest[2].n) if longest[1] else None,
                # the guest's own clock across that gap, and the usual host-time gap: what is left is the pause
                "gap_guest_s": longest[2].uptime - longest[1].uptime if longest[1] else None,
                "median_gap_s": statistics.median(g[0] for g in gaps) if gaps else None,
                "uptime_resets": resets, "skipped": skipped,
                "pods": sorted({t.pod for t in ordered})}


def active_pods(vmi: dict[str, Any]) -> dict[str, str]:
    return dict((vmi.get("status") or {}).get("activePods") or {})


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:4000]


def guest_diagnostics(home: Path, vmi: dict[str, Any], domain: str) -> str:
    """What QEMU says about a guest that stopped counting, from each of the VMI's launchers' libvirtd: its state,
    where its CPU is, its local APIC and the tail of its console log. For a failed wait's message."""
    out = [f"VMI status: {dumps((vmi or {}).get('status'))}"]
    for uid, node in active_pods(vmi or {}).items():
        sock = paths.node_sockets_dir(node, home) / f"{uid}.libvirt" / "libvirt-sock"
        uri = f"qemu+unix:///system?socket={sock}"
        for argv in (["domstate", "--reason", domain], ["domjobinfo", domain],
                     *(["qemu-monitor-command", "--hmp", domain, cmd]
                       for cmd in ("info status", "info registers", "info lapic", "info irq"))):
            try:
                done = subprocess.run(["virsh", "-c", uri, *argv], capture_output=True, text=True, timeout=20)
                text = (done.stdout + done.stderr).strip()
            except subprocess.TimeoutExpired:
                text = "(timed out)"
            out.append(f"--- pod {uid} on {node}: virsh {' '.join(argv[:2])} {argv[-1]}\n{text[:1500]}")
        log = consoles.node_path(node, uid, Path(consoles.PRIVATE) / "console.log", home)
        try:
            out.append(f"--- pod {uid} console:\n{console_excerpt(log.read_bytes())}")
        except OSError as exc:
            out.append(f"--- pod {uid} console: {exc}")
    out.append(_kick_console(home, vmi or {}))
    return "\n".join(out)


def console_excerpt(log: bytes) -> str:
    """A console log's tail, and from the guest kernel's first report of trouble on when there is one (a crashed
    guest's oops begins with what it found wrong, which the tail alone cuts off)."""
    text = log.decode(errors="replace")
    marks = [i for m in OOPS_MARKS if (i := text.find(m)) >= 0]
    if not marks:
        return text[-600:]
    start = max(0, text.rfind("\n", 0, min(marks)))
    return text[start:start + 3000] + ("\n[...]\n" + text[-600:] if len(text) - start > 3000 else "")


def _kick_console(home: Path, vmi: dict[str, Any]) -> str:
    """Type a newline on the serial console and show what comes back in 3 s. A guest whose UART lost its
    transmit interrupt (its tty waits for THRE forever) prints again once a received byte runs the driver's
    interrupt handler; a hung guest does not."""
    meta = vmi.get("metadata") or {}
    argv = [*KVTOOL_CLI, "console", "-n", meta.get("namespace", "default"), meta.get("name", "")]
    env = {**os.environ, "KUBECONFIG": str(home / "kubeconfig"), "KVTOOL_HOME": str(home)}
    try:
        done = subprocess.run(argv, input=b"\n", capture_output=True, timeout=3, env=env)
        got, err = done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        got, err = exc.stdout or b"", exc.stderr or b""
    return (f"--- after typing a newline on the console, 3 s of it:\n{got[-800:].decode(errors='replace')}"
            f"\n(stderr: {err[-300:].decode(errors='replace')})")
