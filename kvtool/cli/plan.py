"""`kvtool plan -f PATH...`: show what apply would change. Exit 0 no changes, 2 changes (with
--detailed-exitcode), 1 error, usage errors included — as Terraform."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from kvtool import labctl, paths
from kvtool.api.types import Target
from kvtool.cli import common
from kvtool.errors import KvtoolError
from kvtool.images import usage
from kvtool.plan import desired, planner, render, roster
from kvtool.plan.desired import DesiredState
from kvtool.plan.model import Plan


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_files(parser, required=True)
    common.add_stack(parser)
    common.add_api(parser)
    common.add_roster(parser)
    common.add_expiry(parser)
    parser.add_argument("--out", metavar="FILE", help="save the plan to FILE for `kvtool apply FILE`")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (secrets masked)")
    parser.add_argument("--detailed-exitcode", action="store_true", help="exit 2 when there are changes")
    parser.add_argument("--replace", action="append", default=[], metavar="KIND/NAME",
                        help="plan to replace this object even if unchanged (e.g. virtualmachine/vm-1)")
    parser.add_argument("--adopt", action="store_true", help="take over desired objects that exist outside the stack")
    parser.add_argument("--compact", action="store_true", help="do not list the fields of objects to create")
    parser.add_argument("--no-color", action="store_true")


def load(args: argparse.Namespace) -> DesiredState:
    """Read and validate every input file before connecting: input problems never wait for the cluster.
    Says once when KubeVirt documents were read as kvtool's (on stderr when stdout is JSON).

    With --roster the files are templates: the roster is read and the expansion checked here too, and
    `make` expands them for real once it can reuse the passwords the cluster already has."""
    state = desired.load(args.files, stack=args.stack, namespace=args.namespace, checks=[usage.checker()])
    set_expiry(args, state)
    note = state.conversion_note()
    if note:
        _say(args, note)
    if getattr(args, "roster", None):
        args.roster_input = roster.read(args.roster)
        with_roster(args, state, passwords={})
    return state


def set_expiry(args: argparse.Namespace, state: DesiredState) -> None:
    """--ttl, --on-expiry and --baseline as the annotations the controller reads (labctl.lab_settings)."""
    try:
        labctl.lab_settings(state, ttl=getattr(args, "ttl", None), on_expiry=getattr(args, "on_expiry", None),
                            baseline=getattr(args, "baseline", False))
    except ValueError as exc:
        raise KvtoolError(f"--ttl: {exc}") from None


def with_roster(args: argparse.Namespace, templates: DesiredState, passwords: dict[str, str]) -> DesiredState:
    """The templates expanded once per student of `args.roster_input`, validated as any input is."""
    return labctl.roster_state([o.manifest for o in templates.objects], args.roster_input, stack=args.stack,
                               namespace=args.namespace, passwords=passwords)


def _say(args: argparse.Namespace, text: str) -> None:
    """A line about the plan: on stdout with it, on stderr when stdout is the plan's JSON."""
    print(text, file=sys.stderr if getattr(args, "json", False) else sys.stdout)


class ClusterRead:
    """What a plan reads before it needs the desired state (the connection, the VM API the cluster serves, the
    stack's objects), read in a thread while the input is read: the API server and the JSON it sends take
    the other core. Reads only. Its errors are raised by `result`, once the input was read: input problems
    still come first and never wait for the cluster."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._value: tuple[common.Connection, Target, dict[planner.ObjKey, dict[str, Any]] | None] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="cluster-read", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            conn = common.connect(self._args)
            target = common.api_target(self._args, conn)
            self._value = conn, target, planner.list_members(conn.res, self._args.stack, target.plannable)
        except BaseException as exc:  # handed to the main thread by result()
            self._error = exc

    def result(self) -> tuple[common.Connection, Target, dict[planner.ObjKey, dict[str, Any]] | None]:
        """(connection, target, the stack's objects or None when listing them cluster-wide is forbidden)."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def make(args: argparse.Namespace, read: ClusterRead, state: DesiredState) -> tuple[common.Connection, Plan]:
    conn, target, members = read.result()
    if getattr(args, "roster_input", None) is not None:
        found = labctl.login_secrets(conn.res, args.namespace, args.stack)
        state = with_roster(args, state, roster.passwords_of(found))
        _say(args, f"Roster {args.roster}: {len(args.roster_input.students)} student(s); "
                   f"their initial passwords, where they have no key: kvtool lab passwords --stack {args.stack}")
    if target is not state.target:
        desired.retarget(state, target)
        _say(args, f"Planning for {target.vm.api_version} (KubeVirt's VM API on this cluster).")
    return conn, planner.plan(conn.res, state, conn.server, replace=args.replace, adopt=args.adopt, members=members)


def save(plan: Plan, path: str) -> None:
    """Write the plan 0600 (it may hold secrets, like Terraform's), also over an existing, wider file."""
    paths.write_atomic(Path(path), json.dumps(plan.to_json(include_secrets=True), indent=1), mode=0o600)


def run(args: argparse.Namespace) -> int:
    read = ClusterRead(args)
    state = load(args)
    conn, plan = make(args, read, state)
    if args.json:
        common.show_target(conn)
    if args.json:
        print(render.render_json(plan))
    else:
        render.render_text(plan, sys.stdout, color=False if args.no_color else None, compact=args.compact,
                           target=conn.target)
    if args.out:
        save(plan, args.out)
        print(f"\nSaved the plan to {Path(args.out)}. To apply exactly this plan: kvtool apply {args.out}",
              file=sys.stderr)
    return 2 if args.detailed_exitcode and plan.has_changes else 0
