"""Chaos on the embedded cluster: 8 VMs (runStrategy Always) while faults hit every component, one at a time.

The faults and invariants are tests/chaos_engine.py's (shared with the short run in `make test`):
the leading controller pod deleted, a handler pod deleted, a launcher process or a QEMU SIGKILLed,
the apiserver, etcd or a node's containerd restarted; never two QEMUs of one VM at once; nothing
left behind once the VMs are deleted.

Usage: python bench/chaos.py [--vms 8] [--duration 300] [--seed N]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib
from vm_start import vm_manifest

from kvtool.api.types import VIRTUAL_MACHINE
from tests import chaos_engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=8)
    parser.add_argument("--duration", type=float, default=300, help="seconds of faults (default 300)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--recovery-timeout", type=float, default=300)
    args = parser.parse_args()
    layout, res = benchlib.runtime()
    names = [f"chaos-{uuid.uuid4().hex[:4]}-{i}" for i in range(args.vms)]
    for name in names:
        res.create(VIRTUAL_MACHINE, vm_manifest(name))
    if not chaos_engine.wait_until(lambda: chaos_engine.all_running(res, names), 600):
        raise SystemExit("the VMs did not all start")
    print(f"== chaos: {args.vms} VMs, {args.duration:.0f} s of faults, seed {args.seed} ==")
    report = chaos_engine.run(res, layout, names, args.duration, args.seed,
                              recovery_timeout=args.recovery_timeout)
    print()
    print(report.summary(args.recovery_timeout))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
