"""The embedded nodes' configuration files (pure): each node's own paths, addresses and cgroups."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import yaml

from kvtool.local import components, nodeconf, nodenet


def _plan(index: int = 1) -> nodeconf.NodePlan:
    net = nodenet.ClusterNetwork(cluster_id="0123abcd", subnet="10.210.7.0/24")
    return nodeconf.NodePlan(
        name=f"kvtool-node-{index}", ip=net.node_ip(index), gateway=net.gateway, pod_cidr=net.pod_cidr(index),
        cluster_cidr=nodenet.CLUSTER_CIDR, service_cidr="10.96.0.0/16", netns=net.node_netns(index),
        cgroup_root=f"/kvt-0123abcd/kvtool-node-{index}", state_dir=Path(f"/h/nodes/kvtool-node-{index}"),
        run_dir=Path(f"/run/kvt-0123abcd/ctr-kvtool-node-{index}"))


def test_cluster_network_names_and_addresses() -> None:
    net = nodenet.ClusterNetwork(cluster_id="0123abcd", subnet="10.210.7.0/24")
    assert net.bridge == "kvt0123abcd" and net.gateway == "10.210.7.1"
    assert [net.node_ip(i) for i in (1, 2)] == ["10.210.7.11", "10.210.7.12"]
    assert [net.pod_cidr(i) for i in (1, 2)] == ["10.244.0.0/24", "10.244.1.0/24"]
    assert net.node_netns(2) == "kvt-0123abcd-2" and len(net.host_veth(16)) <= 15


def test_candidate_subnets_are_private_and_differ_between_homes() -> None:
    one, two = nodenet._candidates("0123abcd"), nodenet._candidates("89abcdef")
    assert one[0] != two[0]
    assert all(n.subnet_of(nodenet.ipaddress.IPv4Network("10.0.0.0/8")) and n.prefixlen == 24 for n in one)


def test_containerd_config_is_the_nodes_own() -> None:
    plan = _plan(2)
    conf = tomllib.loads(nodeconf.containerd_config(plan, "kvtool.io/pause:abc", "/usr/sbin/runc"))
    assert conf["version"] == 3
    assert conf["root"] == "/h/nodes/kvtool-node-2/containerd"
    assert conf["grpc"]["address"] == str(plan.containerd_socket)
    cri = conf["plugins"]["io.containerd.cri.v1.runtime"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["containerd"]["runtimes"]["runc"]["options"] == {"BinaryName": "/usr/sbin/runc", "SystemdCgroup": False}
    assert cri["cni"]["conf_dir"] == "/h/nodes/kvtool-node-2/cni/net.d"
    assert conf["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"] == "kvtool.io/pause:abc"
    assert conf["plugins"]["io.containerd.nri.v1.nri"] == {"disable": True}, "no host-wide NRI socket to race for"


def test_cni_network_uses_the_nodes_pod_cidr_and_its_own_state() -> None:
    conf = json.loads(nodeconf.cni_conflist(_plan(2)))
    bridge = conf["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]]
    assert bridge["ipam"]["dataDir"].startswith("/h/nodes/kvtool-node-2/")


def test_kubelet_config_matches_the_runtime_and_isolates_the_node() -> None:
    conf = yaml.safe_load(nodeconf.kubelet_config(_plan(1), Path("/h/pki/ca.crt")))
    assert conf["cgroupDriver"] == "cgroupfs" and conf["failCgroupV1"] is False
    assert conf["cgroupRoot"] == "/kvt-0123abcd/kvtool-node-1"
    assert conf["address"] == "10.210.7.11" and conf["readOnlyPort"] == 0
    assert conf["podLogsDir"] == "/h/nodes/kvtool-node-1/pod-logs"
    assert conf["authorization"]["mode"] == "Webhook" and conf["authentication"]["anonymous"]["enabled"] is False
    assert conf["containerRuntimeEndpoint"].endswith("ctr-kvtool-node-1/containerd/containerd.sock")
    assert conf["clusterDNS"] == ["10.210.7.1"] and conf["clusterDomain"] == "cluster.local"  # the machine's CoreDNS


def test_the_cluster_dns_answers_on_the_gateway_and_forwards_elsewhere(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# comment\nnameserver 127.0.0.53\nnameserver 10.210.7.1\nnameserver 10.255.255.53\n"
                      "search example.org\n")
    assert components.host_nameservers("10.210.7.1", resolv) == ["127.0.0.53", "10.255.255.53"]  # not itself
    assert components.host_nameservers("10.210.7.1", tmp_path / "missing") == []
    conf = components.corefile("10.210.7.1", Path("/h/kubeconfigs/coredns.kubeconfig"), 40001, ["10.255.255.53"])
    assert "bind 10.210.7.1\n" in conf and "ready 127.0.0.1:40001\n" in conf
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa {\n        kubeconfig /h/kubeconfigs/coredns.kubeconfig\n" \
        in conf
    assert "forward . 10.255.255.53\n" in conf
    assert "forward" not in components.corefile("10.210.7.1", Path("/k"), 40001, [])  # nothing to forward to
    assert conf.count("{") == conf.count("}")


def test_kube_proxy_config_touches_no_machine_wide_setting() -> None:
    conf = yaml.safe_load(nodeconf.kube_proxy_config(_plan(1), Path("/h/kubeconfigs/kube-proxy.kubeconfig")))
    assert conf["conntrack"]["maxPerCore"] == 0 and conf["hostnameOverride"] == "kvtool-node-1"
    assert conf["clusterCIDR"] == "10.244.0.0/16" and conf["mode"] == "nftables"
