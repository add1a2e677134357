"""Pod networking on the embedded cluster: how soon a guest has its IP, and HTTP latency to a VM vs a pod.

For each binding (masquerade, bridge): VMI Running (as the API shows it, polled every 50 ms) →
the guest has its DHCP lease (its KVTOOL-GUEST-IP line in the console log, read where the node's
kubelet keeps the launcher pod's volume). Then HTTP GET round trips, a new TCP connection each (as
curl would), from the node's own network namespace (pod IPs are routed between the nodes'
namespaces only, as on real hosts) to the VM's pod IP (busybox httpd in a TCG guest, behind the
binding) beside the same to a plain process in a pod on that node (Python's http.server in the
launcher image, the "container" a user compares with), and to the VM through
`kvtool port-forward`'s relay on 127.0.0.1.

Usage: python bench/net.py [--runs 3] [--requests 50]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import benchlib

from kvtool import consoles
from kvtool.api.types import POD, VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE, Kind
from kvtool.errors import KvtoolError
from kvtool.images import guest_scripts
from kvtool.kube.resources import Resources
from kvtool.local.layout import Layout
from kvtool.podnet import forward, netcmd

DAEMON_SET = Kind("apps/v1", "DaemonSet", "daemonsets")
NODE = "kvtool-node-1"

# The plain pod's process, shared with the tests: a GET answers "kvtool pod <name>".
POD_HTTP_SERVER = (Path(__file__).resolve().parent.parent / "tests" / "pod_http_server.py").read_text()


def vm_manifest(name: str, binding: str) -> dict[str, Any]:
    return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"runStrategy": "Always", "template": {"spec": {
                "nodeSelector": {"kubernetes.io/hostname": NODE},
                "domain": {"cpu": {"cores": 1}, "memory": {"guest": "128Mi"},
                           "firmware": {"kernelBoot": {"kernelArgs": f"console=ttyS0 quiet kvtool.hostname={name}",
                                                       "container": {"image": "tiny-linux"}}},
                           "devices": {"interfaces": [{"name": "default", binding: {}}]}},
                "networks": [{"name": "default", "pod": {}}]}}}}


def poll(what: str, fn: Callable[[], Any], timeout: float = 180, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def launcher_pod(res: Resources, vm: str) -> dict[str, Any] | None:
    pods = res.list(POD, "default", label_selector=f"kvtool.io/vm={vm}")[0]
    return next((p for p in pods if (p.get("status") or {}).get("phase") == "Running"), None)


def boot(res: Resources, layout: Layout, binding: str) -> tuple[str, str, float, float]:
    """Start a VM; (name, pod IP, seconds from VMI Running to the guest's IP marker, seconds from its
    READY marker (userspace up) to its IP marker: loading virtio-net and the DHCP exchange)."""
    name = f"bnet-{binding[:4]}-{uuid.uuid4().hex[:4]}"
    res.create(VIRTUAL_MACHINE, vm_manifest(name, binding))
    poll("VMI Running", lambda: ((res.get(VIRTUAL_MACHINE_INSTANCE, "default", name) or {}).get("status") or {}
                                 ).get("phase") == "Running")
    running = time.monotonic()
    pod = poll("launcher pod", lambda: launcher_pod(res, name))
    log = poll("the console log", lambda: _console_log(res, layout, name), interval=0.01)
    poll("guest READY marker", lambda: guest_scripts.MARKER_READY.encode() in log.read_bytes(), interval=0.01)
    ready = time.monotonic()
    poll("guest IP marker", lambda: guest_scripts.MARKER_IP.encode() in log.read_bytes(), interval=0.01)
    got_ip = time.monotonic()
    poll("guest httpd", lambda: guest_scripts.MARKER_HTTP.encode() in log.read_bytes())
    return name, pod["status"]["podIP"], got_ip - running, got_ip - ready


def round_trips(connect: Callable[[], http.client.HTTPConnection], count: int) -> list[float]:
    times = []
    for _ in range(count + 3):
        started = time.perf_counter()
        conn = connect()
        conn.request("GET", "/")
        body = conn.getresponse().read()
        conn.close()
        times.append(time.perf_counter() - started)
        assert body
    return times[3:]  # the first few warm ARP and conntrack


def _console_log(res: Resources, layout: Layout, vm: str) -> Path | None:
    """Where the VM's launcher writes its console (asked once: then the file is polled directly)."""
    try:
        return consoles.console_log(res, "default", vm, layout.home)
    except KvtoolError:
        return None


def node_netns(res: Resources, node: str) -> str:
    """The node's network namespace, as its Node says (pod IPs are reachable from there)."""
    annotations = ((res.get(forward.NODE, None, node) or {}).get("metadata") or {}).get("annotations") or {}
    if not annotations.get(forward.NETNS_ANNOTATION):
        raise SystemExit(f"node {node} has no {forward.NETNS_ANNOTATION} annotation: not an embedded cluster?")
    return netcmd.netns_name(annotations[forward.NETNS_ANNOTATION])


def launcher_image(res: Resources) -> str:
    """The kvtool image the nodes imported, as the handler DaemonSet runs it."""
    ds = res.get(DAEMON_SET, "kvtool-system", "kvtool-handler")
    if ds is None:
        raise SystemExit("no kvtool-handler DaemonSet: is kvtool installed on the cluster?")
    return str(ds["spec"]["template"]["spec"]["containers"][0]["image"])


def in_cluster(netns: str, ip: str, port: int, count: int) -> list[float]:
    return netcmd.in_netns(netcmd.netns_path(netns),
                           lambda: round_trips(lambda: http.client.HTTPConnection(ip, port, timeout=10), count))


def through_relay(netns: str, ip: str, port: int, count: int) -> list[float]:
    relay = forward.Relay(forward.Target(ip, port, netns, "bench"), 0).start()
    try:
        return round_trips(lambda: http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10), count)
    finally:
        relay.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def row(label: str, values: list[float], unit: str = "ms", scale: float = 1000) -> str:
    return (f"  {label:<48} p50 {statistics.median(values) * scale:7.2f} {unit}   p95 {pct(values, 0.95) * scale:7.2f}"
            f" {unit}   ({len(values)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="VMs booted per binding (default 3)")
    parser.add_argument("--requests", type=int, default=50, help="HTTP requests per target (default 50)")
    args = parser.parse_args()
    layout, res = benchlib.runtime()
    netns = node_netns(res, NODE)
    box = f"bnet-box-{uuid.uuid4().hex[:4]}"
    res.create(POD, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": box, "namespace": "default"},
                     "spec": {"restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": NODE},
                              "containers": [{"name": "compute", "image": launcher_image(res),
                                              "command": ["python3", "-c", POD_HTTP_SERVER], "args": ["8080"],
                                              "env": [{"name": "KVTOOL_POD_NAME", "valueFrom": {
                                                  "fieldRef": {"fieldPath": "metadata.name"}}}]}]}})
    created: list[str] = []
    try:
        box_ip = poll("the plain pod", lambda: _running_ip(res, box))
        poll("its HTTP server", lambda: _answers(netns, box_ip, 8080))
        print(f"== pod networking on the embedded cluster (TCG guests, {NODE}, one machine) ==")
        results: dict[str, Any] = {}
        for binding in ("masquerade", "bridge"):
            ips, dhcp = [], []
            for _ in range(args.runs):
                name, ip, got_ip, ready_to_ip = boot(res, layout, binding)
                created.append(name)
                ips.append(got_ip)
                dhcp.append(ready_to_ip)
            print(f"\n{binding}:")
            print(row("VMI Running -> guest has its IP (DHCP)", ips, "s", 1))
            print(row("  of which guest userspace up -> IP", dhcp, "s", 1))
            vm_rtt = in_cluster(netns, ip, 80, args.requests)
            print(row(f"HTTP GET node netns -> VM pod IP {ip}", vm_rtt))
            relay_rtt = through_relay(netns, ip, 80, args.requests)
            print(row("HTTP GET 127.0.0.1 -> port-forward relay -> VM", relay_rtt))
            results[binding] = {"running_to_ip_s": ips, "ready_to_ip_s": dhcp,
                                "vm_http_ms_p50": statistics.median(vm_rtt) * 1000,
                                "relay_http_ms_p50": statistics.median(relay_rtt) * 1000}
        box_rtt = in_cluster(netns, box_ip, 8080, args.requests)
        print("\nthe same to a plain process in a pod (python http.server):")
        print(row(f"HTTP GET node netns -> pod IP {box_ip}", box_rtt))
        results["pod_http_ms_p50"] = statistics.median(box_rtt) * 1000
        print(json.dumps(results))
    finally:
        for name in created:
            res.delete(VIRTUAL_MACHINE, "default", name)
        res.delete(POD, "default", box)
    return 0


def _running_ip(res: Resources, pod: str) -> str | None:
    status = (res.get(POD, "default", pod) or {}).get("status") or {}
    return status.get("podIP") if status.get("phase") == "Running" else None


def _answers(netns: str, ip: str, port: int) -> bool:
    try:
        in_cluster(netns, ip, port, 1)
    except OSError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
