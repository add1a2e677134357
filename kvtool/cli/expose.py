"""`kvtool expose NAME --port P [--target-port T]`: a Service in front of a VM (virtctl expose)."""

from __future__ import annotations

import argparse

from kvtool.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the VM")
    parser.add_argument("--port", type=int, required=True, help="the Service's port")
    parser.add_argument("--target-port", type=int, help="the port in the guest (default: --port)")
    parser.add_argument("--name", dest="service_name", help="the Service's name (default: the VM's)")
    parser.add_argument("--protocol", default="TCP", choices=("TCP", "UDP"))
    parser.add_argument("--type", dest="service_type", default="ClusterIP", choices=("ClusterIP", "NodePort"))
    parser.add_argument("-n", "--namespace", default="default")


def run(args: argparse.Namespace) -> int:
    from kvtool.podnet import expose

    conn = common.connect(args)
    svc = expose.expose(conn.res, args.name, args.namespace, args.port, args.target_port, name=args.service_name,
                        protocol=args.protocol, service_type=args.service_type)
    spec = svc["spec"]
    port = spec["ports"][0]
    print(f"service/{svc['metadata']['name']} exposed: {spec.get('clusterIP', '-')}:{port['port']}/{port['protocol']}"
          f" -> VM {args.name} port {port['targetPort']}")
    print(f"  from this machine: kvtool port-forward svc/{svc['metadata']['name']} {port['port']}:{port['port']}")
    return 0
