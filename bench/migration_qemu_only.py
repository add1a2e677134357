"""QEMU alone: the dirty 512Mi guest of bench/migration.py migrated between two plain QEMU processes, no libvirt.

Why: a TCG guest that rewrites memory during a migration sometimes arrives with stale memory (its kernel
reports list_del corruption or a soft lockup). This takes kvtool, libvirt and the TLS proxy out of the
path, with QEMU's own flags as the launcher's libvirt sets them (q35, tb-size=16, qemu64), so a QEMU
build can be checked for it: `--qemu` picks the binary (and `--datadir` its firmware), `--load N` runs N
busy loops beside it, as a loaded node would. It migrates the guest back and forth until --runs
migrations or the first broken guest, and prints each migration's time and memory passes.

Usage: python bench/migration_qemu_only.py [--qemu PATH] [--datadir DIR] [--runs 8] [--bandwidth 120] [--load 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from migration import DIRTY_USER_DATA  # bench/migration.py's dirty guest, counter included

from kvtool.domain.cloudinit import write_nocloud_iso
from kvtool.images import store, tiny_linux
from kvtool.launcher import guestinfo
from tests.guest_helpers import Guest
from tests.migration_helpers import TICK
from tests.waiting import wait_for

MEMORY_MIB = 512
# The flags of the QEMU command line the launcher's libvirt builds that matter here (its /proc/PID/cmdline).
LAUNCHER_FLAGS = ["-machine", "q35,memory-backend=pc.ram,hpet=off", "-cpu", "qemu64", "-smp", "1",
                  "-object", f"memory-backend-ram,id=pc.ram,size={MEMORY_MIB}M", "-rtc", "base=utc,driftfix=slew"]


def start(args: argparse.Namespace, workdir: Path, iso: Path, image: store.Image,
          incoming: Path | None = None) -> Guest:
    workdir.mkdir()
    return Guest(image, workdir, seed_iso=iso, memory_mib=MEMORY_MIB, nic=False, qemu=args.qemu,
                 accel="tcg,tb-size=16", extra=[*LAUNCHER_FLAGS, *(["-L", args.datadir] if args.datadir else []),
                                                 *(["-incoming", f"unix:{incoming}"] if incoming else [])]).start()


def last_tick(guest: Guest) -> int:
    return max((int(m.group(1)) for m in TICK.finditer(guest.console().encode())), default=-1)


def answers(guest: Guest) -> bool:
    """Whether QEMU's monitor answers: it is up, listening for the incoming migration too."""
    try:
        guest.qmp("query-status")
    except OSError:
        return False
    return True


def kernel_trouble(guest: Guest) -> list[str]:
    """What the guest's kernel reported, as kvtool's launcher picks it from a console (GuestKernelError)."""
    return [str(found[1]) for line in guest.console().splitlines()
            if (found := guestinfo.parse_line(line)) and found[0] == "kernel-error"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qemu", default=shutil.which("qemu-system-x86_64") or "qemu-system-x86_64")
    parser.add_argument("--datadir", help="QEMU's firmware directory, for a QEMU not installed in /usr")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--bandwidth", type=int, default=120, help="MiB/s (kvtool's copy runs at about 120)")
    parser.add_argument("--load", type=int, default=2, help="busy loops beside the guest")
    args = parser.parse_args()
    version = subprocess.run([args.qemu, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    image = tiny_linux.build(store.ImageStore())
    busy = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(args.load)]
    broken = done = 0
    with tempfile.TemporaryDirectory(prefix="kvt-qemu-mig-") as tmp:
        root = Path(tmp)
        iso = write_nocloud_iso(root / "cidata.iso", instance_id="qemu-only", hostname="qemu-only",
                                user_data=DIRTY_USER_DATA, network_data=None)
        source = start(args, root / "qemu0", iso, image)
        try:
            wait_for(lambda: last_tick(source) >= 30, 240, "the guest's boot",
                     describe=lambda: source.console()[-2000:])
            for run in range(args.runs):
                path = root / f"migration{run}.sock"
                target = start(args, root / f"qemu{run + 1}", iso, image, incoming=path)
                wait_for(lambda arriving=target: answers(arriving), 10, "the target QEMU's monitor")
                source.qmp("migrate-set-capabilities",
                           {"capabilities": [{"capability": "auto-converge", "state": True}]})
                source.qmp("migrate-set-parameters", {"max-bandwidth": args.bandwidth << 20})
                started = time.monotonic()
                source.qmp("migrate", {"uri": f"unix:{path}"})
                state: Any = {}
                while state.get("status") not in ("completed", "failed"):
                    time.sleep(0.05)
                    state = source.qmp("query-migrate")
                seconds = time.monotonic() - started
                last = last_tick(source)
                source.kill()
                source = target
                try:
                    wait_for(lambda last=last, arrived=target: last_tick(arrived) > last + 20, 20,
                             "the guest counting on")
                    counting = True
                except AssertionError:
                    counting = False
                oops = kernel_trouble(target)
                done += 1
                ok = state["status"] == "completed" and counting and not oops
                broken += not ok
                print(f"  migration {run + 1}: {state['status']} in {seconds:.1f} s, "
                      f"{state.get('ram', {}).get('dirty-sync-count')} memory passes: "
                      f"{'guest counting' if ok else 'GUEST BROKEN'} {' | '.join(oops[:2])}", flush=True)
                if not ok:
                    break
        finally:
            source.kill()
            for loop in busy:
                loop.kill()
    print(f"{version}: {broken} broken guest(s) in {done} migration(s) at {args.bandwidth} MiB/s, "
          f"{args.load} busy loop(s) beside")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
