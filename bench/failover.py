"""Node loss → the VM running again on another node, on the embedded cluster with the default grace.

Each run boots a runStrategy: Always VM, then takes its node away, either powered off
(`kvtool cluster node stop`) or cut off from the API server (`kvtool cluster node partition`),
and splits the time until the VM runs elsewhere into:
  detection  fault → the controller starts fencing (both heartbeats older than the grace, 40 s)
  fencing    fencing started → the fence agent confirmed the node off (the embedded power switch)
  restart    fenced → the new VMI Running on the other node (and → its guest's boot marker)
It also checks that the old QEMU exited before the new one started (no moment with two domains of
one VM alive), from the old QEMU's pidfd and the new one's start time in /proc.

Anchor: KubeVirt marks a node's VMs only after 5 minutes without a heartbeat and never fails them
over by itself (kubevirt/kubevirt#2443). Goal: under 60 s end to end with the default grace.

Usage: python bench/failover.py [--runs 3] [--modes stop partition] [--grace 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib
from benchlib import wait
from vm_start import MARKER, console_log, pct, vm_manifest

from kvtool import paths
from kvtool.api import timeutil
from kvtool.api.types import CONFIG_MAP, VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE, Kind
from kvtool.kube.resources import Resources
from kvtool.local import cluster
from kvtool.local.layout import Layout
from tests.processes import ExitWatch, qemu_for, start_time

NODE = Kind("v1", "Node", "nodes")
CONFIG = ("kvtool-system", "kvtool-failover")


def annotation(res: Resources, node: str, key: str) -> str | None:
    return ((res.get(NODE, None, node) or {}).get("metadata", {}).get("annotations") or {}).get(key)


def back_in_service(res: Resources, home: Path, node: str) -> None:
    cluster.control(home, "node-heal", node=node)
    cluster.control(home, "node-start", node=node)

    def serving() -> bool:
        n = res.get(NODE, None, node) or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in n.get("status", {}).get(
            "conditions") or [])
        lease = res.get(Kind("coordination.k8s.io/v1", "Lease", "leases"), "kvtool-system", f"kvtool-handler-{node}")
        fresh = lease and (timeutil.now() - timeutil.parse(lease["spec"]["renewTime"])).total_seconds() < 5
        return ready and "kvtool.io/fence-state" not in (n["metadata"].get("annotations") or {}) and bool(fresh)

    wait(serving, 180, f"{node} back in service", period=0.5)


def one_run(res: Resources, layout: Layout, mode: str) -> dict[str, float]:
    name = f"failover-{uuid.uuid4().hex[:5]}"
    res.create(VIRTUAL_MACHINE, vm_manifest(name))
    first = wait(lambda: (v := res.get(VIRTUAL_MACHINE_INSTANCE, "default", name)) and
                 (v.get("status") or {}).get("phase") == "Running" and v, 180, f"{name} Running")
    wait(lambda: (log := console_log(layout, first)) is not None and MARKER in log.read_bytes(), 120, "first boot")
    node = first["status"]["nodeName"]
    [old_qemu] = qemu_for(f"default_{name}")
    old_exit = ExitWatch(old_qemu)
    leader = (res.get(Kind("coordination.k8s.io/v1", "Lease", "leases"), "kvtool-system", "kvtool-controller")
              or {}).get("spec", {}).get("holderIdentity", "")
    controller_pods, _ = res.list(Kind("v1", "Pod", "pods"), "kvtool-system",
                                  label_selector="app.kubernetes.io/name=kvtool-controller")
    leader_here = any(p["metadata"]["name"] == leader and p["spec"].get("nodeName") == node for p in controller_pods)
    fault = time.time()
    cluster.control(layout.home, f"node-{'stop' if mode == 'stop' else 'partition'}", node=node)
    detected = wait(lambda: annotation(res, node, "kvtool.io/fence-state") and time.time(), 300, "fencing to start")
    fenced_at = timeutil.parse(wait(lambda: annotation(res, node, "kvtool.io/fenced-at"), 120, "fenced")).timestamp()

    def replacement() -> dict[str, Any] | None:
        v = res.get(VIRTUAL_MACHINE_INSTANCE, "default", name)
        ok = v and v["metadata"]["uid"] != first["metadata"]["uid"] and (v.get("status") or {}).get("phase") == \
            "Running"
        return v if ok else None

    again = wait(replacement, 180, "the replacement VMI Running")
    stamps = {t["phase"]: t["phaseTransitionTimestamp"] for t in again["status"]["phaseTransitionTimestamps"]}
    running = timeutil.parse(stamps["Running"]).timestamp()
    wait(lambda: (log := console_log(layout, again)) is not None and MARKER in log.read_bytes(), 120, "new boot")
    booted = time.time()
    [new_qemu] = qemu_for(f"default_{name}")
    wait(lambda: old_exit.exited_at is not None, 30, "the old QEMU's exit")
    overlap = start_time(new_qemu) - old_exit.exited_at < 0
    res.delete(VIRTUAL_MACHINE, "default", name)
    back_in_service(res, layout.home, node)
    return {"detection": detected - fault, "fencing": fenced_at - detected, "restart": running - fenced_at,
            "total": running - fault, "to_boot": booted - fault, "overlap": float(overlap),
            "leader_on_lost_node": float(leader_here), "qemu_gap": start_time(new_qemu) - old_exit.exited_at}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (default 3)")
    parser.add_argument("--modes", nargs="+", choices=["stop", "partition"], default=["stop", "partition"])
    parser.add_argument("--grace", type=int, default=40, help="nodeLostGraceSeconds (default 40, the default)")
    args = parser.parse_args()
    layout, res = benchlib.runtime()
    cm = res.get(CONFIG_MAP, *CONFIG)
    assert cm is not None, "kvtool cluster up writes the failover ConfigMap"
    res.merge_patch(CONFIG_MAP, *CONFIG, {"data": {"nodeLostGraceSeconds": str(args.grace)}})
    time.sleep(6)  # the controller reads the setting at most every 5 s
    print(f"== Node loss -> VM Running elsewhere, embedded cluster ({paths.kvtool_home()}), grace {args.grace}s ==")
    try:
        for mode in args.modes:
            samples = [one_run(res, layout, mode) for _ in range(args.runs)]
            print(f"\nnode {'powered off' if mode == 'stop' else 'partitioned'} ({len(samples)} runs):")
            for key, label in (("detection", "fault -> fencing starts"), ("fencing", "fencing -> node off"),
                               ("restart", "fenced -> VMI Running"), ("total", "fault -> VMI Running"),
                               ("to_boot", "fault -> guest booted")):
                vals = [s[key] for s in samples]
                print(f"  {label:<26} p50 {statistics.median(vals):6.2f} s   p95 {pct(vals, 0.95):6.2f} s   "
                      f"max {max(vals):6.2f} s")
            gaps = [s["qemu_gap"] for s in samples]
            print(f"  runs with two QEMUs of the VM alive at once: {int(sum(s['overlap'] for s in samples))}"
                  f" (old QEMU exit -> new QEMU start: min {min(gaps):.2f} s)")
            print(f"  runs where the controller leader was on the lost node: "
                  f"{int(sum(s['leader_on_lost_node'] for s in samples))}")
    finally:
        res.merge_patch(CONFIG_MAP, *CONFIG, {"data": cm["data"]})
    print("\nKubeVirt, for comparison: VMs of a dead node are marked after 5 min and never failed over automatically.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
