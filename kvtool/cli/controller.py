"""`kvtool controller`: run the VM controller (a Deployment, in real and embedded clusters alike).
With --leader-elect only the replica holding the Lease reconciles."""

from __future__ import annotations

import argparse
import asyncio
import threading

from kvtool.cli import common
from kvtool.controller import leader, operator, template


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--launcher-image", default=template.DEFAULT_LAUNCHER_IMAGE,
                        help=f"image of the launcher pods (default {template.DEFAULT_LAUNCHER_IMAGE})")
    parser.add_argument("--launcher-service-account", help="service account for launcher pods")
    parser.add_argument("--kvm", choices=["none", "device"], default="none",
                        help="give launcher pods the node's /dev/kvm and /dev/net/tun (the install manifests: device)")
    parser.add_argument("--leader-elect", action="store_true", help="reconcile only while holding the leader Lease")
    parser.add_argument("--lease-namespace", default="kvtool-system",
                        help="kvtool's namespace: the leader Lease, handler heartbeats, failover settings")
    parser.add_argument("--lease-duration", type=int, default=15, help="seconds (default 15)")
    parser.add_argument("--renew-deadline", type=int, default=10, help="seconds (default 10)")
    parser.add_argument("--retry-period", type=int, default=2, help="seconds (default 2)")
    parser.add_argument("--health-port", type=int, default=0, help="serve /healthz, /readyz, /metrics (0: off)")
    parser.add_argument("--webhook-port", type=int, default=0,
                        help="serve the eviction webhook (HTTPS) on this port, on every replica (0: off)")
    common.add_in_cluster(parser)


def run(args: argparse.Namespace) -> int:
    common.configure_daemon_logging()
    res, api = common.daemon_connection(args)
    ctl = operator.Controller(res, template.LauncherConfig(args.launcher_image, args.launcher_service_account,
                                                           kvm_device=args.kvm == "device"),
                              namespace=args.lease_namespace)
    leading = threading.Event()
    if args.health_port:
        from kvtool import observe

        # A follower is healthy and ready too: it is waiting, as it should.
        observe.serve(args.health_port, healthy=lambda: True)
    if args.webhook_port:
        from kvtool.controller import webhook

        webhook.serve(res, args.lease_namespace, args.webhook_port)
    if args.leader_elect:
        leading = leader.elect(api, leader.ElectionSettings(args.lease_namespace, lease_duration=args.lease_duration,
                                                            renew_deadline=args.renew_deadline,
                                                            retry_period=args.retry_period))
        leading.wait()
    registry = operator.build_registry(ctl)
    asyncio.run(_main(registry))
    return 0


async def _main(registry: object) -> None:
    import kopf

    await kopf.operator(registry=registry, clusterwide=True, standalone=True)  # type: ignore[arg-type]
