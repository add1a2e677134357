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

from kvtool.local import bootstrap, components
from kvtool.local import pki as pki_mod
from kvtool.local.layout import Layout
from kvtool.local.state import ClusterState
from kvtool.local.supervisor import Step


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

    steps: list[tuple[str, Step]] = [
        ("etcd", [components.etcd(layout, binary, etcd_port, peer_port)]),
        ("apiserver", [components.apiserver(layout, binary, api_port, etcd_port, p)]),
        ("bootstrap", lambda: bootstrap.run(layout.kubeconfig)),
        ("scheduler and controller-manager", [components.scheduler(layout, binary, sched_port),
                                              components.controller_manager(layout, binary, cm_port, p)]),
        ("service accounts", wait_default_serviceaccount),
    ]
    state.progress.append(f"started supervisor at {time.strftime('%H:%M:%S')}")
    return steps
