"""CustomResourceDefinitions generated from the JSON Schemas in schemas/.

CRDs need a *structural* OpenAPI schema: no $ref, no additionalProperties
next to properties, no const or propertyNames. This module turns the JSON
Schemas into that form; nothing about the API is written down twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from kvtool.api import schema
from kvtool.api.types import MANAGED_BY, MANAGED_BY_LABEL

CRD_SCHEMAS = ("virtualmachine.json", "virtualmachineinstance.json", "virtualmachineinstancemigration.json",
               "virtualmachinepool.json", "virtualmachinesnapshot.json", "virtualmachinerestore.json")
_DROP = {"$schema", "$id", "$defs", "title", "x-kvtool-crd", "propertyNames", "const", "examples"}


def structural(node: Any, base_id: str) -> Any:
    """A structural-schema copy of a JSON Schema node, $refs inlined."""
    if isinstance(node, list):
        return [structural(n, base_id) for n in node]
    if not isinstance(node, Mapping):
        return node
    if "$ref" in node:
        target, target_id = schema._resolve(node, base_id)
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return structural(merged, target_id)
    if node.get("x-kubernetes-int-or-string"):
        # The one anyOf form structural schemas allow; the string branch's pattern moves up.
        string_branch: Mapping[str, Any] = next((b for b in node.get("anyOf", []) if b.get("type") == "string"), {})
        out: dict[str, Any] = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
        if "pattern" in string_branch:
            out["pattern"] = string_branch["pattern"]
        if "description" in node:
            out["description"] = node["description"]
        return out
    out = {}
    refused = {k: v[schema.UNSUPPORTED] for k, v in node.get("properties", {}).items()
               if isinstance(v, Mapping) and schema.UNSUPPORTED in v}
    for key, value in node.items():
        if key in _DROP or key.startswith("x-kvtool"):
            continue
        if key == "additionalProperties" and (value is False or "properties" in node):
            continue
        if key == "x-kubernetes-validations":
            out[key] = [{k: v for k, v in rule.items() if not k.startswith("x-kvtool")} for rule in value]
        elif key == "properties":
            # A refused KubeVirt field keeps its name (so the server does not silently prune it) and is
            # refused by its parent's CEL rule with the same sentence the client gives.
            out[key] = {k: (_refused_field(v) if k in refused else structural(v, base_id)) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "anyOf"):
            out[key] = structural(value, base_id)
        else:
            out[key] = value
    if refused:
        out["x-kubernetes-validations"] = [*out.get("x-kubernetes-validations", []), *(
            {"rule": f"!has(self.{k})", "message": schema.unsupported_message(why), "fieldPath": f".{k}"}
            for k, why in refused.items())]
    if "const" in node:
        out.setdefault("type", "string")
    return out


# KubeVirt's type of a refused field (x-kvtool-type, default object): CEL only sees typed fields, and a value
# of KubeVirt's shape must reach the rule that names the field, not fail a type check first.
_REFUSED_TYPES: dict[str, dict[str, Any]] = {
    "object": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    "array": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    "stringArray": {"type": "array", "items": {"type": "string"}},
    "quantity": {"x-kubernetes-int-or-string": True},
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "boolean": {"type": "boolean"},
}


def _refused_field(node: Mapping[str, Any]) -> dict[str, Any]:
    return dict(_REFUSED_TYPES[node.get("x-kvtool-type", "object")])


def crd(schema_name: str) -> dict[str, Any]:
    doc = schema.load(schema_name)
    meta = doc["x-kvtool-crd"]
    openapi = structural(doc, doc["$id"])
    openapi.pop("required", None)
    openapi["required"] = ["spec"]
    # The API server owns metadata's schema; only name rules may be expressed on it.
    openapi["properties"]["metadata"] = {"type": "object"}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{meta['plural']}.{meta['group']}", "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "spec": {
            "group": meta["group"],
            "scope": meta["scope"],
            "names": {"kind": meta["kind"], "listKind": f"{meta['kind']}List", "plural": meta["plural"],
                      "singular": meta["singular"], "shortNames": meta["shortNames"],
                      "categories": meta["categories"]},
            "versions": [{
                "name": meta["version"],
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": openapi},
                # A pool's scale subresource: `kubectl scale` and autoscalers work on it as on a ReplicaSet.
                "subresources": {"status": {}, **({"scale": meta["scale"]} if "scale" in meta else {})},
                "additionalPrinterColumns": meta["printerColumns"],
                # `--field-selector status.nodeName=<node>`: how a node's handler watches its VMIs (Kubernetes
                # 1.31 and later), with no node label to write after the status.
                **({"selectableFields": meta["selectableFields"]} if "selectableFields" in meta else {}),
            }],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(name) for name in CRD_SCHEMAS]


def crds_yaml() -> str:
    return yaml.safe_dump_all(all_crds(), sort_keys=False, width=120)
