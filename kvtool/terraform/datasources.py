"""Data sources `kvtool_virtual_machine` (one VM) and `kvtool_virtual_machines` (a stack, or a label query).

Both read through kvtool.inventory, like `kvtool status`, so status, node and
IP mean the same thing everywhere. User data is never returned.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tf import schema as s
from tf import types as t
from tf.iface import DataSource, ReadDataContext

from kvtool.api.types import STACK_LABEL
from kvtool.terraform import vmspec

if TYPE_CHECKING:
    from kvtool.terraform.provider import KvtoolProvider


class Object(t.TfType):
    """An object type (the framework has none): values pass through as dicts."""

    def __init__(self, fields: dict[str, t.TfType]) -> None:
        self.fields = fields

    def encode(self, value: Any) -> Any:
        return value

    def decode(self, value: Any) -> Any:
        return value

    def tf_type(self) -> bytes:
        return json.dumps(["object", {k: json.loads(v.tf_type()) for k, v in self.fields.items()}]).encode()


def _attr(name: str, type_: t.TfType, description: str, **kwargs: Any) -> s.Attribute:
    return s.Attribute(name, type_, description=description, description_kind=s.TextFormat.Plain, **kwargs)


# What both data sources say about a VM (no user data: data sources have no sensitive marking per field).
VM_FIELDS: dict[str, tuple[t.TfType, str]] = {
    "id": (t.String(), "namespace/name"),
    "uid": (t.String(), "The VirtualMachine's uid."),
    "stack": (t.String(), "The kvtool stack it belongs to."),
    "labels": (t.Map(t.String()), "Its labels (without kvtool's own)."),
    "cpu": (t.Number(), "vCPUs."),
    "memory": (t.String(), "Guest memory."),
    "image": (t.String(), "The image it boots."),
    "run_strategy": (t.String(), "Its runStrategy."),
    "status": (t.String(), "printableStatus: Stopped, Starting, Running..."),
    "ready": (t.Bool(), "Whether the guest is ready."),
    "node": (t.String(), "The node it runs on."),
    "ip": (t.String(), "The guest's IP address."),
}


def vm_values(vm: dict[str, Any], vmi: dict[str, Any] | None) -> dict[str, Any]:
    from kvtool import inventory  # with the Kubernetes client: only when reading

    row = inventory.vm_row(vm, vmi)
    attrs = vmspec.attributes_of(vm)
    meta = vm["metadata"]
    return {
        "id": f"{meta.get('namespace')}/{meta['name']}", "uid": meta.get("uid"),
        "stack": (meta.get("labels") or {}).get(STACK_LABEL), "labels": attrs["labels"] or {},
        "cpu": row["cpu"], "memory": row["memory"] or None, "image": row["image"] or None,
        "run_strategy": row["run_strategy"], "status": row["status"], "ready": row["ready"],
        "node": row["node"] or None, "ip": row["ip"] or None,
    }


class VirtualMachineDataSource(DataSource):
    def __init__(self, provider: KvtoolProvider) -> None:
        self.provider = provider

    @classmethod
    def get_name(cls) -> str:
        return "virtual_machine"

    @classmethod
    def get_schema(cls) -> s.Schema:
        return s.Schema(version=0, description="One VirtualMachine, read from the cluster.", attributes=[
            _attr("name", t.String(), "The VM's name.", required=True),
            _attr("namespace", t.String(), "Its namespace (default: the provider's).", optional=True, computed=True),
            *(_attr(k, typ, desc, computed=True) for k, (typ, desc) in VM_FIELDS.items()),
        ])

    def read(self, ctx: ReadDataContext, config: dict[str, Any]) -> dict[str, Any] | None:
        namespace = config.get("namespace") or self.provider.namespace
        try:
            conn = self.provider.connection()
            res = conn.res
            vm = res.get(conn.target.vm, namespace, config["name"])
            if vm is None:
                ctx.diagnostics.add_error("VM not found", f"virtualmachine {namespace}/{config['name']} does not "
                                          "exist", path=["name"])
                return None
            vmi = res.get(conn.target.vmi, namespace, config["name"])
        except Exception as exc:
            ctx.diagnostics.add_error(*vmspec.error_detail(exc))
            return None
        return {"name": config["name"], "namespace": namespace, **vm_values(vm, vmi)}


class VirtualMachinesDataSource(DataSource):
    def __init__(self, provider: KvtoolProvider) -> None:
        self.provider = provider

    @classmethod
    def get_schema(cls) -> s.Schema:
        vm_type = Object({"name": t.String(), "namespace": t.String(),
                          **{k: typ for k, (typ, _) in VM_FIELDS.items()}})
        return s.Schema(version=0, description="The VMs of a stack, or those matching labels.", attributes=[
            _attr("stack", t.String(), "Stack to list (default: the provider's).", optional=True, computed=True),
            _attr("namespace", t.String(), "Only this namespace (default: all).", optional=True),
            _attr("labels", t.Map(t.String()), "Only VMs with all these labels.", optional=True),
            _attr("vms", t.List(vm_type), "The VMs, sorted by namespace and name.", computed=True),
            _attr("names", t.List(t.String()), "Their names.", computed=True),
        ])

    @classmethod
    def get_name(cls) -> str:
        return "virtual_machines"

    def read(self, ctx: ReadDataContext, config: dict[str, Any]) -> dict[str, Any] | None:
        stack = config.get("stack") or self.provider.stack
        namespace, labels = config.get("namespace"), config.get("labels") or {}
        try:
            from kvtool import inventory

            conn = self.provider.connection()
            selector = inventory.selector(stack, labels)
            vms, _ = conn.res.list(conn.target.vm, namespace, label_selector=selector)
            vmis, _ = conn.res.list(conn.target.vmi, namespace, label_selector=selector)
        except Exception as exc:
            ctx.diagnostics.add_error(*vmspec.error_detail(exc))
            return None
        by_key = {(v["metadata"].get("namespace"), v["metadata"]["name"]): v for v in vmis}
        items = sorted(vms, key=lambda v: (v["metadata"].get("namespace") or "", v["metadata"]["name"]))
        out = [{"name": v["metadata"]["name"], "namespace": v["metadata"].get("namespace"),
                **vm_values(v, by_key.get((v["metadata"].get("namespace"), v["metadata"]["name"])))} for v in items]
        return {"stack": stack, "namespace": namespace, "labels": config.get("labels"), "vms": out,
                "names": [o["name"] for o in out]}
