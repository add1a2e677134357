"""Plans as text (Terraform's look) and as JSON. Renderers only read the model."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from kvtool.plan.model import SENSITIVE, Action, FieldChange, Plan, ResourceChange

SYMBOL = {Action.CREATE: "+", Action.UPDATE: "~", Action.REPLACE: "-/+", Action.DELETE: "-", Action.NOOP: " "}
COLOR = {Action.CREATE: "32", Action.UPDATE: "33", Action.REPLACE: "35", Action.DELETE: "31", Action.NOOP: "0"}


def use_color(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _value(v: Any, sensitive: bool) -> str:
    if sensitive:
        return SENSITIVE
    return json.dumps(v, ensure_ascii=False, sort_keys=True)


def _field_line(f: FieldChange, color: bool) -> str:
    def c(code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if color else text

    if not f.before_set:
        line = f"{c('32', '+')} {f.path} = {_value(f.after, f.sensitive)}"
    elif not f.after_set:
        line = f"{c('31', '-')} {f.path} = {_value(f.before, f.sensitive)} -> null"
    else:
        line = f"{c('33', '~')} {f.path} = {_value(f.before, f.sensitive)} -> {_value(f.after, f.sensitive)}"
    notes = f.notes()
    if notes:
        line += c("2", f"  # {'; '.join(notes)}")
    return line


def _header(rc: ResourceChange, destroy_plan: bool) -> str:
    what = {
        Action.CREATE: "will be created",
        Action.UPDATE: "will be updated in place",
        Action.REPLACE: "must be replaced",
        Action.DELETE: "will be destroyed" + ("" if destroy_plan else " (no longer in the desired state)"),
    }[rc.action]
    if rc.restart_required:
        what += "; the running VM takes the change on restart (RestartRequired)"
    return f"  # {rc.address} {what}"


def render_text(plan: Plan, stream: TextIO | None = None, *, color: bool | None = None,
                compact: bool = False, target: str | None = None) -> str:
    """`target` names the cluster first (server and context), so a user sees what a change is aimed at."""
    out = stream or sys.stdout
    color = use_color(out) if color is None else color
    lines: list[str] = [f"Target cluster: {target}", ""] if target else []
    if plan.has_changes:
        lines.append(f'kvtool will perform the following actions (stack "{plan.stack}"):')
        lines.append("")
    for rc in plan.actionable:
        sym = SYMBOL[rc.action]
        sym_c = f"\x1b[{COLOR[rc.action]}m{sym}\x1b[0m" if color else sym
        lines.append(_header(rc, plan.destroy))
        for reason in [*rc.replace_reasons, *rc.notes]:
            lines.append(f"  #   {reason}")
        if rc.action == Action.DELETE or (compact and rc.action == Action.CREATE):
            lines.append(f"{sym_c:>{len(sym_c) + 3 - len(sym)}} {rc.kind.lower()} \"{_ns_name(rc)}\"")
        else:
            lines.append(f"{sym_c:>{len(sym_c) + 3 - len(sym)}} {rc.kind.lower()} \"{_ns_name(rc)}\" {{")
            lines.extend(f"      {_field_line(f, color)}" for f in rc.fields)
            lines.append("    }")
        lines.append("")
    conflicts = sum(len(rc.conflicts) for rc in plan.changes)
    if conflicts:
        lines.append(f"Warning: {conflicts} field(s) are owned by another field manager; "
                     "`kvtool apply` will refuse them unless --force-conflicts.")
    restart = [rc.address for rc in plan.changes if rc.restart_required]
    if restart:
        lines.append(f"Note: {len(restart)} running VM(s) take their changes on restart: `kvtool restart NAME`.")
    lines.append(plan.summary_line())
    text = "\n".join(lines) + "\n"
    if stream is not None:
        stream.write(text)
    return text


def _ns_name(rc: ResourceChange) -> str:
    return f"{rc.namespace}/{rc.name}" if rc.namespace else rc.name


def render_json(plan: Plan) -> str:
    return json.dumps(plan.to_json(include_secrets=False), indent=2, sort_keys=False)
