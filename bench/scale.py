"""1000 VMs through the real controller: VM → VMI → launcher pod → Scheduled, on simulated nodes (KWOK).

KubeVirt's own performance tests do this: KWOK (`sigs.k8s.io/kwok`, built from its Go module here,
see kwok/) keeps fake Nodes Ready and takes their pods to Running without processes, so the
controller does its whole job for every VM while no guest boots. The embedded cluster's real nodes
are cordoned for the run, so every launcher pod lands on a KWOK node; the controller, apiserver and
etcd are the real ones.

Prints: time from the first create until every VMI is Scheduled, the leading controller's RSS per VM
and CPU seconds, and API writes per VMI by resource and verb (VM and VMI writes are kvtool's own;
pod status writes are KWOK's, the kubelet's part) beside KubeVirt's figures.

Usage: python bench/scale.py [--vms 1000] [--nodes 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib
from vm_start import request_counts, rss_kib, writes_table

from kvtool.api.types import CONFIG_MAP, POD, VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE, Kind
from kvtool.images import tiny_linux
from kvtool.kube.resources import Resources
from kvtool.local import build
from kvtool.local.layout import Layout
from tests.processes import comm, pod_processes

NODE = Kind("v1", "Node", "nodes")
LEASE = Kind("coordination.k8s.io/v1", "Lease", "leases")
STACK = "bench-scale"
FAKE = {"kwok.x-k8s.io/node": "fake"}
STAGES = ("node/fast/node-initialize.yaml", "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
          "pod/fast/pod-ready.yaml", "pod/fast/pod-complete.yaml", "pod/fast/pod-delete.yaml")
REAL_NODES = ("kvtool-node-1", "kvtool-node-2")
CONTROLLER = "app.kubernetes.io/name=kvtool-controller"
KUBEVIRT_RSS_PER_VMI_KB = 173  # virt-controller at 8000 VMIs (KubeVirt perf-scale)
SETTLE = 10.0  # seconds after the last write before the settled RSS: past kopf's idle workers and the queue


def vm(name: str) -> dict[str, Any]:
    return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"app.kubernetes.io/managed-by": "kvtool", "kvtool.io/stack": STACK}},
            "spec": {"runStrategy": "Always", "template": {"spec": {
                "domain": {"cpu": {"cores": 1}, "memory": {"guest": "128Mi"},
                           "firmware": {"kernelBoot": {"kernelArgs": tiny_linux.DEFAULT_CMDLINE,
                                                       "container": {"image": "tiny-linux"}}},
                           "devices": {}}}}}}


def fake_node(i: int) -> dict[str, Any]:
    name = f"kwok-node-{i}"
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {**FAKE, "node.alpha.kubernetes.io/ttl": "0"},
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                    "kubernetes.io/arch": "amd64", "type": "kwok"}},
            "spec": {"podCIDR": f"10.251.{i}.0/24"},
            "status": {"allocatable": {"cpu": "64", "memory": "1Ti", "pods": "250"},
                       "capacity": {"cpu": "64", "memory": "1Ti", "pods": "250"}}}


def stage_config(kwok_dir: Path) -> str:
    """KWOK's own "fast" stages from its module: nodes Ready with leases, pods Running at once."""
    docs = [(kwok_dir / "kustomize" / "stage" / s).read_text() for s in STAGES]
    return "\n---\n".join(d.strip().removeprefix("---").strip() for d in docs) + "\n"


def module_dir() -> Path:
    src = build.source_dir(build.KWOK)
    out = subprocess.run([build.go_executable(), "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/kwok"], cwd=src,
                         capture_output=True, text=True, check=True).stdout.strip()
    return Path(out)


def controller_process(res: Resources) -> int:
    """The leading controller's Python process (in its pod's cgroup)."""
    leader = ((res.get(LEASE, "kvtool-system", "kvtool-controller") or {}).get("spec") or {}).get("holderIdentity")
    pod = res.get(POD, "kvtool-system", leader) if leader else None
    if pod is None:
        raise SystemExit("no leading controller pod")
    pids = [p for p in pod_processes(pod["metadata"]["uid"]) if comm(p).startswith(("python", "kvtool"))]
    if not pids:
        raise SystemExit(f"no process found in the controller pod {leader}")
    return max(pids, key=rss_kib)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phases(res: Resources) -> dict[str, int]:
    vmis, _ = res.list(VIRTUAL_MACHINE_INSTANCE, "default", label_selector=f"kvtool.io/stack={STACK}")
    out: dict[str, int] = {}
    for v in vmis:
        phase = (v.get("status") or {}).get("phase") or "none"
        out[phase] = out.get(phase, 0) + 1
    pods, _ = res.list(POD, "default", label_selector=f"kvtool.io/stack={STACK}")
    for p in pods:  # where the time goes: the scheduler and KWOK (pods) or the controller (VMIs)
        key = "pods:" + ("Running" if (p.get("status") or {}).get("phase") == "Running" else
                         "bound" if (p.get("spec") or {}).get("nodeName") else "unbound")
        out[key] = out.get(key, 0) + 1
    return out


def set_failover(res: Resources, enabled: bool) -> None:
    """KWOK's nodes run no kvtool handler: failover stays out of a measurement of the controller's VM work."""
    res.merge_patch(CONFIG_MAP, "kvtool-system", "kvtool-failover", {"data": {"enabled": str(enabled).lower()}})


def cordon(res: Resources, on: bool) -> None:
    for node in REAL_NODES:
        res.merge_patch(NODE, None, node, {"spec": {"unschedulable": True if on else None}})


def run(res: Resources, layout: Layout, count: int, nodes: int) -> int:
    kwok = build.ensure_kwok(progress=True)
    with tempfile.TemporaryDirectory(prefix="kvtool-kwok-") as tmp:
        config = Path(tmp) / "stages.yaml"
        config.write_text(stage_config(module_dir()))
        log = open(Path(tmp) / "kwok.log", "w")  # noqa: SIM115 - closed in finally
        proc = subprocess.Popen([str(kwok), "--kubeconfig", str(layout.kubeconfig), "--config", str(config),
                                 "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector="
                                 "kwok.x-k8s.io/node=fake", "--node-lease-duration-seconds=40",
                                 "--cidr=10.250.0.1/16"], stdout=log, stderr=subprocess.STDOUT)
        set_failover(res, False)
        try:
            cleanup(res, nodes)  # what an interrupted run left behind
            pid = fresh_controller(res)  # before the cordon: its new pods must land on the real nodes
            cordon(res, True)
            for i in range(nodes):
                res.create(NODE, fake_node(i))
            deadline = time.time() + 120
            while not all(any(c.get("type") == "Ready" and c.get("status") == "True"
                              for c in ((res.get(NODE, None, f"kwok-node-{i}") or {}).get("status") or {}).get(
                                  "conditions") or []) for i in range(nodes)):
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit("the KWOK nodes did not become Ready: " +
                                     (Path(tmp) / "kwok.log").read_text()[-2000:])
                time.sleep(0.5)
            return measure(res, count, pid)
        finally:
            cleanup(res, nodes)
            cordon(res, False)
            set_failover(res, True)
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


def fresh_controller(res: Resources) -> int:
    """Restart the controller (both replicas), so its memory is measured from a start with no VMs; the new
    leader's process once its RSS has settled (its watches listed everything)."""
    old = {p["metadata"]["name"] for p in res.list(POD, "kvtool-system", label_selector=CONTROLLER)[0]}
    for name in old:
        res.delete(POD, "kvtool-system", name)
    deadline = time.time() + 180
    while True:
        holder = ((res.get(LEASE, "kvtool-system", "kvtool-controller") or {}).get("spec") or {}).get(
            "holderIdentity")
        pod = res.get(POD, "kvtool-system", holder) if holder and holder not in old else None
        if pod and (pod.get("status") or {}).get("phase") == "Running":
            break
        if time.time() > deadline:
            raise SystemExit("no new controller leader within 180 s")
        time.sleep(0.5)
    pid = controller_process(res)
    last = -1
    while (now := rss_kib(pid)) != last:
        last = now
        time.sleep(3)
    return pid


def measure(res: Resources, count: int, pid: int) -> int:
    rss_before, cpu_before = rss_kib(pid), cpu_seconds(pid)
    before = request_counts(res)
    names = [f"scale-{i:04d}" for i in range(count)]
    started = time.time()
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda n: res.create(VIRTUAL_MACHINE, vm(n)), names))
    created = time.time() - started
    print(f"== {count} VMs (runStrategy Always) on KWOK nodes; creates sent in {created:.1f} s ==")
    last = ""
    deadline = started + 900
    samples: list[int] = []
    while True:
        now = phases(res)
        scheduled = now.get("Scheduled", 0) + now.get("Running", 0)  # VMI phases
        samples.append(rss_kib(pid))
        line = " ".join(f"{k}={v}" for k, v in sorted(now.items()))
        if line != last:
            print(f"  +{time.time() - started:6.1f}s  {line}")
            last = line
        if scheduled >= count or time.time() > deadline:
            break
        time.sleep(2.0)  # each look lists 1000 VMIs and 1000 pods: the observer's load stays small
    elapsed = time.time() - started
    rss_after, cpu_after = rss_kib(pid), cpu_seconds(pid)  # when the last VMI is Scheduled
    quiet = quiescent(res)  # the writes that follow (VM status) belong to the lifecycle too
    time.sleep(SETTLE)
    rss_settled = rss_kib(pid)  # what the controller holds for 1000 idle VMs, past the burst's in-flight work
    delta = request_counts(res)
    delta.subtract(before)
    print(f"\nall {count} VMIs Scheduled: {'yes' if scheduled >= count else f'NO ({scheduled})'} after "
          f"{elapsed:.1f} s (goal < 60 s)")
    per_vm = (rss_after - rss_before) / count
    print(f"controller RSS {rss_before / 1024:.0f} MiB -> {rss_after / 1024:.0f} MiB (peak {max(samples) / 1024:.0f}"
          f" MiB): {per_vm:.0f} KiB per VM (goal < 50; KubeVirt virt-controller ≈ {KUBEVIRT_RSS_PER_VMI_KB} KB per "
          f"VMI at 8000)")
    print(f"  settled ({SETTLE:.0f} s after the cluster was quiet): {rss_settled / 1024:.0f} MiB, "
          f"{(rss_settled - rss_before) / count:.0f} KiB per VM")
    print(f"controller CPU {cpu_after - cpu_before:.1f} s for {count} VMs "
          f"({(cpu_after - cpu_before) / count * 1000:.1f} ms per VM)")
    print(f"API writes per VM until the cluster was quiet ({quiet:.1f} s after the last Scheduled), by resource "
          "and verb (vms, vmis, pods, events: kvtool's; pods/status: KWOK's, the kubelet's part):")
    print("\n".join(writes_table(delta, count)))
    return 0 if scheduled >= count else 1


def quiescent(res: Resources, quiet_for: float = 3.0, timeout: float = 300) -> float:
    """Seconds until no writes reach the apiserver for `quiet_for` seconds (leases aside)."""
    def writes() -> float:
        return sum(n for (verb, resource, _sub), n in request_counts(res).items()
                   if verb in ("create", "update", "patch", "apply", "delete") and resource != "leases")

    started = time.time()
    last, since = writes(), time.time()
    while time.time() - since < quiet_for and time.time() - started < timeout:
        time.sleep(0.5)
        now = writes()
        if now != last:
            last, since = now, time.time()
    return since - started


def cleanup(res: Resources, nodes: int) -> None:
    vms, _ = res.list(VIRTUAL_MACHINE, "default", label_selector=f"kvtool.io/stack={STACK}")
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda v: res.delete(VIRTUAL_MACHINE, "default", v["metadata"]["name"]), vms))
    deadline = time.time() + 600
    while time.time() < deadline:
        left = res.list(VIRTUAL_MACHINE_INSTANCE, "default", label_selector=f"kvtool.io/stack={STACK}")[0]
        pods = res.list(POD, "default", label_selector=f"kvtool.io/stack={STACK}")[0]
        if not left and not pods:
            break
        time.sleep(1)
    for i in range(nodes):
        res.delete(NODE, None, f"kwok-node-{i}")
    deadline = time.time() + 120
    while any(res.get(NODE, None, f"kwok-node-{i}") for i in range(nodes)) and time.time() < deadline:
        time.sleep(0.5)
    # The handler DaemonSet's pods on the fake nodes: nothing runs them, so nothing would finish them.
    for pod in res.list(POD, "kvtool-system")[0]:
        if (pod.get("spec") or {}).get("nodeName", "").startswith("kwok-node-"):
            res.delete(POD, "kvtool-system", pod["metadata"]["name"], grace_period=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=8)
    args = parser.parse_args()
    layout, res = benchlib.runtime()
    return run(res, layout, args.vms, args.nodes)


if __name__ == "__main__":
    sys.exit(main())
