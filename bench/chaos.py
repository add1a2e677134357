"""Chaos on the embedded cluster: 8 VMs (runStrategy Always) while faults hit every component, one at a time.

Faults, drawn at random: the leading controller pod deleted, a handler pod deleted, a launcher
process or a QEMU SIGKILLed, the apiserver, etcd or a node's containerd restarted. After each fault
the run waits until every VM is Running and ready again (its recovery time). Invariants, sampled
every 0.2 s throughout: never two QEMUs of one VM at once; at the end no QEMU without its VM, no
libvirtd without its launcher pod, no pod directory or pod network namespace without its pod.

Usage: python bench/chaos.py [--vms 8] [--duration 300] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import benchlib
from failover import qemu_pids
from vm_start import pct, vm_manifest

from kvtool.api.types import VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE, Kind
from kvtool.kube.resources import Resources
from kvtool.local import cluster
from kvtool.local.layout import Layout

POD = Kind("v1", "Pod", "pods")
LEASE = Kind("coordination.k8s.io/v1", "Lease", "leases")
NODES = ("kvtool-node-1", "kvtool-node-2")


class Watch(threading.Thread):
    """Samples the VMs' QEMUs; counts moments with two QEMUs of one VM alive."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(daemon=True)
        self.names = names
        self.duplicates: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for name in self.names:
                if len(qemu_pids(f"default_{name}")) > 1:
                    self.duplicates.append(f"{time.strftime('%H:%M:%S')} {name}")


def all_running(res: Resources, names: list[str]) -> bool:
    for name in names:
        vm = res.get(VIRTUAL_MACHINE, "default", name) or {}
        status = vm.get("status") or {}
        if status.get("printableStatus") != "Running" or not status.get("ready"):
            return False
    return all(len(qemu_pids(f"default_{n}")) == 1 for n in names)


def pids_of(text: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def launcher_pids(res: Resources, name: str) -> list[int]:
    """The launcher process of a VM's pod: in the pod's cgroup (pod<uid>), running `kvtool launcher`."""
    vmi = res.get(VIRTUAL_MACHINE_INSTANCE, "default", name) or {}
    out = []
    for uid in ((vmi.get("status") or {}).get("activePods") or {}):
        for pid in pids_of("launcher"):
            try:
                if f"/pod{uid}/" in Path(f"/proc/{pid}/cgroup").read_text() and \
                        Path(f"/proc/{pid}/comm").read_text().strip() not in ("libvirtd", "nsinit"):
                    out.append(pid)
            except OSError:
                continue
    return sorted(out)


def inject(kind: str, res: Resources, layout: Layout, names: list[str], rng: random.Random) -> tuple[str, Any]:
    """Inject one fault: what was done, and (VM name, its QEMU pids) when that VM's domain must come back anew."""
    if kind == "controller":
        leader = ((res.get(LEASE, "kvtool-system", "kvtool-controller") or {}).get("spec") or {}).get("holderIdentity")
        if not res.delete(POD, "kvtool-system", leader, grace_period=0):
            raise RuntimeError(f"the Lease still names {leader}, whose pod is gone: no leader yet")
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
        name = rng.choice(names)
        pids = qemu_pids(f"default_{name}") if kind == "qemu" else launcher_pids(res, name)
        before = qemu_pids(f"default_{name}")
        for pid in pids[:1]:
            os.kill(pid, signal.SIGKILL)
        return f"SIGKILLed the {kind} of {name} ({pids[:1]})", (name, set(before)) if pids else None
    component = {"apiserver": "apiserver", "etcd": "etcd", "runtime": f"containerd-{rng.choice(NODES)}"}[kind]
    cluster.control(layout.home, "restart", component)
    return f"restarted {component}", None


def orphans(res: Resources, layout: Layout, names: list[str]) -> list[str]:
    """What outlived its owner: QEMU without its VM, libvirtd without its pod, pod dirs and netns without pods."""
    found = []
    vms = {v["metadata"]["name"] for v in res.list(VIRTUAL_MACHINE, "default")[0]}
    for pid in pids_of("qemu-system"):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if "guest=default_" in cmd and cmd.split("guest=default_")[1].split(",")[0] not in vms:
            found.append(f"QEMU {pid} of a VM that is gone")
    pods = {p["metadata"]["uid"]: p for p in res.list(POD, None)[0]}
    libvirtds = [p for p in pids_of("libvirtd") if Path(f"/proc/{p}/comm").read_text().strip() == "libvirtd"]
    launchers = [p for p in pods.values() if (p["metadata"].get("labels") or {}).get("kvtool.io") == "virt-launcher"]
    if len(libvirtds) > len(launchers):
        found.append(f"{len(libvirtds)} libvirtd processes for {len(launchers)} launcher pods")
    for node in NODES:
        for pod_dir in (layout.node_dir(node) / "kubelet" / "pods").glob("*"):
            if pod_dir.name not in pods:
                found.append(f"pod dir {pod_dir} without its pod")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=8)
    parser.add_argument("--duration", type=float, default=300, help="seconds of faults (default 300)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--recovery-timeout", type=float, default=300)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    layout, res = benchlib.runtime()
    names = [f"chaos-{uuid.uuid4().hex[:4]}-{i}" for i in range(args.vms)]
    for name in names:
        res.create(VIRTUAL_MACHINE, vm_manifest(name))
    deadline = time.time() + 600
    while not all_running(res, names):
        if time.time() > deadline:
            raise SystemExit("the VMs did not all start")
        time.sleep(0.5)
    print(f"== chaos: {args.vms} VMs, {args.duration:.0f} s of faults, seed {args.seed} ==")
    watch = Watch(names)
    watch.start()
    kinds = ["controller", "handler", "launcher", "qemu", "apiserver", "etcd", "runtime"]
    recoveries: dict[str, list[float]] = {k: [] for k in kinds}
    lost: list[str] = []
    end = time.time() + args.duration
    while time.time() < end:
        kind = rng.choice(kinds)
        started = time.time()
        try:
            what, renewed = inject(kind, res, layout, names, rng)
        except Exception as exc:  # the cluster was mid-recovery from the last fault: say so, go on
            print(f"  fault {kind} not injected: {exc}")
            continue

        def recovered(renewed: Any = renewed) -> bool:
            if renewed is not None:  # the killed VM runs again: a new QEMU, the old one gone
                now = set(qemu_pids(f"default_{renewed[0]}"))
                if not now or now & renewed[1]:
                    return False
            try:
                return all_running(res, names)
            except Exception:  # the apiserver is restarting
                return False

        while not recovered():
            if time.time() - started > args.recovery_timeout:
                lost.append(f"{kind}: {what}")
                break
            time.sleep(0.2)
        else:
            recoveries[kind].append(time.time() - started)
            print(f"  {time.strftime('%H:%M:%S')} {what}: all VMs Running again in {time.time() - started:.1f} s")
    watch.stop.set()
    watch.join()
    times = [t for ts in recoveries.values() for t in ts]
    print(f"\nfaults injected {sum(len(v) for v in recoveries.values()) + len(lost)}, recovered {len(times)}, "
          f"not recovered within {args.recovery_timeout:.0f} s: {len(lost)} {lost}")
    if times:
        print(f"recovery (fault -> every VM Running and ready): p50 {statistics.median(times):.1f} s, "
              f"p95 {pct(times, 0.95):.1f} s, max {max(times):.1f} s")
    for kind, ts in recoveries.items():
        if ts:
            print(f"  {kind:<10} {len(ts):>3} faults, p50 {statistics.median(ts):5.1f} s, max {max(ts):5.1f} s")
    print(f"moments with two QEMUs of one VM: {len(watch.duplicates)} {watch.duplicates[:5]}")
    for name in names:
        res.delete(VIRTUAL_MACHINE, "default", name)
    deadline = time.time() + 180
    while any(res.get(VIRTUAL_MACHINE_INSTANCE, "default", n) for n in names) and time.time() < deadline:
        time.sleep(0.5)
    left: list[str] = []
    deadline = time.time() + 60
    while time.time() < deadline and (left := orphans(res, layout, names)):
        time.sleep(1)
    print(f"left behind after the VMs were deleted: {len(left)} {left[:5]}")
    return 1 if lost or watch.duplicates or left else 0


if __name__ == "__main__":
    sys.exit(main())

