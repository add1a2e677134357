"""`kvtool lab passwords | extend | reset`: a lab's per-student logins, more time, and a fresh start (from the
images, and for claims from the baseline snapshots `kvtool apply --baseline` has the controller take).

Passwords are printed only here, on request (like `terraform output -raw`): never in plans, status,
events or logs. The verbs themselves are kvtool.labctl's, shared with the notebook.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

from kvtool import labctl, paths
from kvtool.api import expiry, timeutil
from kvtool.cli import common
from kvtool.errors import KvtoolError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    pw = sub.add_parser("passwords", help="each student's VM, login and initial password (students without a key)")
    ext = sub.add_parser("extend", help="give a lab's VMs more time (restarts the ones their expiry stopped)")
    ext.add_argument("--by", required=True, metavar="DURATION",
                     help="how much longer: from the current deadline, or from now once it has passed (1h, 30m, 2d)")
    reset = sub.add_parser("reset", help="every VM of the lab back to its start: a restart from its images, its "
                                         "claims written back from its baseline snapshot (apply --baseline)")
    reset.add_argument("--auto-approve", action="store_true", help="do not ask for confirmation")
    reset.add_argument("--known-hosts", type=Path,
                       help="forget the VMs' old host keys here (default ~/.kvtool/known_hosts, kvtool ssh's)")
    for sp in (pw, ext, reset):
        common.add_stack(sp)
        sp.add_argument("-n", "--namespace", default="default")
    pw.add_argument("-o", "--output", choices=["table", "json", "csv"], default="table")


def run(args: argparse.Namespace) -> int:
    return {"passwords": passwords, "extend": extend, "reset": reset}[args.action](args)


def passwords(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    rows = [{"student": login.student, "vm": login.vm, "login": login.student, "password": login.password}
            for login in labctl.passwords(conn.res, args.namespace, args.stack)]
    if not rows:
        raise KvtoolError(f"stack {args.stack!r} in namespace {args.namespace!r} has no student passwords",
                          hint="students with an ssh_key in the roster log in with their key; "
                               "passwords exist after `kvtool apply --roster CSV`")
    if args.output == "json":
        print(json.dumps(rows, indent=1))
    elif args.output == "csv":
        print("student,vm,login,password")
        for r in rows:
            print(f"{r['student']},{r['vm']},{r['login']},{r['password']}")
    else:
        width = max(len(r["vm"]) for r in rows)
        print(f"{'VM':<{width}}  LOGIN / PASSWORD")
        for r in rows:
            print(f"{r['vm']:<{width}}  {r['login']} / {r['password']}")
    return 0


def extend(args: argparse.Namespace) -> int:
    try:
        by = dt.timedelta(seconds=timeutil.parse_duration(args.by))
    except ValueError as exc:
        raise KvtoolError(f"--by: {exc}") from None
    conn = common.connect(args)
    now = timeutil.now()
    for name, new in sorted(labctl.extend(conn.res, args.namespace, args.stack, by, now)):
        print(f"{name}: expires at {timeutil.stamp(new)} (in {expiry.human((new - now).total_seconds())})")
    return 0


def reset(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    names = [vm["metadata"]["name"] for vm in labctl.stack_vms(conn.res, args.namespace, args.stack)]
    if names and not args.auto_approve:
        if not sys.stdin.isatty():
            raise KvtoolError("refusing to reset without confirmation: stdin is not a terminal",
                              hint="pass --auto-approve")
        print(f"Reset {len(names)} VM(s) of stack {args.stack!r}: {', '.join(names)}. Everything written in them "
              "is lost.", file=sys.stderr)
        if not common.confirm("Do you want to reset these VMs?"):
            print("Reset cancelled.", file=sys.stderr)
            return 1
    for line in labctl.reset(conn.res, args.namespace, args.stack):
        print(line)
    forget_host_keys(args.known_hosts or paths.kvtool_home() / "known_hosts", names, args.namespace)
    return 0


def forget_host_keys(known_hosts: Path, names: list[str], namespace: str) -> None:
    """A reset VM makes new SSH host keys on its first boot: drop the old ones `kvtool ssh` filed under its name."""
    keygen = shutil.which("ssh-keygen")
    if not known_hosts.is_file() or keygen is None:
        return
    for name in names:
        subprocess.run([keygen, "-R", f"vm/{name}.{namespace}", "-f", str(known_hosts)], capture_output=True)
    print(f"Forgot their old SSH host keys in {known_hosts}.")
