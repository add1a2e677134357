"""`kvtool install-crds`: apply the VM CRDs to any cluster and wait until they are served; with --kubevirt,
KubeVirt's own VirtualMachine/VirtualMachineInstance CRDs (from its Go module) instead."""

from __future__ import annotations

import argparse

from kvtool.cli import common
from kvtool.kube import crds
from kvtool.local import kubevirt_crds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--kubevirt", nargs="?", const=kubevirt_crds.VERSION, metavar="VERSION",
                        help="install KubeVirt's VM and VMI CRDs (kubevirt.io, from KubeVirt's Go module at VERSION, "
                             f"default {kubevirt_crds.VERSION}) instead of kvtool's: enough for plan/apply, not a "
                             "KubeVirt runtime")


def run(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    docs = kubevirt_crds.crds(args.kubevirt) if args.kubevirt else None
    names = crds.install(conn.res, timeout=args.timeout, docs=docs)
    for name in names:
        print(f"customresourcedefinition/{name} established")
    return 0
