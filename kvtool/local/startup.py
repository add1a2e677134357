"""The ordered start-up plan of an embedded cluster, run by the supervisor.

etcd → apiserver (/readyz) → bootstrap objects → scheduler and
controller-manager → the nodes (their namespaces, containerd, images, kubelet
and kube-proxy) → kvtool itself, installed by the very manifests of
`kvtool install`. Each step is either a set of components started together
and awaited, or a function (a hook).
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import Any

from kvtool import paths
from kvtool.clusterstate import ClusterState
from kvtool.errors import ClusterError
from kvtool.local import bootstrap, components, nodeconf, nodehost, nodeimages, nodenet, powerapi
from kvtool.local import pki as pki_mod
from kvtool.local.layout import Layout
from kvtool.local.supervisor import NodeHost, Step


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def node_plan(layout: Layout, net: nodenet.ClusterNetwork, index: int, name: str) -> nodeconf.NodePlan:
    return nodeconf.NodePlan(
        name=name, ip=net.node_ip(index), gateway=net.gateway, pod_cidr=net.pod_cidr(index),
        cluster_cidr=nodenet.CLUSTER_CIDR, service_cidr=components.SERVICE_CIDR, netns=net.node_netns(index),
        cgroup_root=f"{layout.cgroup_root}/{name}", state_dir=layout.node_dir(name),
        run_dir=layout.run_dir / f"ctr-{name}")


def mount_ns_file(layout: Layout, node: str) -> Path:
    return layout.run_dir / "mnt" / node


def node_binds(layout: Layout, node: str, images_root: Path, cache: Path) -> list[nodehost.Bind]:
    """The paths a real host has at fixed places, made the node's own (see kvtool.local.nodehost)."""
    return [nodehost.Bind(layout.node_run_dir(node), "/run/kvtool"),
            nodehost.Bind(layout.run_dir / f"ctr-{node}" / "shims", "/run/containerd"),
            # containerd pins pod network namespaces here: the node's own, so a node powered off leaves
            # no stale entries in the machine's `ip netns`.
            nodehost.Bind(layout.run_dir / f"ctr-{node}" / "netns", "/run/netns"),
            nodehost.Bind(layout.node_dir(node) / "cni" / "lib", "/var/lib/cni"),
            nodehost.Bind(images_root, "/var/lib/kvtool/images", read_only=True),
            nodehost.Bind(cache, "/var/lib/kvtool/cache")]


def startup_plan(layout: Layout, state: ClusterState, config: dict[str, Any]) -> list[tuple[str, Step]]:
    binary = Path(config["binary"])
    state.binary = str(binary)
    for d in (layout.logs, layout.kubeconfigs):
        d.mkdir(parents=True, exist_ok=True)
    layout.etcd_data.mkdir(mode=0o700, exist_ok=True)
    net = nodenet.choose(layout.home)
    nodenet.ensure_bridge(net)
    p = pki_mod.PKI(layout.pki)
    p.ensure(server_ips=(net.gateway,))

    api_port = int(config.get("apiserver_port") or 0) or free_port()
    etcd_port, peer_port, sched_port, cm_port = (free_port() for _ in range(4))
    server = f"https://{net.gateway}:{api_port}"
    state.server = server

    pki_mod.write_kubeconfig(layout.kubeconfig, server, p, "kvtool-admin",
                             cert=p.cert(pki_mod.ADMIN.file_stem), key=p.key(pki_mod.ADMIN.file_stem))
    for ident in (pki_mod.SCHEDULER, pki_mod.CONTROLLER_MANAGER, pki_mod.KUBE_PROXY, pki_mod.COREDNS):
        cert, key = p.ensure_client(ident)
        pki_mod.write_kubeconfig(layout.component_kubeconfig(ident.file_stem), server, p, ident.common_name,
                                 cert=cert, key=key)

    def wait_default_serviceaccount() -> None:
        bootstrap.wait_for_service_account(layout.kubeconfig, "default", "default", timeout=60)

    names: list[str] = list(config.get("nodes", []))
    nodes = [node_plan(layout, net, i, name) for i, name in enumerate(names, start=1)]
    for node in nodes:
        cert, key = p.ensure_client(pki_mod.node_identity(node.name))
        pki_mod.write_kubeconfig(layout.component_kubeconfig(f"node-{node.name}"), server, p,
                                 f"system:node:{node.name}", cert=cert, key=key)
    images = config.get("images", {})
    runtime = config.get("containerd", "")

    def prepare_nodes() -> None:
        """Each node's namespaces, cgroups and config files (idempotent: a restart finds them in place)."""
        from kvtool.images import store

        cache = paths.cache_dir() / "node-cache"
        for index, node in enumerate(nodes, start=1):
            nodenet.ensure_node(net, index, len(nodes))
            nodehost.ensure_cgroups(node.cgroup_root)
            nodehost.ensure_mount_namespace(mount_ns_file(layout, node.name),
                                            node_binds(layout, node.name, store.default_root(), cache))
            for d in (node.state_dir, node.pod_logs, node.cni_conf_dir, node.cni_state_dir,
                      node.containerd_socket.parent):
                d.mkdir(parents=True, exist_ok=True)
            write = paths.write_atomic
            write(node.containerd_config, nodeconf.containerd_config(node, images["pause"]["ref"], runc_binary()))
            write(node.cni_conf_dir / "10-kvtool.conflist", nodeconf.cni_conflist(node))
            write(node.kubelet_config, nodeconf.kubelet_config(node, p.ca_cert))
            write(node.kube_proxy_config,
                  nodeconf.kube_proxy_config(node, layout.component_kubeconfig(pki_mod.KUBE_PROXY.file_stem)))

    def import_images() -> None:
        nodeimages.import_all([n.containerd_socket for n in nodes], Path(runtime).parent / "ctr",
                              [Path(images[k]["archive"]) for k in ("pause", "launcher")],
                              [images[k]["ref"] for k in ("pause", "launcher")])

    def wait_nodes_ready() -> None:
        bootstrap.wait_for_nodes_ready(layout.kubeconfig, names, timeout=120,
                                       node_info={n.name: (n.pod_cidr, n.netns) for n in nodes})

    # The power switch fence agents use (kvtool.local.powerapi): kvtool's controller fails VMs over with it.
    switch_port = free_port()
    switch_cert, switch_key = p.ensure_server("power-switch", "kvtool-power-switch", net.gateway)
    switch_token = powerapi.ensure_token(layout.pki / "power-switch.token")

    def start_power_switch() -> None:
        powerapi.serve(net.gateway, switch_port, switch_cert, switch_key, switch_token, layout.control_socket)

    def install_kvtool() -> None:
        from kvtool.deploy import manifests

        fencing = [manifests.failover_config(fence_agent="embedded"), manifests.migration_config(),
                   manifests.embedded_fence_secret(f"https://{net.gateway}:{switch_port}", switch_token,
                                                   p.ca_cert.read_text())]
        bootstrap.install_kvtool(layout.kubeconfig, images["launcher"]["ref"], timeout=240, extra=fencing)

    bare = bool(config.get("bare"))
    steps: list[tuple[str, Step]] = [
        ("etcd", [components.etcd(layout, binary, etcd_port, peer_port)]),
        ("apiserver", [components.apiserver(layout, binary, net.gateway, api_port, etcd_port, p)]),
        ("bootstrap", lambda: bootstrap.run(layout.kubeconfig, bare=bare)),
        ("scheduler and controller-manager", [components.scheduler(layout, binary, sched_port, p),
                                              components.controller_manager(layout, binary, cm_port, p)]),
        ("service accounts", wait_default_serviceaccount),
    ]
    if not bare and nodes:
        enter = {n.name: nodehost.enter(mount_ns_file(layout, n.name), n.netns) for n in nodes}
        steps += [
            ("cluster DNS", [components.coredns(layout, Path(config["coredns"]), net.gateway, free_port())]),
            (f"{len(nodes)} node host(s)", prepare_nodes),
            ("containerd", [components.containerd(n, enter[n.name], Path(runtime)) for n in nodes]),
            ("images", import_images),
            ("kubelet and kube-proxy",
             [spec for n in nodes for spec in (
                 components.kubelet(n, enter[n.name], binary, layout.component_kubeconfig(f"node-{n.name}")),
                 components.kube_proxy(n, enter[n.name], binary))]),
            (f"{len(nodes)} node(s) Ready", wait_nodes_ready),
            ("node power switch", start_power_switch),
            ("kvtool controller and handlers", install_kvtool),
        ]
    state.progress.append(f"started supervisor at {time.strftime('%H:%M:%S')}")
    return steps


def node_hosts(layout: Layout, config: dict[str, Any]) -> list[NodeHost]:
    """The nodes as the supervisor's power and network switches see them."""
    if config.get("bare"):
        return []
    net = nodenet.choose(layout.home)
    return [NodeHost(plan.name, plan.cgroup_root, plan.netns, net.gateway)
            for plan in (node_plan(layout, net, i, name) for i, name in enumerate(config.get("nodes", []), start=1))]


def runc_binary() -> str:
    found = shutil.which("runc") or shutil.which("runc", path="/usr/sbin:/sbin")
    if not found:
        raise ClusterError("runc is not installed", hint="run `make setup` (apt package runc)")
    return found


def teardown(layout: Layout) -> list[str]:
    """Power off every node of the home's cluster and remove what made them hosts; what was removed.

    Idempotent, and safe with nothing running: `cluster down` calls it after the supervisor stopped.
    """
    root = layout.cgroup_root
    killed = nodehost.kill_cgroup(root)
    removed = [f"{killed} node process(es)"] if killed else []
    nodehost.remove_cgroups(root)
    mnt = layout.run_dir / "mnt"
    if mnt.is_dir():
        for ns_file in mnt.iterdir():
            nodehost.remove_mount_namespace(ns_file)
        nodehost.remove_private_dir(mnt)
    removed += nodenet.remove(layout.home)
    if layout.run_dir.is_dir():  # sockets and containerd state: nothing of them survives the processes
        shutil.rmtree(layout.run_dir, ignore_errors=True)
    return removed
