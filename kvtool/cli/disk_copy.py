"""`kvtool disk-copy FROM TO [FROM TO ...]`: the copy Job of a VirtualMachineSnapshot or -Restore (run in the
launcher image by kvtool.controller.snapshot, not by users).

Each FROM and TO is a claim's mount; the disk is its `disk.img` (kvtool.launcher.volumes). FROM `empty`, or a
FROM without a disk.img (the VM never wrote one), removes TO's disk: the launcher makes a fresh one. The copy
keeps holes (a 10 GiB disk with 1 GiB written copies 1 GiB), goes to a temporary file that is synced and then
renamed over TO's disk, so a failed copy leaves TO's old disk whole.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from kvtool.errors import KvtoolError
from kvtool.images import store

DISK = "disk.img"
EMPTY = "empty"
CP = "/usr/bin/cp"
log = logging.getLogger("kvtool.disk-copy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pairs", nargs="+", metavar="FROM TO",
                        help="pairs of claim mounts: FROM's disk.img is copied over TO's ('empty': TO's is removed)")


def copy_disk(source: Path | None, target: Path) -> str:
    """One pair; a line saying what was done."""
    if not target.is_dir():
        raise KvtoolError(f"{target} is not a mounted claim directory")
    disk = target / DISK
    if source is None or not (source / DISK).is_file():
        if disk.exists():
            disk.unlink()
        store.fsync_dir(target)
        return f"{target}: disk removed (the snapshot had none)"
    tmp = target / f".{DISK}.kvtool-copy"
    tmp.unlink(missing_ok=True)
    started = time.monotonic()
    done = subprocess.run([CP, "--sparse=always", "--preserve=mode,ownership", "--", str(source / DISK), str(tmp)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise KvtoolError(f"copying {source / DISK} to {target}: {done.stderr.strip() or done.returncode}")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, disk)
    store.fsync_dir(target)
    size = disk.stat().st_size
    used = disk.stat().st_blocks * 512
    return (f"{target}: copied {size >> 20} MiB disk ({used >> 20} MiB written) from {source} "
            f"in {time.monotonic() - started:.1f}s")


def run(args: argparse.Namespace) -> int:
    pairs = args.pairs
    if len(pairs) % 2:
        print(f"Error: disk-copy takes FROM TO pairs; got {len(pairs)} arguments", file=sys.stderr)
        return 2
    for src, dst in zip(pairs[::2], pairs[1::2], strict=True):
        print(copy_disk(None if src == EMPTY else Path(src), Path(dst)), flush=True)
    return 0
