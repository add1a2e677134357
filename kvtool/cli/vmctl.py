"""`kvtool start|stop|restart|pause|unpause NAME`: virtctl's verbs."""

from __future__ import annotations

import argparse
import sys

from kvtool import vmctl
from kvtool.api.types import KUBEVIRT
from kvtool.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME")
    parser.add_argument("-n", "--namespace", default="default")
    common.add_api(parser)


def run(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    kubevirt = common.api_target(args, conn) is KUBEVIRT
    verb = vmctl.VERBS[args.command]
    failed = 0
    for name in args.names:
        try:
            if kubevirt:
                print(vmctl.kubevirt_verb(conn.res, args.command, args.namespace, name))
            else:
                print(verb(conn.res, args.namespace, name))
        except vmctl.KvtoolError as exc:
            print(f"Error: {exc.message}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0
