"""Figures for the embedded control plane: build time, `cluster up` time to /readyz, idle RSS.

Usage: python bench/controlplane.py [--cold-build]
  --cold-build  also time a build from an empty Go build cache (takes many minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvtool import paths
from kvtool.local import build, cluster


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, USS) in MiB. RSS counts the shared binary's pages in every process; USS does not."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields["Rss"] / 1024, (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


def timed_up(home: Path) -> float:
    start = time.monotonic()
    cluster.up(home, nodes=0, quiet=True)
    return time.monotonic() - start


def cold_build() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, KVTOOL_CACHE=f"{tmp}/cache", GOCACHE=f"{tmp}/gocache")
        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "kvtool.cli.main", "cluster", "build"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold-build", action="store_true")
    args = parser.parse_args()

    print("== kvtool embedded control plane ==")
    binary = build.ensure_binary(progress=True)
    recorded = binary.parent / "build-seconds"
    if args.cold_build:
        print(f"cold build (empty GOCACHE):        {cold_build():7.1f} s")
    elif recorded.exists():
        print(f"build when this binary was built:  {float(recorded.read_text()):7.1f} s  ({recorded})")
    start = time.monotonic()
    build.ensure_binary(progress=False)
    print(f"warm check (cache hit):            {time.monotonic() - start:7.2f} s")
    print(f"binary size:                       {binary.stat().st_size / 2**20:7.1f} MiB")

    with tempfile.TemporaryDirectory(prefix="kvbench-") as tmp:
        home = Path(tmp) / "home"
        try:
            cold = timed_up(home)
            print(f"cluster up to /readyz, cold:       {cold:7.1f} s  (new PKI, empty etcd)")
            time.sleep(10)
            state = json.loads((home / "cluster.json").read_text())
            print("idle memory after 10 s:               RSS        USS (private)")
            pids = {name: comp["pid"] for name, comp in state["components"].items()}
            pids["supervisor (python)"] = state["supervisor_pid"]
            total_uss = 0.0
            for name, pid in pids.items():
                rss, uss = memory_mb(pid)
                total_uss += uss
                print(f"  {name:<20}             {rss:7.1f} MiB  {uss:7.1f} MiB")
            print(f"  {'total private':<20}                         {total_uss:7.1f} MiB")
            cluster.down(home, quiet=True)
            warm = timed_up(home)
            print(f"cluster up to /readyz, warm:       {warm:7.1f} s  (existing state dir)")
        finally:
            cluster.down(home, purge=True, quiet=True)
    print(f"(cache: {paths.cache_dir()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
