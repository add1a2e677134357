"""`kvtool migrate NAME [--to-node NODE]` and `kvtool migrate-cancel NAME`: virtctl's live-migration verbs."""

from __future__ import annotations

import argparse
import sys
import time

from kvtool import vmctl
from kvtool.api.types import KUBEVIRT
from kvtool.cli import common

POLL = 0.25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the running VM (its VMI) to move")
    parser.add_argument("-n", "--namespace", default="default")
    if parser.prog.endswith("migrate"):
        parser.add_argument("--to-node", metavar="NODE",
                            help="the node to move to (default: any other node the scheduler picks)")
        parser.add_argument("--wait", action="store_true",
                            help="follow the migration until it ends; exit 1 if it fails")
        parser.add_argument("--timeout", type=float, default=600.0, help="with --wait: give up after this many "
                                                                         "seconds (default 600; exit 1)")
    common.add_api(parser)


def run(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    kubevirt = common.api_target(args, conn) is KUBEVIRT
    try:
        if args.command == "migrate-cancel":
            print(vmctl.migrate_cancel(conn.res, args.namespace, args.name, kubevirt=kubevirt))
            return 0
        created = vmctl.migrate(conn.res, args.namespace, args.name, args.to_node, kubevirt=kubevirt)
    except vmctl.KvtoolError as exc:
        print(f"Error: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 1
    name = created["metadata"]["name"]
    print(f"{args.name}: migration {name} created" + (f" (to node {args.to_node})" if args.to_node else ""))
    if not args.wait:
        return 0
    return _follow(conn, args, name, kubevirt)


def _follow(conn: common.Connection, args: argparse.Namespace, name: str, kubevirt: bool) -> int:
    """Print each phase the migration reaches until it ends."""
    kind = vmctl.KUBEVIRT_MIGRATION if kubevirt else vmctl.VIRTUAL_MACHINE_INSTANCE_MIGRATION
    started = time.monotonic()
    seen = ""
    while time.monotonic() - started < args.timeout:
        migration = conn.res.get(kind, args.namespace, name)
        if migration is None:
            print(f"Error: migration {name} was deleted before it ended", file=sys.stderr)
            return 1
        phase = (migration.get("status") or {}).get("phase") or "Pending"
        if phase != seen:
            print(f"  {time.monotonic() - started:6.1f}s  {phase}", flush=True)
            seen = phase
        if phase in vmctl.MIGRATION_FINAL:
            print(f"{args.name}: {vmctl.migration_outcome(migration)}")
            return 0 if phase == "Succeeded" else 1
        time.sleep(POLL)
    print(f"Error: migration {name} did not end within {args.timeout:.0f}s (phase {seen})", file=sys.stderr)
    return 1
