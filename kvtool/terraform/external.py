"""Terraform's external data source protocol, answered from the cluster (`kvtool tf-external`).

The program gets one JSON object on stdin and must print one flat JSON
object whose values are all strings; on bad input it must print a message
on stderr and exit non-zero (hashicorp/external shows that message). With
`name`, the answer describes that VM (the `kvtool status` row); without, it
summarises the stack (count, names, and name → IP as a JSON string for
`jsondecode`). User data is never part of an answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kvtool import inventory
from kvtool.api.types import DEFAULT_STACK, VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE
from kvtool.errors import KvtoolError
from kvtool.kube.resources import Resources
from kvtool.plan import desired

# Query keys: which VMs, and how to reach the cluster (the CLI's --kubeconfig/--context otherwise).
QUERY_KEYS = ("stack", "namespace", "name", "selector", "kubeconfig", "context")
VM_FIELDS = ("name", "namespace", "stack", "status", "ready", "phase", "node", "ip", "cpu", "memory",
             "run_strategy", "image", "restart_required", "age")


class BadQuery(KvtoolError):
    """The query is not what the protocol (or kvtool) accepts."""


def parse_query(text: str) -> dict[str, str]:
    """The query object; BadQuery naming what is wrong."""
    try:
        query = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise BadQuery(f"the query on stdin is not JSON: {exc}",
                       hint='pass a JSON object such as {"stack": "lab", "name": "vm-1"}') from exc
    if not isinstance(query, dict):
        raise BadQuery(f"the query must be a JSON object, got {type(query).__name__}")
    for key, value in query.items():
        if key not in QUERY_KEYS:
            raise BadQuery(f"unknown query key {key!r}", hint=f"the query takes {', '.join(QUERY_KEYS)}")
        if not isinstance(value, str):
            raise BadQuery(f"query value {key!r} must be a string (the protocol's rule), got {type(value).__name__}")
    if "stack" in query:
        desired.validate_stack(query["stack"])
    return query


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def answer(res: Resources, query: Mapping[str, str]) -> dict[str, str]:
    """The flat string map the protocol returns."""
    stack = query.get("stack") or DEFAULT_STACK
    namespace = query.get("namespace") or ("default" if query.get("name") else None)
    labels = dict(p.split("=", 1) for p in (query.get("selector") or "").split(",") if "=" in p)
    if query.get("name"):
        vm = res.get(VIRTUAL_MACHINE, namespace, query["name"])
        found_stack = ((vm or {}).get("metadata", {}).get("labels") or {}).get("kvtool.io/stack")
        if vm is None or found_stack != stack:
            where = f"virtualmachine {namespace}/{query['name']}"
            raise KvtoolError(f"{where} is not in stack {stack!r}" if vm is not None else f"{where} not found",
                              hint="check the name, namespace and stack in the query (`kvtool status`)")
        vmi = res.get(VIRTUAL_MACHINE_INSTANCE, namespace, query["name"])
        row = inventory.vm_row(vm, vmi)
        return {k: _text(row[k]) for k in VM_FIELDS} | {"uid": _text(vm["metadata"].get("uid"))}
    rows = inventory.vm_rows(res, stack, namespace, labels)
    return {
        "stack": stack,
        "count": str(len(rows)),
        "names": ",".join(r["name"] for r in rows),
        "ips": json.dumps({r["name"]: r["ip"] for r in rows}, sort_keys=True),
        "running": str(sum(1 for r in rows if r["status"] == "Running")),
    }
