"""VM start latency on the embedded cluster: create → VMI Running → guest marker, for 1 and 8 VMs at once.

Also counts API requests per VM lifecycle (from the apiserver's own metrics) and the memory of one
launcher pod (launcher + its libvirtd + QEMU). KubeVirt's CI reports VMI creation → Running at
~18 s p50 / 27 s p95 (domain started, not guest booted).

Usage: python bench/vm_start.py [--counts 1 8] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import benchlib

from kvtool.api.types import VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE
from kvtool.controller import timeutil
from kvtool.images import tiny_linux
from kvtool.kube.resources import Resources
from kvtool.local import nodehost
from kvtool.local.layout import Layout

MARKER = b"KVTOOL-GUEST-READY"


def vm_manifest(name: str) -> dict[str, Any]:
    return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"app.kubernetes.io/managed-by": "kvtool", "kvtool.io/stack": "bench-start"}},
            "spec": {"runStrategy": "Always", "template": {"spec": {
                "domain": {"cpu": {"cores": 1}, "memory": {"guest": "128Mi"},
                           "firmware": {"kernelBoot": {
                               "kernelArgs": f"{tiny_linux.DEFAULT_CMDLINE} kvtool.hostname={name}",
                               "container": {"image": "tiny-linux"}}},
                           "devices": {}}}}}}


def request_count(res: Resources) -> float:
    text = res.api.call_api(*res.api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])[:2],
                            header_params={"Accept": "text/plain"}).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def console_log(layout: Layout, vmi: dict[str, Any]) -> Path | None:
    pods = (vmi.get("status") or {}).get("activePods") or {}
    for pod_uid, node in pods.items():
        found = list((layout.node_dir(node) / "kubelet" / "pods" / pod_uid).rglob("console.log"))
        if found:
            return found[0]
    return None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def process_name(pid: int) -> str:
    """comm, except for kvtool's multi-call binaries: the component they run (kubelet, kube-proxy, shim...)."""
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if comm.startswith("kvtool-"):
        alias = Path(argv[0].decode()).name
        if not alias.startswith("kvtool-"):
            return alias
        # The runc shim re-executes the multi-call binary by its own name, with flags only.
        return argv[1].decode() if len(argv) > 1 and not argv[1].startswith(b"-") else "containerd-shim-runc-v2"
    return comm


def by_name(pids: set[int]) -> dict[str, int]:
    """RSS (KiB) summed by process name."""
    out: dict[str, int] = {}
    for pid in pids:
        try:
            name = process_name(pid)
            out[name] = out.get(name, 0) + rss_kib(pid)
        except OSError:
            continue
    return out


def pod_processes(layout: Layout, node: str, pod_uid: str) -> dict[str, int]:
    """RSS (KiB) by process name of everything in one launcher pod: its cgroup (the kubelet's pod<uid>)."""
    pids = {p for p in nodehost.cgroup_pids(f"{layout.cgroup_root}/{node}")
            if f"/pod{pod_uid}/" in Path(f"/proc/{p}/cgroup").read_text()}
    return by_name(pids)


def node_processes(layout: Layout, node: str) -> dict[str, int]:
    """RSS (KiB) by process name of a node's own daemons (kubelet, containerd and its shims, kube-proxy)."""
    return by_name(nodehost.cgroup_pids(f"{layout.cgroup_root}/{node}/{nodehost.SYSTEM}"))


def run_batch(res: Resources, layout: Layout, count: int) -> list[dict[str, float]]:
    names = [f"start-{uuid.uuid4().hex[:5]}-{i}" for i in range(count)]
    created: dict[str, float] = {}
    for n in names:
        created[n] = time.time()
        res.create(VIRTUAL_MACHINE, vm_manifest(n))
    results: dict[str, dict[str, float]] = {n: {} for n in names}
    deadline = time.time() + 180
    while time.time() < deadline and any("marker" not in r for r in results.values()):
        for n in names:
            r = results[n]
            if "marker" in r:
                continue
            vmi = res.get(VIRTUAL_MACHINE_INSTANCE, "default", n)
            if vmi is None:
                continue
            stamps = {t["phase"]: t["phaseTransitionTimestamp"] for t in
                      (vmi.get("status") or {}).get("phaseTransitionTimestamps") or []}
            if "running" not in r and "Running" in stamps:
                r["running"] = timeutil.parse(stamps["Running"]).timestamp() - created[n]  # type: ignore[union-attr]
            log = console_log(layout, vmi)
            if log is not None and MARKER in log.read_bytes():
                r["marker"] = time.time() - created[n]
        time.sleep(0.05)
    if count == 1:
        vmi = res.get(VIRTUAL_MACHINE_INSTANCE, "default", names[0]) or {}
        pod_uid, node = next(iter(((vmi.get("status") or {}).get("activePods") or {"": ""}).items()))
        mem = pod_processes(layout, node, pod_uid) if pod_uid else {}
        results[names[0]]["rss_kib"] = float(sum(mem.values()))
        apart = sum(v for k, v in mem.items() if not k.startswith("qemu"))
        print("    memory of one launcher pod (RSS): " + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in
                                                                    sorted(mem.items()))
              + f"; without QEMU {apart / 1024:.0f} MiB")
    for n in names:
        res.delete(VIRTUAL_MACHINE, "default", n)
    wait_gone(res, names)
    return list(results.values())


def wait_gone(res: Resources, names: list[str]) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if all(res.get(VIRTUAL_MACHINE_INSTANCE, "default", n) is None for n in names):
            return
        time.sleep(0.3)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=3, help="batches per count (default 3)")
    args = parser.parse_args()
    layout, res = benchlib.runtime()
    # One warm-up VM: the first start on a node fills the libvirt capability cache.
    run_batch(res, layout, 1)
    print("== VM start on the embedded cluster (TCG, 2 cores) ==")
    for node in ("kvtool-node-1",):
        mem = node_processes(layout, node)
        print(f"idle memory of node {node} (RSS): " + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in
                                                              sorted(mem.items()))
              + f"; total {sum(mem.values()) / 1024:.0f} MiB")
    for count in args.counts:
        samples: list[dict[str, float]] = []
        before = request_count(res)
        for _ in range(args.runs):
            samples += run_batch(res, layout, count)
        requests = (request_count(res) - before) / (count * args.runs)
        running = [s["running"] for s in samples if "running" in s]
        marker = [s["marker"] for s in samples if "marker" in s]
        print(f"\n{count} VM(s) created at once, {args.runs} run(s), {len(samples)} VMs:")
        for label, vals in (("create -> VMI Running", running), ("create -> guest marker", marker)):
            if vals:
                print(f"  {label:<24} min {min(vals):5.2f} s   p50 {statistics.median(vals):5.2f} s   "
                      f"p95 {pct(vals, 0.95):5.2f} s   ({len(vals)}/{len(samples)} reached)")
            else:
                print(f"  {label:<24} none reached")
        print(f"  API requests per VM lifecycle (create → running → delete, all clients): {requests:.0f}")
    print("\nKubeVirt CI, for comparison: VMI creation → Running ≈ 18 s p50 / 27 s p95 (domain started).")
    print(json.dumps({"note": "times are wall clock from the create request; one machine, one run"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
