"""`kvtool handler --node N`: run the per-node handler (a DaemonSet in real clusters)."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from kvtool.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", required=True, help="the node this handler serves")
    parser.add_argument("--sockets-dir", type=Path, default=Path("/var/run/kvtool/sockets"),
                        help="where launchers put their sockets (default /var/run/kvtool/sockets)")
    parser.add_argument("--namespace", default="kvtool-system", help="kvtool's namespace: the heartbeat Lease's")
    parser.add_argument("--migration-address", default=os.environ.get("POD_IP", ""),
                        help="the address other nodes' handlers reach this one on for live migration "
                             "(default: $POD_IP, the handler pod's IP)")
    parser.add_argument("--health-port", type=int, default=0, help="serve /healthz, /readyz, /metrics (0: off)")
    common.add_in_cluster(parser)


def run(args: argparse.Namespace) -> int:
    from kvtool.handler import operator

    common.configure_daemon_logging()
    res, _ = common.daemon_connection(args)
    handler = operator.Handler(res, args.node, args.sockets_dir, args.namespace, args.migration_address)
    registry = operator.build_registry(handler)
    if args.health_port:
        from kvtool import observe

        observe.serve(args.health_port, healthy=lambda: True)

    async def main() -> None:
        import kopf

        await kopf.operator(registry=registry, clusterwide=True, standalone=True)

    asyncio.run(main())
    return 0
