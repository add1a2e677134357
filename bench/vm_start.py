"""VM start latency on the embedded cluster: create → VMI Running → guest marker, for 1 and 8 VMs at once,
beside the physical floor: the same guests booted by plain QEMU processes at once, in the same run.

Also counts API writes per VM lifecycle by resource and verb (from the apiserver's own metrics, beside
KubeVirt's published per-VMI figures) and the memory of one launcher pod (launcher + its libvirtd + QEMU).
KubeVirt's CI reports VMI creation → Running at
~18 s p50 / 27 s p95 (domain started, not guest booted).

Usage: python bench/vm_start.py [--counts 1 8] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import benchlib

from kvtool.api import timeutil
from kvtool.api.types import VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE
from kvtool.images import store, tiny_linux
from kvtool.kube.resources import Resources, list_watch
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


WRITES = ("create", "update", "patch", "apply", "delete")
# The apiserver's metric names HTTP-ish verbs: POST is a create, PUT an update, APPLY a server-side apply.
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "APPLY": "apply", "DELETE": "delete",
         "DELETECOLLECTION": "delete"}
# What a VMI costs KubeVirt, per its scale tests (kubevirt/kubevirt perfscale audit, 100 VMIs): writes per VMI.
KUBEVIRT_PER_VMI = {("pods", "patch"): 2.2, ("virtualmachineinstances", "update"): 6.0,
                    ("virtualmachineinstances", "patch"): 0.7}


def request_counts(res: Resources) -> Counter[tuple[str, str, str]]:
    """apiserver_request_total summed by (verb, resource, subresource), from the apiserver's own metrics."""
    text = res.api.call_api(*res.api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])[:2],
                            header_params={"Accept": "text/plain"}).read().decode()
    out: Counter[tuple[str, str, str]] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            verb = VERBS.get(labels.get("verb", "").upper(), labels.get("verb", "").lower())
            if verb in WRITES and not labels.get("code", "2").startswith("2"):
                verb = f"{verb} (refused: {labels.get('code')})"  # e.g. 409 conflicts: tried, not written
            out[(verb, labels.get("resource", ""), labels.get("subresource", ""))] += float(line.rsplit(" ", 1)[1])
    return out


def request_count(res: Resources) -> float:
    return sum(request_counts(res).values())


def writes_table(delta: Counter[tuple[str, str, str]], per: int) -> list[str]:
    """Writes per VM lifecycle by resource and verb; leases and reads apart (they are not the VM's work)."""
    rows: Counter[tuple[str, str]] = Counter()
    reads = leases = 0.0
    for (verb, resource, sub), n in delta.items():
        if resource == "leases":
            leases += n
        elif verb.split(" ")[0] in WRITES:
            rows[(resource + (f"/{sub}" if sub else ""), verb)] += n
        else:
            reads += n
    lines = []
    for (resource, verb), n in sorted(rows.items(), key=lambda kv: (-kv[1], kv[0])):
        if n / per >= 0.05:
            anchor = KUBEVIRT_PER_VMI.get((resource.split("/")[0], verb))
            lines.append(f"    {verb:<7} {resource:<38} {n / per:5.1f}"
                         + (f"   (KubeVirt ≈ {anchor})" if anchor else ""))
    def writes(resource: str, sub: str | None = None) -> float:
        """Updates and patches of one resource (or of one of its subresources)."""
        return sum(n for (r, verb), n in rows.items() if verb in ("update", "patch", "apply")
                   and r.split("/")[0] == resource and (sub is None or r == f"{resource}/{sub}"))
    vm, vmi, pods = writes("virtualmachines"), writes("virtualmachineinstances"), writes("pods")
    lines.append(f"    updates+patches of VMs, VMIs and pods: {(vm + vmi + pods) / per:.1f} per VM "
                 "(KubeVirt ≈ 8.9, VMs not counted)")
    lines.append(f"    of which VMI updates+patches {vmi / per:.1f} per VMI (goal ≤ 5; KubeVirt ≈ 6.7), VM status "
                 f"{vm / per:.1f}, pods {pods / per:.1f} (the kubelet's status writes "
                 f"{writes('pods', 'status') / per:.1f})")
    lines.append(f"    reads (get/list/watch) {reads / per:.1f}, lease writes and reads {leases / per:.1f} per VM "
                 "(all clients, incl. heartbeats over the run)")
    return lines


def floor_batch(count: int, kernel: Path, initrd: Path) -> list[float]:
    """The physical floor: the same guests booted by plain QEMU processes started at once (TCG, the same kernel,
    command line, memory, machine and translation cache as kvtool's domains; user-mode virtio-net for the
    guest's DHCP). Seconds from spawn to each guest's marker."""
    qemu = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
    with tempfile.TemporaryDirectory(prefix="kvtool-floor-") as tmp:
        procs, logs, started = [], [], []
        for i in range(count):
            log = Path(tmp) / f"{i}.log"
            logs.append(log)
            started.append(time.time())
            procs.append(subprocess.Popen(
                [qemu, "-machine", "q35", "-accel", "tcg,tb-size=16", "-m", "128", "-smp", "1",
                 "-kernel", str(kernel), "-initrd", str(initrd),
                 "-append", f"{tiny_linux.DEFAULT_CMDLINE} kvtool.hostname=floor-{i}",
                 "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
                 "-display", "none", "-monitor", "none", "-nodefaults", "-no-reboot",
                 "-serial", f"file:{log}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        done: dict[int, float] = {}
        deadline = time.time() + 180
        try:
            while len(done) < count and time.time() < deadline:
                for i, log in enumerate(logs):
                    if i not in done and log.exists() and MARKER in log.read_bytes():
                        done[i] = time.time() - started[i]
                time.sleep(0.05)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    return sorted(done.values())


_CONSOLE_LOGS: dict[str, Path] = {}  # pod uid -> its console log, once found


def console_log(layout: Layout, vmi: dict[str, Any]) -> Path | None:
    """The launcher's console log on this machine. Searched for until found, then remembered: a search of the
    pod's directory tree every 50 ms per VM cost ~3 CPU-seconds in an 8-VM run, taken from the guests."""
    pods = (vmi.get("status") or {}).get("activePods") or {}
    for pod_uid, node in pods.items():
        if pod_uid in _CONSOLE_LOGS:
            return _CONSOLE_LOGS[pod_uid]
        found = list((layout.node_dir(node) / "kubelet" / "pods" / pod_uid).rglob("console.log"))
        if found:
            _CONSOLE_LOGS[pod_uid] = found[0]
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
    return by_name({p for p in nodehost.cgroup_pids(f"{layout.cgroup_root}/{node}")
                    if f"/pod{pod_uid}/" in _cgroup_of(p)})


def _cgroup_of(pid: int) -> str:
    """The process' /proc cgroup text; empty when it ended since it was listed (a node always has some ending)."""
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""


def node_processes(layout: Layout, node: str) -> dict[str, int]:
    """RSS (KiB) by process name of a node's own daemons (kubelet, containerd and its shims, kube-proxy)."""
    return by_name(nodehost.cgroup_pids(f"{layout.cgroup_root}/{node}/{nodehost.SYSTEM}"))


class WatchedVMIs:
    """The namespace's VMIs as one watch delivers them. The bench reads its figures from here, not by a GET per
    VM every 50 ms: on 2 cores those GETs took the apiserver ~1 CPU-second per VM from the guests it measures."""

    def __init__(self, res: Resources) -> None:
        self._latest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.synced = threading.Event()
        threading.Thread(target=self._follow, args=(res,), name="vmi-watch", daemon=True).start()
        if not self.synced.wait(30):
            raise SystemExit("could not list the VMIs within 30 s")

    def _follow(self, res: Resources) -> None:
        while True:
            try:
                for kind, obj in list_watch(res, VIRTUAL_MACHINE_INSTANCE, "default"):
                    with self._lock:
                        if kind == "SYNC":
                            self._latest = {o["metadata"]["name"]: o for o in obj}
                            self.synced.set()
                        elif kind in ("ADDED", "MODIFIED"):
                            self._latest[obj["metadata"]["name"]] = obj
                        elif kind == "DELETED":
                            self._latest.pop(obj["metadata"]["name"], None)
            except Exception as exc:  # a bench: say it, list and watch again
                print(f"    (VMI watch failed: {exc}; watching again)", file=sys.stderr)
                time.sleep(1)

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._latest.get(name)


def run_batch(res: Resources, vmis: WatchedVMIs, layout: Layout, count: int) -> list[dict[str, float]]:
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
            vmi = vmis.get(n)
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
    wait_gone(vmis, names)
    return list(results.values())


def wait_gone(vmis: WatchedVMIs, names: list[str]) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        if all(vmis.get(n) is None for n in names):
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
    vmis = WatchedVMIs(res)
    # One warm-up VM: the first start on a node fills the libvirt capability cache.
    run_batch(res, vmis, layout, 1)
    print("== VM start on the embedded cluster (TCG, 2 cores) ==")
    for node in ("kvtool-node-1",):
        mem = node_processes(layout, node)
        print(f"idle memory of node {node} (RSS): " + ", ".join(f"{k} {v / 1024:.0f} MiB" for k, v in
                                                              sorted(mem.items()))
              + f"; total {sum(mem.values()) / 1024:.0f} MiB")
    image = store.ImageStore().get(tiny_linux.NAME)
    for count in args.counts:
        samples: list[dict[str, float]] = []
        floor: list[float] = []
        before = request_counts(res)
        for _ in range(args.runs):
            samples += run_batch(res, vmis, layout, count)
        delta = request_counts(res)
        delta.subtract(before)
        for _ in range(args.runs):  # after the kvtool runs: the floor's guests must not share their CPU
            floor += floor_batch(count, image.kernel, image.initrd)
        running = [s["running"] for s in samples if "running" in s]
        marker = [s["marker"] for s in samples if "marker" in s]
        print(f"\n{count} VM(s) created at once, {args.runs} run(s), {len(samples)} VMs:")
        for label, vals in (("create -> VMI Running", running), ("create -> guest marker", marker),
                            ("plain QEMU -> marker", floor)):
            if vals:
                print(f"  {label:<24} min {min(vals):5.2f} s   p50 {statistics.median(vals):5.2f} s   "
                      f"p95 {pct(vals, 0.95):5.2f} s   ({len(vals)}/{len(samples)} reached)")
            else:
                print(f"  {label:<24} none reached")
        if marker and floor:
            print(f"  kvtool / plain QEMU: p50 {statistics.median(marker) / statistics.median(floor):.2f}x, "
                  f"p95 {pct(marker, 0.95) / pct(floor, 0.95):.2f}x; kvtool's overhead (p50 marker - p50 floor) "
                  f"{statistics.median(marker) - statistics.median(floor):.2f} s")
        print(f"  API requests per VM lifecycle (create → running → delete, all clients): "
              f"{sum(delta.values()) / len(samples):.0f}; writes by resource and verb, per VM:")
        print("\n".join(writes_table(delta, len(samples))))
    print("\nKubeVirt CI, for comparison: VMI creation → Running ≈ 18 s p50 / 27 s p95 (domain started).")
    print(json.dumps({"note": "times are wall clock from the create request; one machine, one run"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
