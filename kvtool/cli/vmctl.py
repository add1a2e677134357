"""`kvtool start|stop|restart|pause|unpause NAME`: virtctl's verbs."""

from __future__ import annotations

import argparse
import sys

from kvtool import vmctl
from kvtool.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME")
    parser.add_argument("-n", "--namespace", default="default")


def run(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    verb = vmctl.VERBS[args.command]
    failed = 0
    for name in args.names:
        try:
            print(verb(conn.res, args.namespace, name))
        except vmctl.KvtoolError as exc:
            print(f"Error: {exc.message}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0
