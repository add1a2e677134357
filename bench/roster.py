"""A roster lab from apply to every student's SSH answering, and a `kvtool lab reset` of it, beside the physical
floor, in one run.

kvtool: `kvtool apply --roster` of N students (debian-12, 1 GiB, the template in examples/roster) on the
embedded cluster, then `kvtool ssh STUDENT@lab-STUDENT -i KEY -- true` polled until each answers.
Floor: N plain QEMU processes started at once on qcow2 overlays of the same image, with the same
per-student cloud-config on a NoCloud seed (TCG, q35, the same memory and translation cache), ssh
straight to a host-forwarded port. The ratio is kvtool's time over the floor's, for the whole lab.
Reset: a file is written in every guest, then kvtool: `kvtool lab reset` until every student's ssh answers
again with the file gone; floor: every QEMU killed and started again on a fresh overlay, until the same.

Usage: python bench/roster.py [--students 1 10]   (10 students take about an hour on 2 cores: 4 phases of 10
TCG guests booting at once)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import yaml

from kvtool.api.types import VIRTUAL_MACHINE_INSTANCE
from kvtool.domain import cloudinit
from kvtool.domain.configure import compute
from kvtool.images import debian_cloud, store
from kvtool.kube import clients
from kvtool.kube.resources import Resources
from kvtool.plan import roster

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "examples" / "roster" / "template.yaml"
KVTOOL = [sys.executable, "-m", "kvtool.cli.main"]
STACK = "bench-roster"
MEMORY_MIB = 1024
TIMEOUT = 1800


def keys(tmp: Path, count: int) -> dict[str, Path]:
    """Student name -> private key file (its .pub beside it)."""
    out = {}
    for i in range(count):
        name = f"s{i:02d}"
        out[name] = tmp / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(out[name])], check=True)
    return out


def ssh_options(known_hosts: Path) -> list[str]:
    return ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={known_hosts}"]


def until_all_answer(probes: dict[str, list[str]], started: float) -> dict[str, float]:
    """Seconds from `started` to each probe command's first success (exit 0), polling the ones still waiting in
    turn."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + TIMEOUT
    while len(done) < len(probes):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {sorted(set(probes) - set(done))} never answered ssh")
        for name, argv in probes.items():
            if name not in done and subprocess.run(argv, capture_output=True, timeout=120).returncode == 0:
                done[name] = time.monotonic() - started
        time.sleep(1)
    return done


MARK = "touch /tmp/written-by-student"
UNMARKED = "test ! -e /tmp/written-by-student"


def marked(probes: dict[str, list[str]]) -> None:
    """Write the file a reset must remove in every guest (the probe commands end with the remote command)."""
    for argv in probes.values():
        subprocess.run([*argv[:-1], MARK], check=True, capture_output=True, timeout=120)


def unmarked(probes: dict[str, list[str]]) -> dict[str, list[str]]:
    return {name: [*argv[:-1], UNMARKED] for name, argv in probes.items()}


def vmi_uids(res: Resources) -> dict[str, str]:
    vmis, _ = res.list(VIRTUAL_MACHINE_INSTANCE, "default", label_selector=f"kvtool.io/stack={STACK}")
    return {v["metadata"]["name"]: v["metadata"]["uid"] for v in vmis if not v["metadata"].get("deletionTimestamp")}


def kvtool_lab(students: dict[str, Path], tmp: Path, res: Resources) -> tuple[dict[str, float], dict[str, float]]:
    csv = tmp / "students.csv"
    csv.write_text("name,ssh_key\n" + "".join(f"{n},{k.with_suffix('.pub').read_text().strip()}\n"
                                              for n, k in students.items()))
    started = time.monotonic()
    subprocess.run([*KVTOOL, "apply", "--roster", str(csv), "-f", str(TEMPLATE), "--stack", STACK,
                    "--auto-approve"], check=True, capture_output=True)
    known = tmp / "known_hosts_kvtool"
    probes = {n: [*KVTOOL, "ssh", f"{n}@lab-{n}", "-i", str(k), "--known-hosts", str(known),
                  "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "--", "true"] for n, k in students.items()}
    try:
        up = until_all_answer(probes, started)
        marked(probes)
        before = vmi_uids(res)
        started = time.monotonic()
        subprocess.run([*KVTOOL, "lab", "reset", "--stack", STACK, "--auto-approve", "--known-hosts", str(known)],
                       check=True, capture_output=True)
        # Until the old guests are gone, ssh could still reach them (and file their host keys again).
        benchlib.wait(lambda: all(uid and uid != before[n] for n, uid in vmi_uids(res).items()) and
                      len(vmi_uids(res)) == len(before), 300, "new VMIs for every VM", period=0.5)
        known.unlink(missing_ok=True)
        return up, until_all_answer(unmarked(probes), started)
    finally:
        subprocess.run([*KVTOOL, "destroy", "--stack", STACK, "--auto-approve"], check=True, capture_output=True)
        # The floor must not share the CPU with guests still shutting down.
        benchlib.wait(lambda: subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True).returncode == 1,
                      300, "the lab's QEMU processes to end", period=1)


def floor_lab(students: dict[str, Path], tmp: Path, disk: Path) -> tuple[dict[str, float], dict[str, float]]:
    qemu = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
    base = yaml.safe_load(TEMPLATE.read_text())["spec"]["template"]["spec"]["volumes"][1]["cloudInitNoCloud"]
    template_config = yaml.safe_load(base["userData"])
    tb = compute.tcg_tb_cache_mib(MEMORY_MIB * 2**20)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    probes = {}

    def boot(i: int, name: str) -> None:
        overlay, seed = tmp / f"{name}.qcow2", tmp / f"{name}-seed.iso"
        overlay.unlink(missing_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(disk), str(overlay)],
                       check=True)
        procs[name] = subprocess.Popen(
            [qemu, "-machine", "q35", "-accel", f"tcg,tb-size={tb}", "-m", str(MEMORY_MIB), "-smp", "1",
             "-drive", f"file={overlay},if=virtio,format=qcow2", "-drive", f"file={seed},if=virtio,format=raw",
             "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{22200 + i}-:22", "-device", "virtio-net-pci,netdev=n0",
             "-display", "none", "-monitor", "none", "-nodefaults", "-serial", f"file:{tmp / name}.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        for i, (name, key) in enumerate(students.items()):
            student = roster.Student(name, key.with_suffix(".pub").read_text().strip())
            cloudinit.write_nocloud_iso(tmp / f"{name}-seed.iso", instance_id=f"floor-{name}", hostname=f"lab-{name}",
                                        user_data=roster.student_cloud_config(template_config, student, None),
                                        network_data=None)
            probes[name] = ["ssh", "-p", str(22200 + i), "-i", str(key), *ssh_options(tmp / "known_hosts_floor"),
                            f"{name}@127.0.0.1", "true"]
        started = time.monotonic()
        for i, name in enumerate(students):
            boot(i, name)
        up = until_all_answer(probes, started)
        marked(probes)
        started = time.monotonic()
        for i, name in enumerate(students):
            procs[name].kill()
            procs[name].wait()
            boot(i, name)
        (tmp / "known_hosts_floor").unlink()  # new host keys, as after kvtool's reset
        return up, until_all_answer(unmarked(probes), started)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def say(count: int, who: str, up: dict[str, float], reset: dict[str, float]) -> None:
    print(f"{count} student(s), {who}: apply {max(up.values()):.1f} s (p50 {statistics.median(up.values()):.1f}), "
          f"reset {max(reset.values()):.1f} s (p50 {statistics.median(reset.values()):.1f})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()
    res = Resources(clients.api_client(benchlib.kubeconfig()))
    image = debian_cloud.build(store.ImageStore())
    assert image.disk is not None
    rows = []
    for count in args.students:
        with tempfile.TemporaryDirectory(prefix="kvtool-bench-roster-") as tmp_name:
            tmp = Path(tmp_name)
            students = keys(tmp, count)
            kv_up, kv_reset = kvtool_lab(students, tmp, res)
            say(count, "kvtool", kv_up, kv_reset)  # a long run keeps what it measured, also if stopped later
            floor_up, floor_reset = floor_lab(students, tmp, image.disk)
            say(count, "plain QEMU", floor_up, floor_reset)
        rows += [(count, "apply", kv_up, floor_up), (count, "reset", kv_reset, floor_reset)]
    print("\nroster lab (debian-12, TCG, 1 GiB each): apply, or lab reset, → every student's ssh answering")
    print(f"  {'students':>8}  {'step':>5}  {'kvtool s':>9}  {'plain QEMU s':>12}  {'ratio':>6}")
    for count, step, kv, floor in rows:
        print(f"  {count:>8}  {step:>5}  {max(kv.values()):>9.1f}  {max(floor.values()):>12.1f}  "
              f"{max(kv.values()) / max(floor.values()):>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
