"""The ordered start-up plan of an embedded cluster, run by the supervisor.

etcd → apiserver (/readyz) → bootstrap objects → scheduler and
controller-manager → kvtool's runtime components. Each step is either a set
of components started together and awaited, or a function (a hook).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from kvtool import __version__, paths
from kvtool.local import bootstrap, components
from kvtool.local import pki as pki_mod
from kvtool.local.layout import Layout
from kvtool.local.state import ClusterState
from kvtool.local.supervisor import Step

LAUNCHER_IMAGE = f"kvtool.io/launcher:{__version__}"


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


def startup_plan(layout: Layout, state: ClusterState, config: dict[str, Any]) -> list[tuple[str, Step]]:
    binary = Path(config["binary"])
    state.binary = str(binary)
    for d in (layout.logs, layout.kubeconfigs):
        d.mkdir(parents=True, exist_ok=True)
    layout.etcd_data.mkdir(mode=0o700, exist_ok=True)
    p = pki_mod.PKI(layout.pki)
    p.ensure()

    api_port = int(config.get("apiserver_port") or 0) or free_port()
    etcd_port, peer_port, sched_port, cm_port = (free_port() for _ in range(4))
    server = f"https://127.0.0.1:{api_port}"
    state.server = server

    pki_mod.write_kubeconfig(layout.kubeconfig, server, p, "kvtool-admin",
                             cert=p.cert(pki_mod.ADMIN.file_stem), key=p.key(pki_mod.ADMIN.file_stem))
    for ident in (pki_mod.SCHEDULER, pki_mod.CONTROLLER_MANAGER):
        cert, key = p.ensure_client(ident)
        pki_mod.write_kubeconfig(layout.component_kubeconfig(ident.file_stem), server, p, ident.common_name,
                                 cert=cert, key=key)

    def wait_default_serviceaccount() -> None:
        bootstrap.wait_for_service_account(layout.kubeconfig, "default", "default", timeout=60)

    nodes: list[str] = list(config.get("nodes", []))
    for node in nodes:
        cert, key = p.ensure_client(pki_mod.node_identity(node))
        pki_mod.write_kubeconfig(layout.component_kubeconfig(f"node-{node}"), server, p, f"system:node:{node}",
                                 cert=cert, key=key)

    def wait_nodes_ready() -> None:
        bootstrap.wait_for_nodes_ready(layout.kubeconfig, nodes, timeout=90)

    def write_tokens() -> None:
        """Service-account tokens for kvtool's components, bound to each handler's Node."""
        token = bootstrap.service_account_token(layout.kubeconfig, "kvtool-controller")
        pki_mod.write_kubeconfig(layout.component_kubeconfig("controller"), server, p,
                                 "system:serviceaccount:kvtool-system:kvtool-controller", token=token)
        for node in nodes:
            token = bootstrap.service_account_token(layout.kubeconfig, "kvtool-handler", node=node)
            pki_mod.write_kubeconfig(layout.component_kubeconfig(f"handler-{node}"), server, p,
                                     "system:serviceaccount:kvtool-system:kvtool-handler", token=token)

    bare = bool(config.get("bare"))
    steps: list[tuple[str, Step]] = [
        ("etcd", [components.etcd(layout, binary, etcd_port, peer_port)]),
        ("apiserver", [components.apiserver(layout, binary, api_port, etcd_port, p)]),
        ("bootstrap", lambda: bootstrap.run(layout.kubeconfig, bare=bare)),
        ("scheduler and controller-manager", [components.scheduler(layout, binary, sched_port, p),
                                              components.controller_manager(layout, binary, cm_port, p)]),
        ("service accounts", wait_default_serviceaccount),
    ]
    if not bare:
        if nodes:
            steps.append(("node agents", node_agents(layout, nodes, config)))
            steps.append((f"{len(nodes)} node(s)", wait_nodes_ready))
        steps.append(("component tokens", write_tokens))
        steps.append(("controller and handlers", controller_and_handlers(layout, nodes, config)))
    state.progress.append(f"started supervisor at {time.strftime('%H:%M:%S')}")
    return steps


def node_agents(layout: Layout, nodes: list[str], config: dict[str, Any]) -> list[components.ComponentSpec]:
    """The kubelet's stand-ins, one per node, each with its own system:node credentials."""
    from kvtool.images import store

    image = config.get("launcher_image") or LAUNCHER_IMAGE
    cache = paths.cache_dir() / "node-cache"
    specs = []
    for node in nodes:
        run_dir = layout.node_run_dir(node)
        specs.append(components.python_component(f"node-agent-{node}", [
            "node-agent", "--node", node, "--kubeconfig", str(layout.component_kubeconfig(f"node-{node}")),
            "--root", str(layout.node_dir(node)), "--run-dir", str(run_dir), "--launcher-image", image,
            "--pod-network", layout.cluster_id,
            "--hostpath-map", f"/var/run/kvtool={run_dir}",
            "--hostpath-map", f"/var/lib/kvtool/images={store.default_root()}",
            "--hostpath-map", f"/var/lib/kvtool/cache={cache}"]))
    return specs


def controller_and_handlers(layout: Layout, nodes: list[str],
                            config: dict[str, Any]) -> list[components.ComponentSpec]:
    """kvtool's controller and per-node handlers, with their service accounts' tokens (RBAC is real here)."""
    image = config.get("launcher_image") or LAUNCHER_IMAGE
    specs = [components.python_component("controller", [
        "controller", "--kubeconfig", str(layout.component_kubeconfig("controller")), "--launcher-image", image,
        "--leader-elect", "--lease-duration", "8", "--renew-deadline", "6", "--retry-period", "1"])]
    for node in nodes:
        specs.append(components.python_component(f"handler-{node}", [
            "handler", "--node", node, "--kubeconfig", str(layout.component_kubeconfig(f"handler-{node}")),
            "--sockets-dir", str(layout.node_sockets(node))]))
    return specs
