"""Chaos on the embedded cluster: faults hit every component, one at a time, while VMs with runStrategy
Always must keep coming back. Shared by `bench/chaos.py` (8 VMs, minutes) and `tests/test_chaos.py` (a short
run in `make test`).

Faults, drawn at random: the leading controller pod deleted, a handler pod deleted, a launcher
process or a QEMU SIGKILLed, the apiserver, etcd or a node's containerd restarted. After each fault
the run waits until every VM is Running and ready again (its recovery time). Invariants, sampled
every 0.2 s throughout: never two QEMUs of one VM at once; at the end no QEMU without its VM, no
libvirtd without its launcher pod, no pod directory without its pod.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvtool.api.types import POD, VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE, Kind
from kvtool.kube.resources import Resources
from kvtool.local import cluster
from kvtool.local.layout import Layout
from tests.processes import comm, processes_mentioning, qemu_for

LEASE = Kind("coordination.k8s.io/v1", "Lease", "leases")
NODES = ("kvtool-node-1", "kvtool-node-2")
KINDS = ("controller", "handler", "launcher", "qemu", "apiserver", "etcd", "runtime")


class Watch(threading.Thread):
    """Samples the VMs' QEMUs; counts moments with two QEMUs of one VM alive."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(daemon=True)
        self.names = names
        self.duplicates: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for name in self.names:
                if len(qemu_for(f"default_{name}")) > 1:
                    self.duplicates.append(f"{time.strftime('%H:%M:%S')} {name}")


def all_running(res: Resources, names: Sequence[str]) -> bool:
    for name in names:
        vm = res.get(VIRTUAL_MACHINE, "default", name) or {}
        status = vm.get("status") or {}
        if status.get("printableStatus") != "Running" or not status.get("ready"):
            return False
    return all(len(qemu_for(f"default_{n}")) == 1 for n in names)


def launcher_pids(res: Resources, name: str) -> list[int]:
    """The launcher process of a VM's pod: in the pod's cgroup (pod<uid>), running `kvtool launcher`."""
    vmi = res.get(VIRTUAL_MACHINE_INSTANCE, "default", name) or {}
    out = []
    for uid in ((vmi.get("status") or {}).get("activePods") or {}):
        for pid in processes_mentioning("launcher"):
            try:
                if f"/pod{uid}/" in Path(f"/proc/{pid}/cgroup").read_text() and comm(pid) not in ("libvirtd", "nsinit"):
                    out.append(pid)
            except OSError:
                continue
    return sorted(out)


def inject(kind: str, res: Resources, layout: Layout, names: Sequence[str],
           rng: random.Random) -> tuple[str, tuple[str, set[int]] | None]:
    """Inject one fault: what was done, and (VM name, its QEMU pids) when that VM's domain must come back anew."""
    if kind == "controller":
        leader = ((res.get(LEASE, "kvtool-system", "kvtool-controller") or {}).get("spec") or {}).get("holderIdentity")
        if not leader or not res.delete(POD, "kvtool-system", leader, grace_period=0):
            raise RuntimeError(f"the Lease names {leader}, whose pod is gone: no leader yet")
        return f"deleted the leading controller pod {leader}", None
    if kind == "handler":
        pods, _ = res.list(POD, "kvtool-system", label_selector="app.kubernetes.io/name=kvtool-handler")
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        if not live:
            raise RuntimeError("every handler pod is terminating")
        pod = rng.choice(live)["metadata"]["name"]
        res.delete(POD, "kvtool-system", pod)
        return f"deleted handler pod {pod}", None
    if kind in ("launcher", "qemu"):
        name = rng.choice(list(names))
        before = qemu_for(f"default_{name}")
        pids = before if kind == "qemu" else launcher_pids(res, name)
        for pid in pids[:1]:
            os.kill(pid, signal.SIGKILL)
        return f"SIGKILLed the {kind} of {name} ({pids[:1]})", (name, set(before)) if pids else None
    component = {"apiserver": "apiserver", "etcd": "etcd", "runtime": f"containerd-{rng.choice(NODES)}"}[kind]
    cluster.control(layout.home, "restart", component)
    return f"restarted {component}", None


def orphans(res: Resources, layout: Layout) -> list[str]:
    """What outlived its owner: QEMU without its VM, libvirtd without its pod, pod dirs without pods."""
    found = []
    vms = {v["metadata"]["name"] for v in res.list(VIRTUAL_MACHINE, "default")[0]}
    for pid in processes_mentioning("qemu-system"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "guest=default_" in cmd and cmd.split("guest=default_")[1].split(",")[0] not in vms:
            found.append(f"QEMU {pid} of a VM that is gone")
    pods = {p["metadata"]["uid"]: p for p in res.list(POD, None)[0]}
    libvirtds = [p for p in processes_mentioning("libvirtd") if comm(p) == "libvirtd"]
    launchers = [p for p in pods.values() if (p["metadata"].get("labels") or {}).get("kvtool.io") == "virt-launcher"]
    if len(libvirtds) > len(launchers):
        found.append(f"{len(libvirtds)} libvirtd processes for {len(launchers)} launcher pods")
    for node in NODES:
        for pod_dir in (layout.node_dir(node) / "kubelet" / "pods").glob("*"):
            if pod_dir.name not in pods:
                found.append(f"pod dir {pod_dir} without its pod")
    return found


@dataclass
class Report:
    recoveries: dict[str, list[float]] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    not_injected: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [t for ts in self.recoveries.values() for t in ts]

    @property
    def injected(self) -> int:
        return len(self.times) + len(self.lost)

    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.left)

    def summary(self, recovery_timeout: float) -> str:
        times = self.times
        lines = [f"faults injected {self.injected}, recovered {len(times)}, not recovered within "
                 f"{recovery_timeout:.0f} s: {len(self.lost)} {self.lost}"]
        if times:
            lines.append(f"recovery (fault -> every VM Running and ready): p50 {statistics.median(times):.1f} s, "
                         f"p95 {percentile(times, 0.95):.1f} s, max {max(times):.1f} s")
        for kind, ts in self.recoveries.items():
            if ts:
                lines.append(f"  {kind:<10} {len(ts):>3} faults, p50 {statistics.median(ts):5.1f} s, "
                             f"max {max(ts):5.1f} s")
        lines.append(f"moments with two QEMUs of one VM: {len(self.duplicates)} {self.duplicates[:5]}")
        lines.append(f"left behind after the VMs were deleted: {len(self.left)} {self.left[:5]}")
        return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_until(check: Callable[[], bool], timeout: float, period: float = 0.5) -> bool:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            return False
        time.sleep(period)
    return True


def run(res: Resources, layout: Layout, names: Sequence[str], duration: float, seed: int,
        kinds: Sequence[str] = KINDS, recovery_timeout: float = 300, faults: Sequence[str] | None = None,
        say: Callable[[str], None] = print) -> Report:
    """Faults on running VMs `names` — drawn from `kinds` for `duration` seconds, or exactly `faults` in that
    order — then delete the VMs and look for leftovers."""
    rng = random.Random(seed)
    report = Report(recoveries={k: [] for k in (faults or kinds)})
    watch = Watch(names)
    watch.start()
    end = time.time() + duration
    planned = list(faults) if faults is not None else None
    try:
        while (planned is None and time.time() < end) or planned:
            kind = planned.pop(0) if planned else rng.choice(list(kinds))
            started = time.time()
            try:
                what, renewed = inject(kind, res, layout, names, rng)
            except Exception as exc:  # the cluster was mid-recovery from the last fault: say so, go on
                report.not_injected.append(f"{kind}: {exc}")
                say(f"  fault {kind} not injected: {exc}")
                continue

            def recovered(renewed: Any = renewed) -> bool:
                if renewed is not None:  # the killed VM runs again: a new QEMU, the old one gone
                    now = set(qemu_for(f"default_{renewed[0]}"))
                    if not now or now & renewed[1]:
                        return False
                try:
                    return all_running(res, names)
                except Exception:  # the apiserver is restarting
                    return False

            if wait_until(recovered, recovery_timeout, period=0.2):
                report.recoveries[kind].append(time.time() - started)
                say(f"  {time.strftime('%H:%M:%S')} {what}: all VMs Running again in {time.time() - started:.1f} s")
            else:
                report.lost.append(f"{kind}: {what}")
    finally:
        watch.stop.set()
        watch.join()
        report.duplicates = list(watch.duplicates)
        for name in names:
            res.delete(VIRTUAL_MACHINE, "default", name)
    wait_until(lambda: not any(res.get(VIRTUAL_MACHINE_INSTANCE, "default", n) for n in names), 180)

    def nothing_left() -> bool:
        report.left = orphans(res, layout)
        return not report.left

    wait_until(nothing_left, 60, period=1)
    return report
