"""Live migration's figures (issue 13): total time and guest-visible downtime, next to the physical floor.

Scenarios: an idle 128Mi guest, and a 512Mi guest rewriting 256 MiB of memory in a loop (auto-converge on,
KubeVirt's allowAutoConverge, for kvtool and the floor alike: without it a TCG guest that dirties memory
faster than the copy never converges). Each guest prints a counter every 100 ms; the downtime is the longest
gap between two counter lines as the host sees them appear in the launchers' console logs (the guest's own
clock stops while it is paused). p50 of --runs runs each.

- kvtool: `kvtool migrate` between the embedded cluster's two real nodes: controller, target pod, both
  handlers, the TLS proxy. Total = the migration object's creation to its Succeeded, as a client sees it.
- floor: the same launcher (its private libvirtd, the same domain XML) run twice as plain processes on this
  machine, the target prepared the same way (`sync` with migrationTarget), then `virsh migrate --live --p2p`
  straight from one libvirtd to the other over unix sockets: no Kubernetes, no handlers, no TLS.

Usage: python bench/migration.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib
from benchlib import wait

from kvtool import consoles, paths
from kvtool.api import timeutil
from kvtool.api.types import (
    CONFIG_MAP,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    VIRTUAL_MACHINE_INSTANCE_MIGRATION,
)
from kvtool.images import store
from kvtool.kube.resources import Resources
from kvtool.launchercom import protocol
from tests import launcher_helpers as lh
from tests.migration_helpers import COUNTER_USER_DATA, CounterWatch, console_excerpt, guest_diagnostics
from tests.vmfactory import vm

DIRTY_USER_DATA = ("#!/bin/sh\n"
                   "mkdir -p /dirty && mount -t tmpfs -o size=300m tmpfs /dirty\n"
                   "dd if=/dev/urandom of=/dirty/r bs=1M count=1 2>/dev/null\n"
                   "(while true; do for i in $(seq 256); do cat /dirty/r; done >/dirty/blob; done) &\n"
                   + COUNTER_USER_DATA.split("\n", 1)[1])
SCENARIOS = {"idle-128Mi": ("128Mi", COUNTER_USER_DATA, False), "dirty-512Mi": ("512Mi", DIRTY_USER_DATA, True)}


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def gap_detail(report: dict) -> str:
    """The guest clock across the longest gap and the usual gap: tells a paused guest from a slow one."""
    return (f" (guest clock across it {report['gap_guest_s'] * 1000:.0f} ms, usual gap "
            f"{report['median_gap_s'] * 1000:.0f} ms)")


def qemu_downtime(libvirt_socket: Path, domain: str) -> float:
    """The switchover as libvirt measured it on the target (source stop to target resume), in seconds."""
    done = subprocess.run(["virsh", "-c", f"qemu+unix:///system?socket={libvirt_socket}", "domjobinfo", "--completed",
                           domain], capture_output=True, text=True, timeout=30)
    for line in done.stdout.splitlines():
        if line.startswith("Total downtime:"):
            return float(line.split()[2]) / 1000
    return float("nan")


# ---- kvtool on the embedded cluster


def set_config(res: Resources, **data: str) -> None:
    res.merge_patch(CONFIG_MAP, "kvtool-system", "kvtool-migration", {"data": data})  # read as each one starts


def kvtool_runs(res: Resources, home: Path, memory: str, user_data: str, converge: bool, runs: int) -> list[dict]:
    name = f"bench-mig-{uuid.uuid4().hex[:4]}"
    res.create(VIRTUAL_MACHINE, vm(name, memory=memory, run_strategy="Always", user_data=user_data,
                                   namespace="default"))
    set_config(res, allowAutoConverge="true" if converge else "false")
    out = []
    watch = CounterWatch(home).start()
    try:
        vmi = wait(lambda: (v := res.get(VIRTUAL_MACHINE_INSTANCE, "default", name)) and
                   (v.get("status") or {}).get("phase") == "Running" and v, 240, f"{name} running")
        watch.add_pods(vmi["status"]["activePods"])
        watch.wait_ticks(after=30, timeout=180)  # booted, its user data running for 3 s
        for run in range(runs):
            body = {"apiVersion": VIRTUAL_MACHINE_INSTANCE_MIGRATION.api_version,
                    "kind": VIRTUAL_MACHINE_INSTANCE_MIGRATION.kind,
                    "metadata": {"name": f"{name}-{run}", "namespace": "default"}, "spec": {"vmiName": name}}
            started = time.monotonic()
            res.create(VIRTUAL_MACHINE_INSTANCE_MIGRATION, body)

            def ended(run: int = run) -> dict | None:
                watch.add_pods((res.get(VIRTUAL_MACHINE_INSTANCE, "default", name) or {}).get("status", {}).get(
                    "activePods") or {})
                m = res.get(VIRTUAL_MACHINE_INSTANCE_MIGRATION, "default", f"{name}-{run}") or {}
                return m if (m.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

            done = wait(ended, 600, f"migration {name}-{run}", period=0.05)
            total = time.monotonic() - started
            if done["status"]["phase"] != "Succeeded":
                raise SystemExit(f"migration {name}-{run} failed: {json.dumps(done['status'])[:2000]}")
            last = watch.last()
            state = done["status"]["migrationState"]
            copy = (timeutil.parse(state["endTimestamp"]) - timeutil.parse(state["startTimestamp"])).total_seconds()
            try:
                watch.wait_ticks(after=last.n + 10, timeout=60)
            except AssertionError as exc:  # the guest broke on arrival (docs/migration.md, "Known problem")
                explain(res, home, name, watch)
                print(f"  kvtool run {run + 1}: total {total:.2f} s (libvirt's job {copy:.2f} s), GUEST BROKEN: {exc}",
                      flush=True)
                out.append({"total": total, "copy": copy, "broken": True, "resets": []})
                break
            report = watch.report(started, time.monotonic())
            pods = (res.get(VIRTUAL_MACHINE_INSTANCE, "default", name) or {}).get("status", {}).get("activePods", {})
            target_uid = next(uid for uid, node in pods.items() if node == state["targetNode"])
            switchover = qemu_downtime(paths.node_sockets_dir(state["targetNode"], home) / f"{target_uid}.libvirt" /
                                       "libvirt-sock", f"default_{name}")
            out.append({"total": total, "copy": copy, "downtime": report["longest_gap_s"],
                        "resets": report["uptime_resets"], "switchover": switchover})
            print(f"  kvtool run {run + 1}: total {total:.2f} s (libvirt's job {copy:.2f} s), longest gap "
                  f"{report['longest_gap_s'] * 1000:.0f} ms, libvirt's downtime {switchover * 1000:.0f} ms"
                  f"{gap_detail(report)}", flush=True)
    except AssertionError:
        explain(res, home, name, watch)
        raise
    finally:
        watch.stop()
        set_config(res, allowAutoConverge="false")
        res.delete(VIRTUAL_MACHINE, "default", name)
    return out


def explain(res: Resources, home: Path, name: str, watch: CounterWatch) -> None:
    """What the VM's launchers say about a guest that stopped counting, while it still exists."""
    vmi = res.get(VIRTUAL_MACHINE_INSTANCE, "default", name) or {}
    print(f"--- watched: { {k: str(v[0]) for k, v in watch._files.items()} }\n"
          f"{guest_diagnostics(home, vmi, f'default_{name}')}", file=sys.stderr)
    try:
        print(f"--- console:\n{consoles.tail(res, 'default', name, 20, home).decode(errors='replace')}",
              file=sys.stderr)
    except Exception as exc:  # diagnostics only
        print(f"--- console unavailable: {exc}", file=sys.stderr)


# ---- the floor: two launcher processes, virsh migrate


def floor_runs(memory: str, user_data: str, converge: bool, runs: int) -> list[dict]:
    root = Path(tempfile.mkdtemp(prefix="kvt-migbench-"))
    sockets = Path(f"/run/kvt-migbench-{uuid.uuid4().hex[:6]}")
    sockets.mkdir(mode=0o700)
    images, cache = store.ImageStore().root, root / "cache"
    spec = {"domain": {"memory": {"guest": memory}, "firmware": {"kernelBoot": {"container": {"image": "tiny-linux"}}},
                       "devices": {"disks": [{"name": "cloudinit", "disk": {"bus": "virtio"}}]}},
            "volumes": [{"name": "cloudinit", "cloudInitNoCloud": {"userData": user_data}}]}
    made: list[lh.Launcher] = []

    def launcher(uid: str) -> lh.Launcher:
        directory = root / f"pod{len(made)}"
        directory.mkdir()
        one = lh.Launcher(directory, sockets, images, cache, name="floor")
        one.uid = uid
        made.append(one.start())
        one.wait_socket(30)
        return one

    out = []
    watch = CounterWatch(root).start()
    try:
        source = launcher(str(uuid.uuid4()))
        source.client(120).sync(source.vmi(spec))
        watch.add_file(source.pod_uid, source.state / "console.log")
        watch.wait_ticks(after=30, timeout=180)
        for run in range(runs):
            target = launcher(source.uid)
            target.client(120).sync(target.vmi(spec), migration_target=True)
            watch.add_file(target.pod_uid, target.state / "console.log")
            uri = f"qemu+unix:///system?socket={source.sockets}/{source.pod_uid}.libvirt/libvirt-sock"
            dest = f"qemu+unix:///system?socket={target.sockets}/{target.pod_uid}.libvirt/libvirt-sock"
            domain = f"{source.namespace}_{source.name}"
            xml = subprocess.run(["virsh", "-c", uri, "dumpxml", "--migratable", domain], check=True,
                                 capture_output=True, text=True).stdout.replace(str(source.state), str(target.state))
            (root / "dest.xml").write_text(xml)
            proxy = sockets / protocol.proxy_dir_name(source.uid)
            argv = ["virsh", "-c", uri, "migrate", "--live", "--p2p", "--persistent", "--undefinesource",
                    "--xml", str(root / "dest.xml"), "--migrateuri", f"unix://{proxy}/migration.sock",
                    *(["--auto-converge"] if converge else []), domain, dest]
            started = time.monotonic()
            result = subprocess.run(argv, capture_output=True, text=True)
            total = time.monotonic() - started
            if result.returncode != 0:
                raise SystemExit(f"virsh migrate failed: {result.stderr}")
            last = watch.last()
            try:
                watch.wait_ticks(pod=target.pod_uid, after=last.n + 10, timeout=60)
            except AssertionError as exc:  # the guest broke on arrival (docs/migration.md, "Known problem")
                print(f"--- its console:\n{console_excerpt(target.console_log().encode())}", file=sys.stderr)
                print(f"  floor run {run + 1}: total {total:.2f} s, GUEST BROKEN: {exc}", flush=True)
                out.append({"total": total, "copy": total, "broken": True, "resets": []})
                break
            report = watch.report(started, time.monotonic())
            switchover = qemu_downtime(target.sockets / f"{target.pod_uid}.libvirt" / "libvirt-sock", domain)
            out.append({"total": total, "copy": total, "downtime": report["longest_gap_s"],
                        "resets": report["uptime_resets"], "switchover": switchover})
            print(f"  floor run {run + 1}: total {total:.2f} s, longest gap {report['longest_gap_s'] * 1000:.0f} ms, "
                  f"libvirt's downtime {switchover * 1000:.0f} ms{gap_detail(report)}", flush=True)
            # Its domain left: the launcher ends by itself (kill() would match the guest's uuid in the target's QEMU).
            source.wait_exit(30)
            source = target
    except (AssertionError, SystemExit, protocol.LauncherError) as exc:
        for one in made[-2:]:
            print(f"--- launcher {one.pod_uid} stderr:\n{one.stderr()[-3000:]}\n--- its console:\n"
                  f"{one.console_log()[-600:]}", file=sys.stderr)
        if not isinstance(exc, protocol.LauncherError) or not out:
            raise
        # A launcher that stopped answering ends the floor's series, not the whole benchmark: the runs
        # measured so far stand, and the report says how many there were.
        print(f"  floor run {len(out) + 1}: its launcher failed ({exc}); the floor keeps its {len(out)} run(s)",
              flush=True)
    finally:
        watch.stop()
        for one in made:
            one.kill()
        shutil.rmtree(sockets, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    args = parser.parse_args()
    layout, res = benchlib.runtime()
    lh.require_tools()
    rows = []
    for scenario in args.scenario or list(SCENARIOS):
        memory, user_data, converge = SCENARIOS[scenario]
        print(f"== {scenario} ==", flush=True)
        ours = kvtool_runs(res, layout.home, memory, user_data, converge, args.runs)
        floor = floor_runs(memory, user_data, converge, args.runs)
        assert not any(r["resets"] for r in ours + floor), "a guest rebooted"
        ok, fine = [r for r in ours if not r.get("broken")], [r for r in floor if not r.get("broken")]
        rows.append((scenario, p50([r["total"] for r in ok]), p50([r["copy"] for r in ok]),
                     p50([r["downtime"] for r in ok]), p50([r["total"] for r in fine]),
                     p50([r["downtime"] for r in fine]), f"{len(ours) - len(ok)}/{len(ours)}",
                     f"{len(floor) - len(fine)}/{len(floor)}"))
    print(f"\n{'scenario':<12} {'kvtool e2e':>10} {'its copy':>9} {'gap':>7} {'virsh':>7} {'gap':>7} "
          f"{'copy/virsh':>10} {'e2e/virsh':>9} {'gap/virsh':>9} {'broken':>7} {'virsh':>6}")
    for scenario, total, copy, down, ftotal, fdown, broken, fbroken in rows:
        print(f"{scenario:<12} {total:>9.2f}s {copy:>8.2f}s {down * 1000:>5.0f}ms {ftotal:>6.2f}s "
              f"{fdown * 1000:>5.0f}ms {copy / ftotal:>9.2f}x {total / ftotal:>8.2f}x {down / fdown:>8.2f}x "
              f"{broken:>7} {fbroken:>6}")
    print(f"(p50 of {args.runs} runs. e2e: the migration object's creation to Succeeded, as a client sees it, target "
          "pod start included; its copy: libvirt's job on the source launcher (migrationState start to end); virsh: "
          "`virsh migrate --live --p2p` between two prepared launcher libvirtds, no Kubernetes; gap: the longest "
          "silence of a counter printed every 100 ms, so the guest's pause is about 100 ms less; broken: guests that "
          "stopped counting on arrival, left out of the p50s, after which that side's runs stop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
