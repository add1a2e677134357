"""`kvtool lab passwords`: the per-student side of a stack made with `kvtool apply --roster`.

Passwords are printed only here, on request (like `terraform output -raw`): never in plans, status,
events or logs.
"""

from __future__ import annotations

import argparse
import json

from kvtool.api.types import SECRET
from kvtool.cli import common
from kvtool.errors import KvtoolError
from kvtool.plan import roster


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    pw = sub.add_parser("passwords", help="each student's VM, login and initial password (students without a key)")
    common.add_stack(pw)
    pw.add_argument("-n", "--namespace", default="default")
    pw.add_argument("-o", "--output", choices=["table", "json", "csv"], default="table")


def run(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    found, _ = conn.res.list(SECRET, args.namespace, label_selector=roster.selector(args.stack))
    passwords = roster.passwords_of(found)
    students = {s["metadata"]["name"].removesuffix("-login"): s["metadata"]["labels"][roster.STUDENT_LABEL]
                for s in found}
    rows = [{"student": students[vm], "vm": vm, "login": students[vm], "password": pw}
            for vm, pw in sorted(passwords.items())]
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
