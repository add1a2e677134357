"""`kvtool crds` prints the CRDs generated from schemas/; `kvtool install-crds` applies them."""

from __future__ import annotations

import argparse
import sys

from kvtool.api import crd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compat", action="store_true",
                        help="print the KubeVirt compatibility table (docs/kubevirt-compat.md) instead")


def run(args: argparse.Namespace) -> int:
    if args.compat:
        from kvtool.api import compat

        sys.stdout.write(compat.markdown())
        return 0
    sys.stdout.write(crd.crds_yaml())
    return 0
