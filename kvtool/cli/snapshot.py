"""`kvtool snapshot VM [--name NAME]` and `kvtool restore VM --from SNAPSHOT`: a VirtualMachineSnapshot of a VM's
claims, and a VirtualMachineRestore of one into it (KubeVirt's kinds; `kubectl get vmsnapshots` lists them).

A running VM is paused while its disks are copied. `restore` stops a running VM, writes its claims back and
starts it again; both wait for the outcome unless --no-wait, and exit 1 with the reason when it fails.
"""

from __future__ import annotations

import argparse

from kvtool import snapshotctl
from kvtool.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vm", metavar="VM", help="the VirtualMachine")
    if parser.prog.endswith("restore"):
        parser.add_argument("--from", dest="snapshot", required=True, metavar="SNAPSHOT",
                            help="the VirtualMachineSnapshot to restore (of this VM)")
        parser.add_argument("--name", help="the VirtualMachineRestore's name (default <vm>-restore-<UTC time>)")
    else:
        parser.add_argument("--name", help="the VirtualMachineSnapshot's name (default <vm>-<UTC time>)")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("--no-wait", action="store_true", help="return once the request is made")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait (default 900)")


def run(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    if getattr(args, "snapshot", None):
        return _restore(conn, args)
    snap = snapshotctl.snapshot(conn.res, args.namespace, args.vm, args.name)
    name = snap["metadata"]["name"]
    print(f"virtualmachinesnapshot {args.namespace}/{name} requested")
    if args.no_wait:
        return 0
    done = snapshotctl.wait_snapshot(conn.res, args.namespace, name, args.timeout, print)
    status = done.get("status") or {}
    kept = [b["volumeName"] for b in status.get("volumeBackups") or []]
    skipped = (status.get("snapshotVolumes") or {}).get("excludedVolumes") or []
    print(f"Snapshot {name} is ready: {', '.join(kept) or 'no claims'} backed up" +
          (f" (not included, made anew at each start: {', '.join(skipped)})" if skipped else "") + ".")
    print(f"Restore it with: kvtool restore {args.vm} --from {name}" +
          (f" -n {args.namespace}" if args.namespace != "default" else ""))
    return 0


def _restore(conn: common.Connection, args: argparse.Namespace) -> int:
    name, running = snapshotctl.restore(conn.res, args.namespace, args.vm, args.snapshot, args.name)
    print(f"virtualmachinerestore {args.namespace}/{name} requested" +
          (f"; {args.vm} is stopped for it and starts again after" if running else ""))
    if args.no_wait:
        return 0
    done = snapshotctl.wait_restore(conn.res, args.namespace, name, args.timeout, print)
    restored = [r["volumeName"] for r in (done.get("status") or {}).get("restores") or []]
    print(f"Restore {name} complete: {', '.join(restored) or 'no claims'} written back from {args.snapshot}.")
    return 0
