"""`kvtool node-agent`: run the pods bound to one embedded-cluster node (the kubelet's stand-in).

`kvtool node-agent pause` is the node's pause process, like Kubernetes' pause container: it does
nothing until SIGTERM/SIGINT, then exits 0 (after --term-delay seconds, the way a container with a
slow graceful shutdown would). A pod with command ["kvtool", "node-agent", "pause"] is how to check
that a node really runs pods without starting a VM.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import time
from pathlib import Path

from kvtool import __version__, paths
from kvtool.api import quantity
from kvtool.errors import ConfigError
from kvtool.local.layout import Layout

DEFAULT_IMAGE = f"kvtool.io/launcher:{__version__}"


EPILOG = """\
The agent registers Node NAME, renews its Lease every 10 s and runs the pods bound to it as host
processes under ROOT/pods/<pod uid>/ (container output in compute.log there). It runs only
launcher pods (docs/runtime.md) and fails any other pod with reason UnsupportedPod.
On SIGTERM/SIGINT it exits and leaves its containers running, as kubelet does: the next agent for
the node adopts them (same pid), stops those whose pods were deleted meanwhile, and reports how
any that ended meanwhile exited.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("action", nargs="?", choices=("run", "pause"), default="run",
                        help="run: the agent (default); pause: the node's pause process (sleeps until SIGTERM)")
    parser.add_argument("--node", help="the Node's name (the kubeconfig must be system:node:NAME's)")
    parser.add_argument("--root", type=Path, help="the node's state dir; pods live in ROOT/pods/<uid> "
                                                  "(default $KVTOOL_HOME/nodes/NAME)")
    parser.add_argument("--run-dir", type=Path, help="short runtime dir backing hostPath /var/run/kvtool unless "
                                                     "--hostpath-map says otherwise (default ROOT/run)")
    parser.add_argument("--launcher-image", default=DEFAULT_IMAGE,
                        help=f"the one image this node runs (default {DEFAULT_IMAGE})")
    parser.add_argument("--cpu", type=int, help="CPU capacity to report (default: this machine's CPUs)")
    parser.add_argument("--memory", help="memory capacity to report, e.g. 8Gi (default: this machine's MemTotal)")
    parser.add_argument("--pods", type=int, default=110, help="pod capacity (default 110)")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="extra Node label")
    parser.add_argument("--hostpath-map", action="append", default=[], metavar="CONTAINER_PATH=HOST_DIR",
                        help="back hostPath volumes at or under CONTAINER_PATH with HOST_DIR (repeatable); "
                             "others go under ROOT/hostpath/")
    parser.add_argument("--pod-network", metavar="CLUSTER_ID",
                        help="give each pod its own network namespace and an IP from the node's podCIDR, on the "
                             "pod network of embedded cluster CLUSTER_ID (8 hex digits; `kvtool cluster up` passes "
                             "its own); without it pods share the host's network and get pod IP 127.0.0.1")
    parser.add_argument("--http", type=int, metavar="PORT",
                        help="pause only: also answer HTTP GET on 0.0.0.0:PORT (a plain process listening in its "
                             "pod's network, to compare a VM with)")
    parser.add_argument("--term-delay", type=float, default=0.0,
                        help="pause only: seconds to linger after SIGTERM before exiting")


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {value!r} is not KEY=VALUE")
        pairs.append((key, val))
    return pairs


def _serve_http(port: int) -> None:
    """A tiny HTTP server on a daemon thread: GET answers `kvtool pod <pod name>`."""
    import http.server
    import threading

    body = f"kvtool pod {os.environ.get('KVTOOL_POD_NAME', os.getpid())}\n".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    print(f"pause: serving HTTP on port {port}", flush=True)


def pause(term_delay: float, http_port: int | None = None) -> int:
    """Sleep until SIGTERM or SIGINT; then linger term_delay seconds and exit 0."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    if http_port is not None:
        _serve_http(http_port)
    print(f"pause: waiting for SIGTERM (pid {os.getpid()})", flush=True)
    sig = signal.sigwait({signal.SIGTERM, signal.SIGINT})
    print(f"pause: got {signal.Signals(sig).name}; exiting in {term_delay:g}s", flush=True)
    time.sleep(term_delay)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "pause":
        return pause(args.term_delay, args.http)
    from kvtool.kube import clients
    from kvtool.nodeagent.agent import Agent, AgentConfig

    if not args.node:
        raise ConfigError("node-agent needs --node NAME")
    if not args.kubeconfig:
        raise ConfigError("node-agent needs --kubeconfig with the node's own credentials",
                          hint=f"a kubeconfig for system:node:{args.node} (group system:nodes)")
    if args.pod_network and not re.fullmatch(r"[0-9a-f]{8}", args.pod_network):
        raise ConfigError(f"--pod-network {args.pod_network!r} is not 8 lower-case hex digits")
    if args.memory:
        try:
            quantity.parse(args.memory)
        except quantity.QuantityError as exc:
            raise ConfigError(f"--memory: {exc}") from exc
    maps = []
    for container_path, host_dir in _pairs(args.hostpath_map, "--hostpath-map"):
        if not container_path.startswith("/") or not host_dir.startswith("/"):
            raise ConfigError(f"--hostpath-map {container_path}={host_dir}: both paths must be absolute")
        maps.append((container_path.rstrip("/") or "/", Path(host_dir)))
    root = (args.root or Layout(paths.kvtool_home()).node_dir(args.node)).absolute()
    config = AgentConfig(node=args.node, root=root, run_dir=(args.run_dir or root / "run").absolute(),
                         image=args.launcher_image, hostpath_maps=tuple(maps), cpu=args.cpu, memory=args.memory,
                         pods=args.pods, labels=dict(_pairs(args.label, "--label")), pod_network=args.pod_network)
    # The agent is a daemon: its INFO lines are its record of what it did, -v or not.
    logging.getLogger("kvtool.nodeagent").setLevel(logging.INFO)
    return Agent(config, clients.api_client(args.kubeconfig, args.context)).run()
