"""`kvtool scale POOL --replicas N [--wait]`: how many VMs a VirtualMachinePool keeps (kubectl scale's verb)."""

from __future__ import annotations

import argparse
import sys
import time

from kvtool import vmctl
from kvtool.api.types import MANAGED_BY, MANAGED_BY_LABEL, STACK_LABEL, VIRTUAL_MACHINE_POOL
from kvtool.cli import common

POLL = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="POOL", help="the VirtualMachinePool")
    parser.add_argument("--replicas", type=int, required=True, metavar="N", help="how many VMs it keeps")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--wait", action="store_true",
                        help="wait until the pool has N VMs and all are ready; exit 1 if not within --timeout")
    parser.add_argument("--timeout", type=float, default=600.0, help="with --wait: seconds (default 600)")
    common.add_api(parser)


def run(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    try:
        before = vmctl.scale(conn.res, args.namespace, args.name, args.replicas)
    except vmctl.KvtoolError as exc:
        print(f"Error: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 1
    was = (before.get("spec") or {}).get("replicas", 1)
    print(f"virtualmachinepool {args.namespace}/{args.name} scaled: replicas {was} -> {args.replicas}")
    labels = before["metadata"].get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) == MANAGED_BY and STACK_LABEL in labels:
        print(f"Note: the pool belongs to stack {labels[STACK_LABEL]!r}: change replicas in its files too, or the "
              "next `kvtool plan` shows this as drift (its replicas are now kvtool-vmctl's field)")
    return _wait(conn, args) if args.wait else 0


def _wait(conn: common.Connection, args: argparse.Namespace) -> int:
    """Until the pool's status says N VMs, N ready: print each change of those counts."""
    started, seen = time.monotonic(), None
    while time.monotonic() - started < args.timeout:
        pool = conn.res.get(VIRTUAL_MACHINE_POOL, args.namespace, args.name)
        if pool is None:
            print(f"Error: virtualmachinepool {args.namespace}/{args.name} was deleted", file=sys.stderr)
            return 1
        status = pool.get("status") or {}
        now = (status.get("replicas", 0), status.get("readyReplicas", 0))
        if now != seen:
            print(f"  {time.monotonic() - started:6.1f}s  {now[0]} VMs, {now[1]} ready", flush=True)
            seen = now
        if now == (args.replicas, args.replicas):
            return 0
        time.sleep(POLL)
    failure = next((c for c in (status.get("conditions") or []) if c.get("type") == "ReplicaFailure"
                    and c.get("status") == "True"), None)
    why = f": {failure['reason']}: {failure['message']}" if failure else " (`kvtool status` shows each VM's state)"
    print(f"Error: the pool did not reach {args.replicas} ready VMs within {args.timeout:.0f}s{why}", file=sys.stderr)
    return 1
