"""`kvtool status [--stack S] [-o table|wide|json|csv|yaml]`: the stack's VMs in a table."""

from __future__ import annotations

import argparse
import json

import yaml

from kvtool import inventory
from kvtool.cli import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", help="only this stack (default: every kvtool-managed VM)")
    parser.add_argument("-n", "--namespace", help="only this namespace")
    parser.add_argument("-l", "--selector", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-o", "--output", choices=["table", "wide", "json", "csv", "yaml"], default="table")


def run(args: argparse.Namespace) -> int:
    conn = common.connect(args)
    labels = dict(s.split("=", 1) for s in args.selector if "=" in s)
    rows = inventory.vm_rows(conn.res, args.stack, args.namespace, labels)
    if args.output in ("json", "yaml"):
        clean = [{k: v for k, v in r.items() if k != "created"} for r in rows]
        print(json.dumps(clean, indent=2) if args.output == "json" else yaml.safe_dump(clean, sort_keys=False), end="")
        if args.output == "json":
            print()
        return 0
    columns = inventory.WIDE_COLUMNS if args.output in ("wide", "csv") else inventory.COLUMNS
    if args.stack is None and args.output == "table":
        columns = ["stack", *columns]
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
