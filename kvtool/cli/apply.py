"""`kvtool apply -f PATH... | PLANFILE`: make the cluster match, with confirmation, progress and --wait."""

from __future__ import annotations

import argparse
import json
import sys

from kvtool.api.types import BY_KEY, VIRTUAL_MACHINE
from kvtool.cli import common
from kvtool.cli import plan as plan_cmd
from kvtool.errors import KvtoolError
from kvtool.plan import apply, render
from kvtool.plan.model import Action, Plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("planfile", nargs="?", help="a plan saved with `kvtool plan --out`")
    common.add_files(parser)
    common.add_stack(parser)
    common.add_api(parser)
    common.add_roster(parser)
    common.add_expiry(parser)
    parser.add_argument("--auto-approve", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--force-conflicts", action="store_true",
                        help="take over fields another field manager owns")
    parser.add_argument("--wait", action="store_true", help="wait until VMs reach the state their runStrategy asks for")
    parser.add_argument("--timeout", type=float, default=300, help="seconds --wait waits (default 300)")
    parser.add_argument("--concurrency", type=int, default=apply.DEFAULT_CONCURRENCY)
    parser.add_argument("--replace", action="append", default=[], metavar="KIND/NAME")
    parser.add_argument("--adopt", action="store_true")
    parser.add_argument("--compact", action="store_true")
    parser.add_argument("--no-color", action="store_true")


def load_planfile(path: str) -> Plan:
    try:
        with open(path) as f:
            return Plan.from_json(json.load(f))
    except OSError as exc:
        raise KvtoolError(f"cannot read plan file {path}: {exc.strerror}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise KvtoolError(f"{path} is not a kvtool plan file ({exc})",
                          hint="make one with `kvtool plan -f ... --out FILE`") from exc


def run(args: argparse.Namespace) -> int:
    if bool(args.planfile) == bool(args.files):
        raise KvtoolError("give either a saved plan file or -f PATH..., not both and not neither")
    # Input first (the plan file or every -f file), then the cluster: input problems never wait for it.
    if args.planfile:
        plan = load_planfile(args.planfile)
        conn = common.connect(args)
        apply.check_fresh(conn.res, plan, conn.server)
        approved = True  # a saved plan was already reviewed, as with `terraform apply PLANFILE`
    else:
        read = plan_cmd.ClusterRead(args)
        state = plan_cmd.load(args)
        conn, plan = plan_cmd.make(args, read, state)
        approved = args.auto_approve
    render.render_text(plan, sys.stdout, color=False if args.no_color else None, compact=args.compact,
                       target=conn.target)
    return execute(conn, plan, args, approved, "Do you want to perform these actions?")


def execute(conn: common.Connection, plan: Plan, args: argparse.Namespace, approved: bool, question: str) -> int:
    """Shared by apply and destroy: confirm, apply, report, wait."""
    if not plan.has_changes:
        return 0
    if not approved:
        if not sys.stdin.isatty():
            raise KvtoolError("refusing to apply without confirmation: stdin is not a terminal",
                              hint="pass --auto-approve")
        if not common.confirm(question):
            print("Apply cancelled.", file=sys.stderr)
            return 1
        apply.check_fresh(conn.res, plan, conn.server)
    result = apply.apply_plan(conn.res, plan, force_conflicts=getattr(args, "force_conflicts", False),
                              concurrency=getattr(args, "concurrency", apply.DEFAULT_CONCURRENCY))
    add, change, destroy = plan.summary()
    if not result.ok:
        print(result.report(), file=sys.stderr)
        return 1
    verb = "Destroy" if plan.destroy else "Apply"
    print(f"{verb} complete! Resources: {add} added, {change} changed, {destroy} destroyed.")
    if getattr(args, "wait", False) and not plan.destroy:
        vms = [(c.namespace or "default", c.name) for c in plan.changes
               if c.kind == "VirtualMachine" and c.action != Action.DELETE]
        kind = next((BY_KEY[(c.api_version, c.kind)] for c in plan.changes if c.kind == "VirtualMachine"),
                    VIRTUAL_MACHINE)
        late = apply.wait_for_vms(conn.res, vms, args.timeout, stack=plan.stack, kind=kind)
        if late:
            print(f"Timed out after {args.timeout:.0f}s waiting for: {', '.join(late)}", file=sys.stderr)
            return 1
        print(f"{len(vms)} VM(s) reached the state their runStrategy asks for.")
    return 0
