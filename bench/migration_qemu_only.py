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
import contextlib
import json
import re
import shutil
import socket
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

BROKEN = re.compile(r"BUG|Oops|corruption|soft lockup|Kernel panic|general protection")
TICK = re.compile(rb"TICK (\d+)")


class Monitor:
    """A QMP connection: one command at a time, events skipped."""

    def __init__(self, path: Path, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rw")
        self.file.readline()
        self.call("qmp_capabilities")

    def call(self, name: str, **arguments: Any) -> Any:
        self.file.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "error" in reply:
                raise RuntimeError(f"{name}: {reply['error']}")
            if "return" in reply:
                return reply["return"]


class Guest:
    """One QEMU process with the tiny-linux guest, its serial console in a file."""

    def __init__(self, args: argparse.Namespace, root: Path, n: int, iso: Path, image: store.Image,
                 incoming: Path | None = None) -> None:
        self.dir = root / f"qemu{n}"
        self.dir.mkdir()
        argv = [args.qemu, "-machine", "q35,memory-backend=pc.ram,hpet=off", "-accel", "tcg,tb-size=16",
                "-cpu", "qemu64", "-object", "memory-backend-ram,id=pc.ram,size=512M", "-m", "512", "-smp", "1",
                "-display", "none", "-nodefaults", "-rtc", "base=utc,driftfix=slew",
                "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", image.cmdline or "",
                "-drive", f"file={iso},if=virtio,format=raw,readonly=on",
                "-serial", f"file:{self.dir}/console.log", "-qmp", f"unix:{self.dir}/qmp.sock,server=on,wait=off",
                *(["-L", args.datadir] if args.datadir else []),
                *(["-incoming", f"unix:{incoming}"] if incoming else [])]
        with (self.dir / "stderr").open("w") as stderr:
            self.process = subprocess.Popen(argv, stderr=stderr)
        self.monitor = Monitor(self.dir / "qmp.sock")

    def console(self) -> bytes:
        return (self.dir / "console.log").read_bytes()

    def last_tick(self) -> int:
        return max((int(n) for n in TICK.findall(self.console())), default=-1)

    def quit(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            self.monitor.call("quit")
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


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
        source = Guest(args, root, 0, iso, image)
        try:
            if not wait_for(lambda: source.last_tick() >= 30, 240):
                raise SystemExit(f"the guest did not boot:\n{source.console()[-2000:].decode(errors='replace')}")
            for run in range(args.runs):
                path = root / f"migration{run}.sock"
                target = Guest(args, root, run + 1, iso, image, incoming=path)
                source.monitor.call("migrate-set-capabilities",
                                    capabilities=[{"capability": "auto-converge", "state": True}])
                source.monitor.call("migrate-set-parameters", **{"max-bandwidth": args.bandwidth << 20})
                started = time.monotonic()
                source.monitor.call("migrate", uri=f"unix:{path}")
                state: dict[str, Any] = {}
                while state.get("status") not in ("completed", "failed"):
                    time.sleep(0.05)
                    state = source.monitor.call("query-migrate")
                seconds = time.monotonic() - started
                last = source.last_tick()
                source.quit()
                source = target
                counting = wait_for(lambda last=last, arrived=target: arrived.last_tick() > last + 20, 20)
                oops = [line for line in target.console().decode(errors="replace").splitlines() if BROKEN.search(line)]
                done += 1
                ok = state["status"] == "completed" and counting and not oops
                broken += not ok
                print(f"  migration {run + 1}: {state['status']} in {seconds:.1f} s, "
                      f"{state.get('ram', {}).get('dirty-sync-count')} memory passes: "
                      f"{'guest counting' if ok else 'GUEST BROKEN'} {' | '.join(oops[:2])}", flush=True)
                if not ok:
                    break
        finally:
            source.quit()
            for loop in busy:
                loop.kill()
    print(f"{version}: {broken} broken guest(s) in {done} migration(s) at {args.bandwidth} MiB/s, "
          f"{args.load} busy loop(s) beside")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
