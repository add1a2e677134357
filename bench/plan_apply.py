"""kvtool plan/apply vs kubectl diff/apply --server-side on the same VMs, in one run, and apply against its
floor: the same N server-side applies from a minimal concurrent client (bench/ssa_floor.py).

Usage: python bench/plan_apply.py [--sizes 100 1000] [--kubeconfig PATH]
Uses the embedded cluster (started if needed) unless --kubeconfig is given. The VMs are Halted, so
the runtime does not start them: this measures the API work of planning and applying.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib

from kvtool.local import build
from kvtool.plan import apply

KVTOOL = [sys.executable, "-m", "kvtool.cli.main"]
FLOOR = Path(__file__).resolve().parent / "ssa_floor.py"
PLAN_RUNS = 7


def wait_deleted(kubectl: list[str], env: dict[str, str], stack: str, timeout: float = 300) -> None:
    """Until the stack's VMs are gone (destroy returns once deletes are accepted; finalizers may remain)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run([*kubectl, "get", "vms", "-l", f"kvtool.io/stack={stack}", "-o", "name"], env=env,
                             capture_output=True, text=True).stdout
        if not out.strip():
            return
        time.sleep(0.5)
    raise SystemExit(f"the VMs of stack {stack} were not deleted within {timeout:.0f} s")


def manifests(n: int, stack: str) -> str:
    items = []
    for i in range(n):
        items.append({
            "apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": f"{stack}-{i:04d}", "namespace": "default",
                         "labels": {"app.kubernetes.io/managed-by": "kvtool", "kvtool.io/stack": stack}},
            "spec": {"runStrategy": "Halted", "template": {"metadata": {"labels": {"lab": stack}}, "spec": {
                "domain": {"cpu": {"cores": 1}, "memory": {"guest": "128Mi"},
                           "firmware": {"kernelBoot": {"container": {"image": "tiny-linux"}}},
                           "devices": {"disks": [{"name": "cloudinit", "disk": {"bus": "virtio"}}],
                                       "interfaces": [{"name": "default", "masquerade": {}}]}},
                "volumes": [{"name": "cloudinit", "cloudInitNoCloud": {"userData": "#!/bin/sh\necho hi\n"}}],
                "networks": [{"name": "default", "pod": {}}]}}},
        })
    return "\n---\n".join(json.dumps(i) for i in items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--kubeconfig")
    args = parser.parse_args()
    kubectl = str(build.ensure_binary(progress=True).parent / "kubectl")
    kubeconfig = benchlib.kubeconfig(args.kubeconfig)
    env = dict(os.environ, KUBECONFIG=kubeconfig)
    # As an installed kvtool runs: pip writes bytecode at install. Without it (some shells set
    # PYTHONDONTWRITEBYTECODE) every run compiles kvtool's modules again, ~0.2 s of each command's time.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([*KVTOOL, "--help"], env=env, capture_output=True, check=True)  # writes the bytecode once
    k = [kubectl, "--kubeconfig", kubeconfig]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            stack = f"bench{n}"
            f = Path(tmp) / f"vms-{n}.yaml"
            f.write_text(manifests(n, stack))
            kv = [*KVTOOL, "--kubeconfig", kubeconfig]
            r: dict[str, float] = {"n": n}
            run = benchlib.run_timed
            r["kvtool plan (all create)"] = run([*kv, "plan", "-f", str(f), "--stack", stack, "--compact"], env)
            r["kubectl diff (all create)"] = run([*k, "diff", "--server-side", "-f", str(f)], env, ok=(0, 1))
            r["kubectl apply --server-side"] = run([*k, "apply", "--server-side", "-f", str(f)], env)
            benchlib.wait_settled(kubeconfig, stack)
            run([*k, "delete", "vms", "-l", f"kvtool.io/stack={stack}", "--wait=true"], env)
            r["kvtool apply"] = run([*kv, "apply", "-f", str(f), "--stack", stack, "--auto-approve", "--compact"], env)
            r["controller catch-up after kvtool apply"] = benchlib.wait_settled(kubeconfig, stack)
            # The figure the issue sets a goal for (< 0.5 s at 1000): ~1 s, so one run is as noisy as the change
            # being measured. Median of PLAN_RUNS.
            r["kvtool plan (no changes)"] = statistics.median(
                run([*kv, "plan", "-f", str(f), "--stack", stack, "--detailed-exitcode"], env)
                for _ in range(PLAN_RUNS))
            r["kubectl diff (no changes)"] = run([*k, "diff", "--server-side", "-f", str(f)], env)
            r["kvtool destroy"] = run([*kv, "destroy", "--stack", stack, "--auto-approve"], env)
            wait_deleted(k, env, stack)
            # The floor: the same N server-side applies from a minimal concurrent client (its own process).
            r["minimal SSA client"] = run([sys.executable, str(FLOOR), kubeconfig, str(f), "--concurrency",
                                           str(apply.DEFAULT_CONCURRENCY)], env)
            benchlib.wait_settled(kubeconfig, stack)
            run([*k, "delete", "vms", "-l", f"kvtool.io/stack={stack}", "--wait=true"], env)
            rows.append(r)
    print(f"\n== plan/apply, {os.cpu_count()} cores, seconds (one run each) ==")
    for r in rows:
        print(f"\nN = {int(r['n'])} VMs")
        pairs = (("plan, no changes*", "kvtool plan (no changes)", "kubectl diff (no changes)"),
                 ("plan, all create", "kvtool plan (all create)", "kubectl diff (all create)"),
                 ("apply (create)", "kvtool apply", "kubectl apply --server-side"))
        for label, ours, theirs in pairs:
            print(f"  {label:<18} kvtool {r[ours]:6.2f}   {theirs.split(' (')[0]:<28} {r[theirs]:6.2f}"
                  f"   -> kvtool {r[theirs] / r[ours]:.1f}x faster")
        print(f"  {'apply floor':<18} minimal SSA client {r['minimal SSA client']:6.2f} (same requests, "
              f"{apply.DEFAULT_CONCURRENCY} threads)   -> kvtool apply / floor "
              f"{r['kvtool apply'] / r['minimal SSA client']:.2f}x (goal ≤ 1.15)")
        print(f"  {'destroy':<18} kvtool {r['kvtool destroy']:6.2f}")
        print(f"  * kvtool's: the median of {PLAN_RUNS} runs (goal < 0.5 s at 1000 VMs)")
        print(f"  (the controller then took {r['controller catch-up after kvtool apply']:.1f} s more to write the "
              "VMs' status; each timed step starts from a quiet cluster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
