"""`kvtool uninstall [--force]`: remove kvtool from a cluster; refuses while VMs exist unless --force."""

from __future__ import annotations

import argparse
import sys

from kvtool.cli import common
from kvtool.deploy import install


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="delete the VirtualMachines too")


def run(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    install.uninstall(conn.res, force=args.force, say=lambda m: print(m, file=sys.stderr))
    print(f"kvtool uninstalled from {conn.server}.")
    return 0
