"""Pod networking (issue 8): real nodes with the standard CNI bridge, the launcher's masquerade and
bridge bindings, reachability between VMs, pods and the nodes, and cleanup.

Pure parts first (nftables rules, DHCP options, names), then the launcher's wiring in scratch
namespaces with busybox's udhcpc as the guest (no VM needed), then the real thing on the session's
two-node cluster. Cluster objects are shared by the tests below them (module fixtures) so that only
two VMs boot: A (masquerade, node 1) and B (bridge, node 2), plus one plain "container" pod.

Pod IPs are routed between the nodes' network namespaces (and to them from the machine, for the control
plane's webhook calls, as on any cluster): "from the host" below means from a
node's namespace (as a process on a real node would), "from another pod" from the container pod's
own namespace (entered through one of its processes).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from kvtool.cli import port_forward
from kvtool.images import guest_scripts
from kvtool.launcher import config as launcher_config
from kvtool.launcher import network as launcher_network
from kvtool.local import nodenet
from kvtool.podnet import dhcp, expose, nat, netcmd
from tests import network_helpers as nh
from tests.conftest import KVTOOL, Cluster, kvtool
from tests.processes import qemu_for
from tests.runtime_helpers import describe_vm, get, wait_for, wait_running
from tests.vmfactory import vm

NODE_1, NODE_2 = "kvtool-node-1", "kvtool-node-2"
IP4 = ipaddress.IPv4Address


# ---- pure parts --------------------------------------------------------------------------------

def test_masquerade_and_bridge_rulesets() -> None:
    rules = nat.masquerade_ruleset(pod_interface="eth0", pod_ip=IP4("10.244.1.5"), bridge="k6t-eth0",
                                   guest_ip=IP4("10.0.2.2"),
                                   ports=nat.ports_from_spec([{"port": 80}, {"port": 53, "protocol": "UDP"},
                                                              {"port": 22, "protocol": "TCP"}]))
    assert 'iifname "eth0" ip daddr 10.244.1.5 tcp dport { 22, 80 } counter dnat to 10.0.2.2' in rules
    assert 'iifname "eth0" ip daddr 10.244.1.5 udp dport { 53 } counter dnat to 10.0.2.2' in rules
    assert 'ip saddr 10.0.2.2 oifname "eth0" counter snat to 10.244.1.5' in rules
    assert rules.startswith("add table ip kvtool\ndelete table ip kvtool\n")  # a reload replaces the table
    everything = nat.masquerade_ruleset(pod_interface="eth0", pod_ip=IP4("10.244.1.5"), bridge="k6t-eth0",
                                        guest_ip=IP4("10.0.2.2"), ports=nat.ports_from_spec(None))
    assert 'iifname "eth0" ip daddr 10.244.1.5 counter dnat to 10.0.2.2' in everything and "dport" not in everything
    bridge = nat.bridge_ruleset(pod_interface="eth0")
    assert 'iifname "eth0" udp dport { 67, 68 } counter drop' in bridge and "table bridge kvtool" in bridge
    for bad in ('eth0" accept; #', "x" * 16, ""):
        with pytest.raises(netcmd.NetError):
            nat.bridge_ruleset(pod_interface=bad)
    for port in (0, 65536, "80"):
        with pytest.raises(netcmd.NetError):
            nat.Port("tcp", port)  # type: ignore[arg-type]


def test_dnsmasq_options_for_both_bindings() -> None:
    masq = dhcp.Lease(interface="k6t-eth0", mac="02:00:00:aa:bb:cc", address=ipaddress.IPv4Interface("10.0.2.2/24"),
                      router=IP4("10.0.2.1"), dns=(IP4("10.96.0.10"),), search=("default.svc.cluster.local",),
                      mtu=1500, hostname="vm-a")
    args = dhcp.options(masq)
    assert {"--port=0", "--interface=k6t-eth0", "--bind-interfaces", "--leasefile-ro", "--conf-file=/dev/null",
            "--dhcp-range=10.0.2.2,static,255.255.255.0,infinite", "--dhcp-host=02:00:00:aa:bb:cc,10.0.2.2,vm-a",
            "--dhcp-option=option:router,10.0.2.1", "--dhcp-option=option:dns-server,10.96.0.10",
            "--dhcp-option=option:domain-search,default.svc.cluster.local",
            "--dhcp-option=option:mtu,1500"} <= set(args)
    assert not any(a.startswith("--shared-network") for a in args)
    bridged = dhcp.options(dhcp.Lease(interface="k6t-eth0", mac="0a:58:0a:f4:01:05",
                                      address=ipaddress.IPv4Interface("10.244.1.5/24"), router=IP4("10.244.1.1"),
                                      shared_network=True))
    assert "--shared-network=k6t-eth0,10.244.1.5" in bridged
    calico = dhcp.options(dhcp.Lease(interface="k6t-eth0", mac="0a:58:0a:f4:01:05",
                                     address=ipaddress.IPv4Interface("10.244.1.5/32"), router=IP4("169.254.1.1")))
    assert "--dhcp-option=option:classless-static-route,169.254.1.1/32,0.0.0.0,0.0.0.0/0,169.254.1.1" in calico
    for field, bad in (("mac", "01:00:5e:00:00:01"), ("hostname", "vm,a --dhcp-boot=evil"), ("interface", "a b"),
                       ("search", ("bad domain",)), ("mtu", 70000)):
        with pytest.raises(netcmd.NetError):
            dhcp.Lease(**{"interface": "k6t-eth0", "mac": "02:00:00:aa:bb:cc",
                          "address": ipaddress.IPv4Interface("10.0.2.2/24"), "router": None, field: bad})
    servers, search = dhcp.resolv_conf("nameserver 127.0.0.53\nnameserver 10.96.0.10 # kube-dns\n"
                                       "search default.svc.cluster.local svc.cluster.local\noptions ndots:5\n")
    assert servers == (IP4("10.96.0.10"),) and search == ("default.svc.cluster.local", "svc.cluster.local")


def test_cluster_network_names_fit_and_differ_between_clusters() -> None:
    one = nodenet.ClusterNetwork("0123abcd", "10.200.0.0/24")
    two = nodenet.ClusterNetwork("89efcdab", "10.201.0.0/24")
    for net in (one, two):
        for name in (net.bridge, net.host_veth(1), net.host_veth(16)):
            assert len(name) <= 15 and name.startswith("kvt") and netcmd.ifname(name)
    assert one.node_netns(1) != two.node_netns(1) and one.bridge != two.bridge and one.host_veth(1) != two.host_veth(1)
    assert one.node_netns(1) != one.node_netns(2) and one.host_veth(1) != one.host_veth(2)
    assert (one.gateway, one.node_ip(1), one.node_ip(2)) == ("10.200.0.1", "10.200.0.11", "10.200.0.12")
    assert [one.pod_cidr(n) for n in (1, 2)] == ["10.244.0.0/24", "10.244.1.0/24"]  # each node's own pod subnet
    with pytest.raises(netcmd.NetError):
        nodenet.ClusterNetwork("../x", "10.200.0.0/24").node_netns(1)
    with pytest.raises(netcmd.NetError):
        _ = nodenet.ClusterNetwork("../x", "10.200.0.0/24").bridge


def test_expose_manifest_and_port_specs() -> None:
    svc = expose.service_manifest("web", "default", 8080, 80)
    assert svc["spec"]["selector"] == {"kvtool.io/vm": "web"}
    assert svc["spec"]["ports"] == [{"name": "tcp-8080", "protocol": "TCP", "port": 8080, "targetPort": 80}]
    assert port_forward.parse_ports("8080:80") == (8080, 80) and port_forward.parse_ports("80") == (80, 80)
    assert port_forward.parse_ports(":80") == (0, 80)
    for bad in ("x:80", "70000:80", "80:0"):
        with pytest.raises(port_forward.KvtoolError):
            port_forward.parse_ports(bad)


# ---- the launcher's wiring, with a namespace standing in for the guest --------------------------

def _wire(ns: dict[str, str], tmp_path: Path, binding: str, ports: list[dict] | None = None,
          pod_mac: str = "0a:58:0a:f4:09:05") -> tuple[launcher_network.PodNetworking, launcher_network.Wired]:
    """A CNI-made pod (eth0 10.244.9.5/24 via host's 10.244.9.1), then the launcher's setup in it, then a
    guest: a veth on the launcher's bridge (in place of QEMU's tap) with the guest's MAC."""
    nh.veth(ns["pod"], "eth0", ns["host"], "hv0")
    netcmd.ip("link", "set", "eth0", "address", pod_mac, netns=ns["pod"])
    netcmd.ip("addr", "add", "10.244.9.1/24", "dev", "hv0", netns=ns["host"])
    netcmd.ip("addr", "add", "10.244.9.5/24", "dev", "eth0", netns=ns["pod"])
    netcmd.ip("route", "add", "default", "via", "10.244.9.1", netns=ns["pod"])
    config = launcher_config.Config(namespace="default", name="vm-t", uid=str(uuid.uuid4()), pod_uid="pod-t",
                                    grace_period=5, sockets_dir=tmp_path, state_dir=tmp_path, images_dir=tmp_path,
                                    cache_dir=None, volumes_dir=None, pod_interface="eth0")
    net = launcher_network.PodNetworking(config)
    iface = {"name": "default", binding: {}, **({"ports": ports} if ports else {})}
    spec = {"domain": {"devices": {"interfaces": [iface]}}, "networks": [{"name": "default", "pod": {}}]}
    wired = netcmd.in_netns(netcmd.netns_path(ns["pod"]),
                            lambda: net.setup(spec, lambda name: "02:00:00:00:0a:0b"))["default"]
    nh.veth(ns["guest"], "eth0", ns["pod"], "gst0")
    netcmd.ip("link", "set", "gst0", "master", "k6t-eth0", netns=ns["pod"])
    netcmd.ip("link", "set", "eth0", "address", wired.mac, netns=ns["guest"])
    return net, wired


def _serve(netns: str, port: int, tmp_path: Path) -> subprocess.Popen[str]:
    log = (tmp_path / f"http-{netns}-{port}.log").open("w")
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "http.server", str(port)],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: nh.try_get(netns, f"http://127.0.0.1:{port}/") is not None, 10, what=f"http.server in {netns}")
    return proc


def test_masquerade_wiring_serves_dhcp_and_nats_both_ways(tmp_path: Path) -> None:
    with nh.scratch_namespaces("host", "pod", "guest") as ns:
        net, wired = _wire(ns, tmp_path, "masquerade", ports=[{"port": 8000}])
        servers = []
        try:
            assert (wired.pod_ip, wired.guest_ip, wired.tap) == (IP4("10.244.9.5"), IP4("10.0.2.2"), "tap0")
            lease = nh.udhcpc(ns["guest"], "eth0", tmp_path)
            assert "lease ip=10.0.2.2 mask=24 router=10.0.2.1" in lease, lease
            assert {"tap0", "k6t-eth0", "eth0"} <= set(nh.links(ns["pod"]))
            netcmd.ip("addr", "add", "10.0.2.2/24", "dev", "eth0", netns=ns["guest"])
            netcmd.ip("route", "add", "default", "via", "10.0.2.1", netns=ns["guest"])
            servers = [_serve(ns["guest"], 8000, tmp_path), _serve(ns["host"], 8001, tmp_path)]
            assert nh.http_get(ns["host"], "http://10.244.9.5:8000/")  # inbound: DNAT to the guest
            assert nh.http_get(ns["guest"], "http://10.244.9.1:8001/")  # outbound: SNAT to the pod IP
            assert '10.244.9.5 - - ' in (tmp_path / f"http-{ns['host']}-8001.log").read_text()
            with pytest.raises(OSError):  # a port the interface does not list is not forwarded
                nh.http_get(ns["host"], "http://10.244.9.5:8001/", timeout=2)
            # dnsmasq listens on the bridge only, for the guest's MAC only.
            assert "lease ip=" not in nh.udhcpc(ns["host"], "hv0", tmp_path, tries=2)
        finally:
            for proc in servers:
                proc.terminate()
                proc.wait(5)
            net.close()
        assert not net.servers


def test_bridge_wiring_gives_the_guest_the_pod_ip_and_mac(tmp_path: Path) -> None:
    with nh.scratch_namespaces("host", "pod", "guest") as ns:
        net, wired = _wire(ns, tmp_path, "bridge", pod_mac="0a:58:0a:f4:09:05")
        try:
            assert wired.pod_ip == wired.guest_ip == IP4("10.244.9.5") and wired.mac == "0a:58:0a:f4:09:05"
            eth0 = netcmd.ip_json("addr", "show", "dev", "eth0", netns=ns["pod"])[0]
            assert not [a for a in eth0["addr_info"] if a["family"] == "inet"], "the pod IP left the pod interface"
            assert eth0["address"] != wired.mac and eth0.get("master") == "k6t-eth0"
            lease = nh.udhcpc(ns["guest"], "eth0", tmp_path)
            assert "lease ip=10.244.9.5 mask=24 router=10.244.9.1" in lease, lease
            netcmd.ip("addr", "add", "10.244.9.5/24", "dev", "eth0", netns=ns["guest"])
            server = _serve(ns["guest"], 8000, tmp_path)
            try:
                assert nh.http_get(ns["host"], "http://10.244.9.5:8000/")  # the guest answers on the pod IP
            finally:
                server.terminate()
                server.wait(5)
            netcmd.ip("link", "set", "hv0", "address", wired.mac, netns=ns["host"])
            assert "lease ip=" not in nh.udhcpc(ns["host"], "hv0", tmp_path, tries=2), "DHCP must not leave the pod"
        finally:
            net.close()


# ---- on the cluster ------------------------------------------------------------------------------

@dataclass
class Running:
    """A VM or pod that runs, as the tests below need it."""

    name: str
    node: str
    ip: str
    pod_uid: str
    pod_name: str


@dataclass
class Baseline:
    """What the nodes and the machine held before this module's pods existed (cleanup must return to it)."""

    cni_ports: dict[str, set[str]]  # node -> the veths on its cni0 bridge
    root_tables: set[str]  # nftables tables in the machine's own namespace


@pytest.fixture(scope="module")
def baseline(cluster: Cluster) -> Baseline:
    """Taken first (the pods below depend on it), so deleting them can be checked against it."""
    return Baseline({n: nh.bridge_ports(nh.node_netns(cluster, n)) for n in (NODE_1, NODE_2)},
                    nh.root_nft_tables())


def _launcher_pod(cluster: Cluster, vm_name: str) -> dict:
    pods = json.loads(cluster.kubectl("get", "pods", "-l", f"kvtool.io/vm={vm_name}", "-o", "json").stdout)["items"]
    return next(p for p in pods if (p.get("status") or {}).get("phase") == "Running")


def _start_vm(cluster: Cluster, tmp_path: Path, name: str, node: str, binding: str, user_data: str | None = None,
              ports: list[dict] | None = None) -> Running:
    doc = vm(name, run_strategy="Always", user_data=user_data)
    tspec = doc["spec"]["template"]["spec"]
    tspec["nodeSelector"] = {"kubernetes.io/hostname": node}
    tspec["domain"]["devices"]["interfaces"] = [{"name": "default", binding: {}, **({"ports": ports} if ports else {})}]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    kvtool("apply", "-f", str(path), "--stack", f"network-{name}", "--auto-approve", check=True)  # a stack per VM
    vmi = wait_running(cluster, name, timeout=180)
    pod = _launcher_pod(cluster, name)
    assert vmi["status"]["nodeName"] == node
    _marker(name, guest_scripts.MARKER_HTTP)  # its httpd answers from now on
    return Running(name, node, pod["status"]["podIP"], pod["metadata"]["uid"], pod["metadata"]["name"])


def _console(name: str) -> str:
    return kvtool("console", name, "--tail").stdout


def _marker(name: str, text: str, timeout: float = 90) -> str:
    return wait_for(lambda: next((line for line in _console(name).splitlines() if text in line), None), timeout,
                    f"{text!r} on {name}'s console", describe=lambda: _console(name)[-3000:], interval=0.5)


def _fetcher(*urls: str) -> str:
    """User data that GETs each URL (retrying) and prints what it got: the guest as an HTTP client."""
    lines = ["#!/bin/sh"]
    for url in urls:
        lines += [f'for i in $(seq 1 40); do out=$(timeout 4 wget -q -O - "{url}" 2>/dev/null) && break; sleep 1; done',
                  f'echo "KVTEST-FETCH {url} -> $out"']
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def container(cluster: Cluster, baseline: Baseline) -> Iterator[Running]:
    """A plain process (python3's HTTP server in the launcher image) in its own pod network, on node 2."""
    name = f"net-box-{uuid.uuid4().hex[:5]}"
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"restartPolicy": "Never", "nodeSelector": {"kubernetes.io/hostname": NODE_2},
                         "containers": [{"name": "compute", "image": nh.launcher_image(cluster),
                                         "command": ["python3", "-c", nh.POD_HTTP_SERVER], "args": ["8080"],
                                         "env": [{"name": "KVTOOL_POD_NAME",
                                                  "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    pod = wait_for(lambda: (p := get(cluster, "pod", name)) and p["status"].get("phase") == "Running" and p, 90,
                   what=f"pod {name} Running", describe=lambda: cluster.kubectl("describe", "pod", name).stdout)
    running = Running(name, NODE_2, pod["status"]["podIP"], pod["metadata"]["uid"], name)
    node_ns = nh.node_netns(cluster, NODE_2)
    page = wait_for(lambda: nh.try_get(node_ns, f"http://{running.ip}:8080/"), 30, what="the pod's HTTP server",
                    describe=lambda: cluster.kubectl("logs", name, check=False).stdout)
    assert page == f"kvtool pod {name}\n"
    yield running
    cluster.kubectl("delete", "pod", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def vm_a(cluster: Cluster, tiny_image: str, container: Running, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Running]:
    """masquerade on node 1, port 80 only; its guest fetches the container's page (node 2)."""
    name = f"net-a-{uuid.uuid4().hex[:5]}"
    yield _start_vm(cluster, tmp_path_factory.mktemp("a"), name, NODE_1, "masquerade", ports=[{"port": 80}],
                    user_data=_fetcher(f"http://{container.ip}:8080/"))
    cluster.kubectl("delete", "vm", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def vm_b(cluster: Cluster, tiny_image: str, vm_a: Running, container: Running,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """bridge on node 2; its guest fetches VM A's page (node 1) and the container's (node 2)."""
    name = f"net-b-{uuid.uuid4().hex[:5]}"
    yield _start_vm(cluster, tmp_path_factory.mktemp("b"), name, NODE_2, "bridge",
                    user_data=_fetcher(f"http://{vm_a.ip}/", f"http://{container.ip}:8080/"))
    cluster.kubectl("delete", "vm", name, "--wait=false", check=False)


def test_masquerade_vm_gets_dhcp_and_answers_on_its_pod_ip(cluster: Cluster, vm_a: Running,
                                                          container: Running) -> None:
    pod_cidr = nh.pod_cidr(cluster, NODE_1)
    assert str(pod_cidr) == nodenet.ClusterNetwork.pod_cidr(1) and IP4(vm_a.ip) in pod_cidr
    assert "KVTOOL-GUEST-IP eth0 10.0.2.2/24 gw=10.0.2.1" in _marker(vm_a.name, "KVTOOL-GUEST-IP")
    iface = wait_for(lambda: (i := get(cluster, "vmi", vm_a.name)["status"]["interfaces"][0])["infoSource"]
                     == "domain, serial-console" and i, 30, what="the guest's lease in the VMI status")
    assert iface["ipAddress"] == vm_a.ip and iface["ipAddresses"] == [vm_a.ip] and iface["podInterfaceName"] == "eth0"
    for node in (NODE_1, NODE_2):  # from its own node and across nodes
        assert _page(cluster, nh.node_netns(cluster, node), vm_a) == f"kvtool guest {vm_a.name}\n"
    # The guest as a client, across nodes: SNAT to its pod IP, routed between the nodes' namespaces.
    assert f"-> kvtool pod {container.name}" in _marker(vm_a.name, "KVTEST-FETCH")


def test_expose_and_port_forward_reach_the_vm_from_the_host(cluster: Cluster, vm_a: Running) -> None:
    kvtool("expose", vm_a.name, "--port", "8080", "--target-port", "80", check=True)
    slices = lambda: json.loads(cluster.kubectl(  # noqa: E731
        "get", "endpointslices", "-l", f"kubernetes.io/service-name={vm_a.name}", "-o", "json").stdout)["items"]
    wait_for(lambda: any(vm_a.ip in e["addresses"] for s in slices() for e in s.get("endpoints") or []), 30,
             what="the Service's endpoint (the launcher pod's IP)")
    proc = subprocess.Popen([*KVTOOL, "port-forward", f"svc/{vm_a.name}", ":8080"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("Forwarding from 127.0.0.1:") and f"-> {vm_a.ip}:80" in line, line + proc.stderr.read()
        local = int(line.split("127.0.0.1:", 1)[1].split()[0])
        import urllib.request

        for _ in range(3):  # every request a new connection through the relay
            with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as reply:
                assert reply.read().decode() == f"kvtool guest {vm_a.name}\n"
    finally:
        proc.terminate()
        proc.wait(10)
    cluster.kubectl("delete", "service", vm_a.name)


def test_bridge_vm_owns_the_pod_ip_and_reaches_vms_and_pods(cluster: Cluster, vm_a: Running, vm_b: Running,
                                                           container: Running) -> None:
    gateway = nh.pod_cidr(cluster, NODE_2).network_address + 1
    seen = _marker(vm_b.name, "KVTOOL-GUEST-IP")
    assert seen.endswith(f"KVTOOL-GUEST-IP eth0 {vm_b.ip}/24 gw={gateway}"), seen  # guest-observed IP == pod IP
    assert get(cluster, "vmi", vm_b.name)["status"]["interfaces"][0]["ipAddress"] == vm_b.ip
    for node in (NODE_2, NODE_1):  # from its own node and across nodes
        assert _page(cluster, nh.node_netns(cluster, node), vm_b) == f"kvtool guest {vm_b.name}\n"
    wait_for(lambda: _console(vm_b.name).count("KVTEST-FETCH") == 2, 90, interval=0.5, what="VM B's two fetches",
             describe=lambda: _console(vm_b.name)[-3000:] + _debug(cluster, vm_a, vm_b))
    console = _console(vm_b.name)
    assert f"KVTEST-FETCH http://{vm_a.ip}/ -> kvtool guest {vm_a.name}" in console  # VM -> VM, across nodes
    assert f"KVTEST-FETCH http://{container.ip}:8080/ -> kvtool pod {container.name}" in console  # VM -> pod


def _page(cluster: Cluster, netns: nh.Netns, r: Running) -> str:
    """The VM's page at its pod IP, fetched from netns; a failure says what the nodes and the pod held."""
    try:
        return nh.http_get(netns, f"http://{r.ip}/")
    except OSError as exc:
        raise AssertionError(f"GET http://{r.ip}/ ({r.name}) from {netns}: {exc}\n{_debug(cluster, r)}") from exc


def _debug(cluster: Cluster, *rs: Running) -> str:
    """The nodes' and the pods' addresses, neighbours, rules and bridge tables, for a failure message."""
    out = []
    for node in (NODE_1, NODE_2):
        ns = nh.node_netns(cluster, node)
        out += [node, nh.sh("ip", "neigh", netns=ns).stdout, nh.sh("ip", "-br", "link", netns=ns).stdout,
                nh.sh("ip", "route", netns=ns).stdout]
    for r in rs:
        try:
            ns_file = nh.pod_netns(cluster, r.node, r.pod_uid)
        except AssertionError as exc:
            out.append(str(exc))
            continue
        out += [r.name, nh.sh("ip", "-br", "addr", netns=ns_file).stdout, nh.sh("ip", "neigh", netns=ns_file).stdout,
                nh.sh("nft", "list", "ruleset", netns=ns_file).stdout, nh.sh("bridge", "fdb", netns=ns_file).stdout]
    return "\n".join(out)


def test_a_process_in_another_pod_reaches_the_vms(cluster: Cluster, vm_a: Running, vm_b: Running,
                                                   container: Running) -> None:
    pod_ns = nh.pod_netns(cluster, container.node, container.pod_uid)
    addresses = nh.sh("ip", "-4", "-br", "addr", "show", "dev", "eth0", netns=pod_ns).stdout
    assert f" {container.ip}/" in addresses, addresses  # the container pod's own namespace, not its node's
    assert _page(cluster, pod_ns, vm_a) == f"kvtool guest {vm_a.name}\n"  # other node, masquerade
    assert _page(cluster, pod_ns, vm_b) == f"kvtool guest {vm_b.name}\n"  # same node, bridge


def _lease_renewed_since(cluster: Cluster, node: str, since: datetime) -> bool:
    renewed = cluster.kubectl("-n", "kube-node-lease", "get", "lease", node, "-o", "jsonpath={.spec.renewTime}",
                              check=False).stdout.strip()
    return bool(renewed) and datetime.fromisoformat(renewed) > since


def test_kubelet_restart_keeps_running_pods_and_their_networks(cluster: Cluster, vm_a: Running) -> None:
    """A kubelet that starts again adopts the pods it finds running: nothing is killed or re-addressed."""
    before = _launcher_pod(cluster, vm_a.name)
    container_id = before["status"]["containerStatuses"][0]["containerID"]
    qemu = wait_for(lambda: qemu_for(f"default_{vm_a.name}"), 30, what="VM A's QEMU")
    reservation = nh.ipam_reservations(cluster, NODE_1).get(vm_a.ip)
    assert reservation, f"no host-local reservation for {vm_a.ip}"
    kvtool("cluster", "restart-component", f"kubelet-{NODE_1}", check=True)
    restarted = datetime.now(UTC)  # the old kubelet has exited by now
    wait_for(lambda: _lease_renewed_since(cluster, NODE_1, restarted), 90,
             what=f"the restarted kubelet of {NODE_1} renewing its node lease")
    # The new kubelet has the pod (exec finds it once the kubelet's pod sources have synced).
    wait_for(lambda: cluster.kubectl("exec", before["metadata"]["name"], "--", "true", check=False).returncode == 0,
             60, what="`kubectl exec` into the launcher through the restarted kubelet",
             describe=lambda: cluster.kubectl("exec", before["metadata"]["name"], "--", "true", check=False).stderr)
    pod = _launcher_pod(cluster, vm_a.name)
    assert pod["metadata"]["uid"] == vm_a.pod_uid and pod["status"]["podIP"] == vm_a.ip
    assert pod["status"]["containerStatuses"][0]["containerID"] == container_id
    assert qemu_for(f"default_{vm_a.name}") == qemu, "the VM's QEMU was replaced"
    assert nh.ipam_reservations(cluster, NODE_1).get(vm_a.ip) == reservation  # host-local's state outlives it
    assert _page(cluster, nh.node_netns(cluster, NODE_1), vm_a) == f"kvtool guest {vm_a.name}\n"


def test_deleting_leaves_no_process_address_port_or_rule(cluster: Cluster, baseline: Baseline, vm_a: Running,
                                                         vm_b: Running, container: Running) -> None:
    gone = [vm_a, vm_b, container]
    vm_a_ns = nh.pod_netns(cluster, vm_a.node, vm_a.pod_uid)
    assert "tap0" in nh.links(vm_a_ns) and "kvtool" in nh.sh("nft", "list", "tables", netns=vm_a_ns).stdout
    sandboxes = {r.name: nh.ipam_reservations(cluster, r.node).get(r.ip) for r in gone}
    assert all(sandboxes.values()), f"host-local reserved no address for some pod: {sandboxes}"
    assert all(nh.pod_pids(cluster, r.node, r.pod_uid) for r in gone)
    cluster.kubectl("delete", "vm", vm_a.name, vm_b.name, "--wait=false")
    cluster.kubectl("delete", "pod", container.name, "--wait=false")
    started = time.monotonic()
    for r in gone:
        wait_for(lambda r=r: not nh.pod_pids(cluster, r.node, r.pod_uid) and get(cluster, "pod", r.pod_name) is None,
                 90, what=f"{r.name}'s pod and processes gone", describe=describe_vm(cluster, r.name))
    print(f"\ndelete -> all three pods and their processes gone: {time.monotonic() - started:.1f}s")
    for node in (NODE_1, NODE_2):
        wait_for(lambda node=node: not set(sandboxes.values()) & set(nh.ipam_reservations(cluster, node).values()),
                 30, what=f"{node}'s host-local reservations of the deleted pods released",
                 describe=lambda node=node: f"{nh.ipam_reservations(cluster, node)} vs {sandboxes}")
        ns = nh.node_netns(cluster, node)
        wait_for(lambda node=node, ns=ns: len(nh.bridge_ports(ns)) <= len(baseline.cni_ports[node]), 30,
                 what=f"{node}'s cni0 back to at most its ports before the test's pods",
                 describe=lambda node=node, ns=ns: f"now {nh.bridge_ports(ns)}, before {baseline.cni_ports[node]}")
    assert nh.root_nft_tables() <= baseline.root_tables, "a table in the machine's own namespace"
