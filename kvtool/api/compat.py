"""docs/kubevirt-compat.md, generated from the schemas: every field of KubeVirt's VM/VMI spec that kvtool's
schemas name, as supported, mapped (accepted, with a difference the schema states) or refused (and why).

The schemas are the one place this is decided (x-kvtool-mapping, x-kvtool-unsupported), so the table cannot
drift from what `kvtool validate` does; a test compares the file with `markdown()`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from kvtool.api import schema

MAPPING = "x-kvtool-mapping"
# (title, path into the inlined VirtualMachine schema): KubeVirt's field groups, one table each.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("VirtualMachine `spec`", ("spec",)),
    ("VMI `spec` (a VM's `spec.template.spec`)", ("spec", "template", "spec")),
    ("`domain`", ("spec", "template", "spec", "domain")),
    ("`domain.cpu`", ("spec", "template", "spec", "domain", "cpu")),
    ("`domain.memory`", ("spec", "template", "spec", "domain", "memory")),
    ("`domain.firmware`", ("spec", "template", "spec", "domain", "firmware")),
    ("`domain.features`", ("spec", "template", "spec", "domain", "features")),
    ("`domain.clock`", ("spec", "template", "spec", "domain", "clock")),
    ("`domain.devices`", ("spec", "template", "spec", "domain", "devices")),
    ("`domain.devices.disks[]`", ("spec", "template", "spec", "domain", "devices", "disks", "[]")),
    ("`domain.devices.interfaces[]`", ("spec", "template", "spec", "domain", "devices", "interfaces", "[]")),
    ("`networks[]`", ("spec", "template", "spec", "networks", "[]")),
    ("`volumes[]`", ("spec", "template", "spec", "volumes", "[]")),
)


def _node(path: tuple[str, ...]) -> Mapping[str, Any]:
    node: Mapping[str, Any] = schema.inlined("virtualmachine.json")
    for step in path:
        node = node["items"] if step == "[]" else node["properties"][step]
    return node


def status(field: Mapping[str, Any]) -> tuple[str, str]:
    """(supported | mapped | refused, the note) for one field's schema."""
    if schema.UNSUPPORTED in field:
        return "refused", field[schema.UNSUPPORTED]
    if MAPPING in field:
        return "mapped", field[MAPPING]
    return "supported", field.get("description") or "as in KubeVirt"


def rows(path: tuple[str, ...]) -> Iterator[tuple[str, str, str]]:
    for name, field in _node(path).get("properties", {}).items():
        yield (name, *status(field))


def markdown() -> str:
    lines = [
        "# KubeVirt compatibility",
        "",
        "Generated from `schemas/` by `kvtool.api.compat` (`kvtool crds --compat`); a test fails when this file "
        "and the schemas disagree. kvtool reads KubeVirt's `kubevirt.io/v1` and `v1alpha3` VirtualMachines and "
        "VirtualMachineInstances as they are (`kvtool convert` writes them out as `kvtool.io/v1alpha1`).",
        "",
        "- **supported**: the field means what it means in KubeVirt, from the schema to the domain XML or the pod.",
        "- **mapped**: accepted; the note says how kvtool differs.",
        "- **refused**: `kvtool validate`, `plan` and the API server refuse it, naming the field and the reason.",
    ]
    counts = {"supported": 0, "mapped": 0, "refused": 0}
    for title, path in GROUPS:
        lines += ["", f"## {title}", "", "| field | kvtool | note |", "|---|---|---|"]
        for name, state, note in rows(path):
            counts[state] += 1
            lines.append(f"| `{name}` | {state} | {note.replace('|', '/')} |")
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    lines[2:2] = [f"Fields in the tables below: {summary}.", ""]
    return "\n".join(lines) + "\n"
