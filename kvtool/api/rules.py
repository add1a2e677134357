"""Client-side twins of the CRDs' CEL rules (x-kubernetes-validations).

Each CEL rule in schemas/ carries an `x-kvtool-id`; RULES maps that id to a
Python function with the same meaning, so a bad VM is refused before it is
sent, with the same message the API server would give. Lists marked
`x-kubernetes-list-type: map` get the server's uniqueness check too.
A test asserts every id in the schemas has a function here and vice versa.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvtool.api import quantity

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# A rule gets `self` (the node it is attached to) and returns True when satisfied.
Rule = Callable[[Mapping[str, Any]], bool]


def _count(node: Mapping[str, Any], *keys: str) -> int:
    return sum(1 for k in keys if k in node)


def _disk_names(spec: Mapping[str, Any], kind: str) -> list[str]:
    return [d.get("name") for d in spec.get("domain", {}).get("devices", {}).get(kind, [])]


def _names(spec: Mapping[str, Any], key: str) -> set[str]:
    return {v.get("name") for v in spec.get(key, [])}


def _memory_at_least_1mi(node: Mapping[str, Any]) -> bool:
    if "guest" not in node or not quantity.is_quantity(node["guest"]):
        return True
    return quantity.parse(node["guest"]) >= 2**20


def _memory_given(spec: Mapping[str, Any]) -> bool:
    domain = spec.get("domain", {})
    return "guest" in domain.get("memory", {}) or "memory" in domain.get("resources", {}).get("requests", {})


RULES: dict[str, Rule] = {
    "name-dns-label": lambda n: bool(DNS_LABEL.match(str(n.get("metadata", {}).get("name", ""))))
    and len(str(n.get("metadata", {}).get("name", ""))) <= 63,
    "running-xor-runstrategy": lambda n: not ("running" in n and "runStrategy" in n),
    "disk-one-kind": lambda n: _count(n, "disk", "cdrom") <= 1,
    "interface-one-binding": lambda n: _count(n, "masquerade", "bridge") <= 1,
    "cloudinit-one-userdata": lambda n: _count(n, "userData", "userDataBase64", "secretRef") <= 1,
    "cloudinit-one-networkdata": lambda n: _count(n, "networkData", "networkDataBase64", "networkDataSecretRef") <= 1,
    "cloudinit-not-empty": lambda n: _count(n, "userData", "userDataBase64", "secretRef", "networkData",
                                            "networkDataBase64", "networkDataSecretRef") >= 1,
    "volume-one-source": lambda n: _count(n, "containerDisk", "persistentVolumeClaim", "cloudInitNoCloud",
                                          "emptyDisk", "hostDisk") == 1,
    "network-has-source": lambda n: "pod" in n,
    "memory-minimum": _memory_at_least_1mi,
    "disk-has-volume": lambda n: all(name in _names(n, "volumes") for name in _disk_names(n, "disks")),
    "interface-has-network": lambda n: all(name in _names(n, "networks") for name in _disk_names(n, "interfaces")),
    "memory-given": _memory_given,
    "clock-one-offset": lambda n: _count(n, "utc", "timezone") <= 1,
    "bootloader-one-kind": lambda n: _count(n, "bios", "efi") <= 1,
    "disk-io-native": lambda n: n.get("io") != "native" or n.get("cache") == "none",
    "probe-one-handler": lambda n: _count(n, "tcpSocket", "httpGet") == 1,
    "dns-none-needs-config": lambda n: n.get("dnsPolicy") != "None" or "dnsConfig" in n,
    "access-credentials-need-nocloud": lambda n: not any("sshPublicKey" in c for c in n.get("accessCredentials", []))
    or any("cloudInitNoCloud" in v for v in n.get("volumes", [])),
    "pool-name": lambda n: bool(DNS_LABEL.match(str(n.get("metadata", {}).get("name", ""))))
    and len(str(n.get("metadata", {}).get("name", ""))) <= 56,
    "pool-selector-matches-template": lambda n: all(
        ((n.get("virtualMachineTemplate") or {}).get("metadata") or {}).get("labels", {}).get(k) == v
        for k, v in (n.get("selector") or {}).get("matchLabels", {}).items()),
    "paused-without-liveness": lambda n: not ("startStrategy" in n and "livenessProbe" in n),
}

def _holds(fn: Rule, node: Mapping[str, Any]) -> bool:
    # A node of the wrong shape is the schema's to report, not the rule's.
    try:
        return fn(node)
    except (TypeError, AttributeError, KeyError, ValueError):
        return True


@dataclass
class RuleNode:
    """The part of a schema that carries rules: only subtrees that lead to a rule or a keyed list."""

    rules: list[Mapping[str, Any]] = field(default_factory=list)
    list_keys: tuple[str, ...] | None = None  # for x-kubernetes-list-type: map
    properties: dict[str, RuleNode] = field(default_factory=dict)
    additional: RuleNode | None = None
    items: RuleNode | None = None


def compile_rules(schema: Mapping[str, Any]) -> RuleNode | None:
    """Prune an inlined schema (no $ref) to its rule-bearing skeleton; None if nothing below matters."""
    node = RuleNode(rules=list(schema.get("x-kubernetes-validations", [])))
    if schema.get("x-kubernetes-list-type") == "map":
        node.list_keys = tuple(schema.get("x-kubernetes-list-map-keys", ["name"]))
    for key, sub in (schema.get("properties") or {}).items():
        child = compile_rules(sub)
        if child is not None:
            node.properties[key] = child
    if isinstance(schema.get("additionalProperties"), Mapping):
        node.additional = compile_rules(schema["additionalProperties"])
    if isinstance(schema.get("items"), Mapping):
        node.items = compile_rules(schema["items"])
    relevant = node.rules or node.list_keys or node.properties or node.additional or node.items
    return node if relevant else None


def check(doc: Any, tree: RuleNode | None) -> Iterator[tuple[str, str]]:
    """(field path, message) for every broken rule in doc."""
    from kvtool.api.schema import format_path  # schema imports this module

    def walk(node: Any, rn: RuleNode, path: list[str | int]) -> Iterator[tuple[str, str]]:
        if isinstance(node, Mapping):
            for rule in rn.rules:
                if not _holds(RULES[rule["x-kvtool-id"]], node):
                    suffix = rule.get("x-kvtool-field-path") or rule.get("fieldPath", "")
                    yield format_path(path) + (suffix if path else suffix[1:]), rule["message"]
            for key, child in rn.properties.items():
                if key in node:
                    yield from walk(node[key], child, [*path, key])
            if rn.additional is not None:
                for key, value in node.items():
                    if key not in rn.properties:
                        yield from walk(value, rn.additional, [*path, key])
        elif isinstance(node, list):
            if rn.list_keys:
                seen: set[tuple[Any, ...]] = set()
                for i, item in enumerate(node):
                    if isinstance(item, Mapping):
                        k = tuple(item.get(x) for x in rn.list_keys)
                        if not all(isinstance(v, str | int | bool | float | None) for v in k):
                            continue  # a key of the wrong type: the schema reports it
                        if k in seen:
                            shown = ", ".join(f"{x}={v!r}" for x, v in zip(rn.list_keys, k, strict=True))
                            yield format_path([*path, i]), f"duplicate entry with {shown}"
                        seen.add(k)
            if rn.items is not None:
                for i, item in enumerate(node):
                    yield from walk(item, rn.items, [*path, i])

    if tree is not None:
        yield from walk(doc, tree, [])
