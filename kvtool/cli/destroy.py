"""`kvtool destroy [--stack S] [-f PATH...]`: delete the stack's objects (or only those in PATH)."""

from __future__ import annotations

import argparse
import sys

from kvtool.cli import apply as apply_cmd
from kvtool.cli import common
from kvtool.plan import desired, planner, render


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_files(parser)
    common.add_stack(parser)
    common.add_api(parser)
    parser.add_argument("--auto-approve", action="store_true")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-color", action="store_true")


def run(args: argparse.Namespace) -> int:
    desired.validate_stack(args.stack)
    only = desired.load(args.files, stack=args.stack, namespace=args.namespace) if args.files else None
    conn = common.connect(args)
    target = common.api_target(args, conn)
    if only is not None:
        desired.retarget(only, target)
    plan = planner.destroy_plan(conn.res, args.stack, conn.server, only, target=target)
    render.render_text(plan, sys.stdout, color=False if args.no_color else None, target=conn.target)
    return apply_cmd.execute(conn, plan, args, args.auto_approve,
                             f'Do you really want to destroy these objects of stack "{args.stack}"?')
