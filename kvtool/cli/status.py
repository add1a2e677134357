"""`kvtool status [NAME] [--stack S] [-o table|wide|json|csv|yaml]`: the stack's VMs in a table, or one VM
in detail (its row, then every condition with its reason and message: what is wrong and what to do);
`kvtool status NAME --timeline`: that VM's start step by step."""

from __future__ import annotations

import argparse
import json

import yaml

from kvtool import inventory, timeline
from kvtool.api.types import POD, Target
from kvtool.cli import common
from kvtool.errors import KvtoolError
from kvtool.kube.resources import Resources


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="one VM, in detail")
    parser.add_argument("--stack", help="only this stack (default: every kvtool-managed VM)")
    parser.add_argument("-n", "--namespace", help="only this namespace")
    parser.add_argument("-l", "--selector", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-o", "--output", choices=["table", "wide", "json", "csv", "yaml"], default="table")
    common.add_api(parser)
    parser.add_argument("--timeline", action="store_true",
                        help="with NAME: the VM's start step by step (VMI phases, launcher pod, guest ready)")


def run(args: argparse.Namespace) -> int:
    if args.timeline and not args.name:
        raise KvtoolError("--timeline shows one VM: name it", hint="kvtool status NAME --timeline")
    conn = common.connect(args)
    target = common.api_target(args, conn)
    if args.name and args.timeline:
        return _timeline(conn.res, target, args.name, args.namespace or "default", args.output)
    if args.name:
        return _one(conn.res, target, args.name, args.namespace or "default", args.output)
    labels = dict(s.split("=", 1) for s in args.selector if "=" in s)
    rows = inventory.vm_rows(conn.res, args.stack, args.namespace, labels, target=target)
    if args.output in ("json", "yaml"):
        clean = [{k: v for k, v in r.items() if k != "created"} for r in rows]
        print(json.dumps(clean, indent=2) if args.output == "json" else yaml.safe_dump(clean, sort_keys=False), end="")
        if args.output == "json":
            print()
        return 0
    columns = inventory.WIDE_COLUMNS if args.output in ("wide", "csv") else inventory.COLUMNS
    if args.stack is None and args.output == "table":
        columns = ["stack", *columns]
    if args.output == "table":  # a roster lab's students and a lab's time left, when there are any
        extra = [c for c in inventory.LAB_COLUMNS if any(r[c] for r in rows)]
        columns = [*columns[:-1], *extra, columns[-1]]
    df = inventory.frame(rows, columns)
    if args.output == "csv":
        print(df.to_csv(index=False), end="")
    elif df.empty:
        print("No VMs" + (f" in stack {args.stack!r}." if args.stack else "."))
    else:
        print(table(df))
    return 0


def table(df) -> str:
    """kubectl's look: upper-case headers, left-aligned columns, three spaces apart."""
    headers = [c.upper().replace("_", " ") for c in df.columns]
    cells = [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return "" if value is None else str(value)


def _timeline(res: Resources, target: Target, name: str, namespace: str, output: str) -> int:
    import pandas as pd

    vm = res.get(target.vm, namespace, name)
    if vm is None:
        raise KvtoolError(f"no VirtualMachine {namespace}/{name}", hint="`kvtool status` lists the VMs")
    vmi = res.get(target.vmi, namespace, name)
    pods = res.list(POD, namespace, label_selector=f"kvtool.io/vmi={name}")[0] if vmi is not None else []
    found = timeline.rows(timeline.steps(vm, vmi, pods))
    if output in ("json", "yaml"):
        print(json.dumps(found, indent=2) + "\n" if output == "json" else yaml.safe_dump(found, sort_keys=False),
              end="")
    elif output == "csv":
        print(pd.DataFrame(found).to_csv(index=False), end="")
    else:
        print(table(pd.DataFrame(found)))
        if vmi is None:
            print(f"\n{name} has no VMI: it is not running (start it with `kvtool start {name}`).")
        print("\nTimes with milliseconds are kvtool's own phase stamps; the others are Kubernetes' (seconds).")
    return 0


def _one(res: Resources, target: Target, name: str, namespace: str, output: str) -> int:
    vm = res.get(target.vm, namespace, name)
    if vm is None:
        raise KvtoolError(f"no VirtualMachine {namespace}/{name}", hint="`kvtool status` lists the VMs")
    vmi = res.get(target.vmi, namespace, name)
    row = inventory.vm_row(vm, vmi)
    conds = [{k: c.get(k, "") for k in ("type", "status", "reason", "message")}
             for c in (vm.get("status") or {}).get("conditions") or []]
    if output in ("json", "yaml"):
        doc = {**{k: v for k, v in row.items() if k != "created"}, "conditions": conds}
        print(json.dumps(doc, indent=2) + "\n" if output == "json" else yaml.safe_dump(doc, sort_keys=False), end="")
        return 0
    width = max(len(k) for k in inventory.WIDE_COLUMNS) + 2
    for key in inventory.WIDE_COLUMNS:
        print(f"{key.replace('_', ' ').capitalize() + ':':<{width}} {_cell(row.get(key))}")
    if conds:
        import pandas as pd

        print("\nConditions:")
        print(table(pd.DataFrame(conds)))
    return 0
