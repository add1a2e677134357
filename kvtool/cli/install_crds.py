"""`kvtool install-crds`: apply the VM CRDs to any cluster and wait until they are served."""

from __future__ import annotations

import argparse

from kvtool.cli import common
from kvtool.kube import crds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=60)


def run(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    names = crds.install(conn.res, timeout=args.timeout)
    for name in names:
        print(f"customresourcedefinition/{name} established")
    return 0
