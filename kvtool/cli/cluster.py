"""`kvtool cluster up | down | status | restart`: the embedded cluster on this machine."""

from __future__ import annotations

import argparse
import sys

from kvtool import paths
from kvtool.errors import KvtoolError
from kvtool.kube import config as kubeconfig
from kvtool.local import build, cluster


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="start the embedded cluster (idempotent)")
    up.add_argument("--nodes", type=int, default=2,
                    help="nodes to run, each a kubelet + containerd + kube-proxy host (default 2)")
    up.add_argument("--port", type=int, help="apiserver port (default: a free port)")
    up.add_argument("--timeout", type=float, default=cluster.UP_TIMEOUT, help="seconds to wait for readiness")
    up.add_argument("--bare", action="store_true",
                    help="only the Kubernetes control plane: no kvtool CRDs, RBAC or components (try `kvtool install`)")
    up.add_argument("-q", "--quiet", action="store_true")
    down = sub.add_parser("down", help="stop every process of the embedded cluster")
    down.add_argument("--purge", action="store_true", help=f"also delete the state dir ({paths.kvtool_home()})")
    down.add_argument("-q", "--quiet", action="store_true")
    sub.add_parser("status", help="show each component's state, PID, port, and the API's readiness")
    sub.add_parser("build", help="build (or find cached) the control-plane, containerd and pause binaries")
    for verb in ("stop", "start", "restart"):
        sp = sub.add_parser(f"{verb}-component", help=f"{verb} one component of the running cluster")
        sp.add_argument("component")
    node = sub.add_parser("node", help="simulate node faults: power a node off or on, cut it off the network")
    node_sub = node.add_subparsers(dest="node_action", metavar="ACTION", required=True)
    for verb, text in NODE_ACTIONS.items():
        node_sub.add_parser(verb, help=text).add_argument("name", help="the node, e.g. kvtool-node-1")


NODE_ACTIONS = {
    "stop": "power off: every process of the node (kubelet, containerd, pods, QEMU) dies at once",
    "start": "power on a stopped node: its containerd, kubelet and kube-proxy start again",
    "partition": "cut the node off from the API server; it and its VMs keep running",
    "heal": "undo partition",
    "status": "whether the node is powered on and connected",
}


FAULTS = {"off": "powered off (kvtool cluster node start)", "partitioned": "partitioned (kvtool cluster node heal)"}


def run(args: argparse.Namespace) -> int:
    home = paths.kvtool_home()
    if args.action == "up":
        if args.nodes < 0 or args.nodes > 16:
            raise KvtoolError(f"--nodes must be between 0 and 16, got {args.nodes}")
        cluster.up(home, nodes=args.nodes, apiserver_port=args.port, quiet=args.quiet, timeout=args.timeout,
                   bare=args.bare)
        return 0
    if args.action == "down":
        cluster.down(home, purge=args.purge, quiet=args.quiet)
        return 0
    if args.action == "build":
        for binary in build.ensure_all(progress=True):
            print(binary)
        return 0
    if args.action == "node":
        reply = cluster.control(home, f"node-{args.node_action}", node=args.name)
        shown = {k: v for k, v in reply.items() if k not in ("ok", "node")}
        print(f"{args.name}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
        return 0
    if args.action.endswith("-component"):
        reply = cluster.control(home, args.action.removesuffix("-component"), args.component)
        print(f"{args.component}: {reply.get('state')} (pid {reply.get('pid')})")
        return 0
    return _status(home, args)


def _status(home, args: argparse.Namespace) -> int:
    st = cluster.status(home)
    if st.phase == "absent":
        print(f"No embedded cluster in {home}. Start one with `kvtool cluster up`.")
        return 1
    print(f"Cluster:    {st.phase} ({home})")
    print(f"API:        {st.server}  {'ready' if st.api_ready else 'NOT ready'}")
    try:
        print(f"Kubeconfig: {kubeconfig.resolve(args.kubeconfig, args.context).describe()}")
    except KvtoolError as exc:
        print(f"Kubeconfig: none ({exc.message})")
    if st.error:
        print(f"Error:      {st.error}")
    print()
    width = max([22, *(len(c.name) + 1 for c in st.components)])
    header = f"{'COMPONENT':<{width}} {'STATE':<9} {'PID':>8} {'PORT':>6} {'RESTARTS':>8}  LAST EXIT"
    print(header)
    for c in st.components:
        print(f"{c.name:<{width}} {c.state:<9} {c.pid or '-':>8} {c.port or '-':>6} {c.restarts:>8}  "
              f"{c.last_exit or '-'}")
    healthy = st.phase == "running" and st.api_ready and all(c.state == "running" for c in st.components)
    if st.api_ready:
        nodes = cluster.nodes(home)
        if nodes:
            print()
            print(f"{'NODE':<16} {'STATUS':<9} {'INTERNAL-IP':<15} {'KUBELET':<9} {'RUNTIME':<20} {'PODS':>4}  FAULT")
            for n in nodes:
                fault = FAULTS.get(st.node_faults.get(n.name, ""), "-")
                print(f"{n.name:<16} {n.status:<9} {n.internal_ip:<15} {n.kubelet:<9} {n.runtime:<20} {n.pods:>4}  "
                      f"{fault}")
            healthy = healthy and all(n.status == "Ready" for n in nodes) and not st.node_faults
    sys.stdout.flush()
    return 0 if healthy else 1
