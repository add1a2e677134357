"""`kvtool validate PATH...`: check desired state offline, every problem at once."""

from __future__ import annotations

import argparse

from kvtool.images import usage
from kvtool.plan import desired


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--stack", default="default")
    parser.add_argument("-n", "--namespace", default="default")


def run(args: argparse.Namespace) -> int:
    state = desired.load(args.paths, stack=args.stack, namespace=args.namespace, checks=[usage.checker()])
    note = state.conversion_note()
    if note:
        print(note)
    print(f"Valid: {len(state.objects)} object(s) in {len(args.paths)} path(s).")
    return 0
