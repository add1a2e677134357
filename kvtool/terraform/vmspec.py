"""Terraform attributes ↔ VirtualMachine manifests, with problems pointed at the attribute.

A resource's attributes become a manifest through kvtool.api.builder, the
`manifest` attribute is merged over it, and the result goes through
kvtool.plan.desired.normalise — the same labels, checks and messages as a
YAML file given to `kvtool plan`. Every problem comes back with the
attribute path Terraform should underline. Reading goes the other way:
what the cluster has, as attribute values, keeping the user's spelling
where it means the same thing (so `1Gi` written as `1024Mi` is no drift).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kvtool.api import builder, quantity, timeutil
from kvtool.api.types import FIELD_MANAGER, VIRTUAL_MACHINE
from kvtool.errors import KvtoolError
from kvtool.plan import desired, diff

# Typed attributes the builder fills, in schema order.
SPEC_ATTRIBUTES = ("cpu", "memory", "image", "disks", "user_data", "run_strategy", "node_selector", "labels")
AttrPath = list[str | tuple[str | int]]
TEMPLATE = "spec.template.spec"
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("metadata.name", "name"), ("metadata.namespace", "namespace"), ("metadata.labels", "labels"),
    ("spec.runStrategy", "run_strategy"), (f"{TEMPLATE}.domain.cpu", "cpu"), (f"{TEMPLATE}.domain.memory", "memory"),
    (f"{TEMPLATE}.domain.firmware", "image"), (f"{TEMPLATE}.nodeSelector", "node_selector"),
)
_ITEM = re.compile(rf"^{re.escape(TEMPLATE)}\.(volumes|domain\.devices\.disks)\[(\d+)\]")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a resource's attributes, for a Terraform diagnostic."""

    path: AttrPath
    summary: str
    detail: str = ""


@dataclass
class Built:
    manifest: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)


def parse_duration(value: str | None, default: float) -> float:
    """Seconds in "90s", "5m", "1h30m" or "300"; `default` for null."""
    return default if value is None else timeutil.parse_duration(str(value))


def parse_patch(text: str | None) -> dict[str, Any] | None:
    """The `manifest` attribute: a JSON or YAML mapping merged over the generated manifest."""
    if text is None or not text.strip():
        return None
    try:
        doc = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise ValueError(f"not JSON or YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"expected a mapping such as {{\"spec\": {{...}}}}, got {type(doc).__name__}")
    return doc


def merge(base: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """JSON merge patch (null deletes), except that keyed lists (disks, volumes...) merge item by name."""
    if isinstance(patch, Mapping) and isinstance(base, Mapping):
        out = dict(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(out.get(key), value, (*path, key))
        return out
    keys = diff.keyed_lists(VIRTUAL_MACHINE).get(path)
    if keys and isinstance(patch, list) and isinstance(base, list):
        out_list = [copy.deepcopy(i) for i in base]
        for item in patch:
            ident = tuple(item.get(k) for k in keys) if isinstance(item, Mapping) else None
            at = next((n for n, b in enumerate(out_list) if isinstance(b, Mapping)
                       and tuple(b.get(k) for k in keys) == ident), None)
            if at is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[at] = merge(out_list[at], item, path)
        return out_list
    return copy.deepcopy(patch)


def builder_args(state: Mapping[str, Any], image_kind: Callable[[str], str]) -> dict[str, Any]:
    """The builder's keyword arguments from attribute values (nulls mean the builder's defaults)."""
    args: dict[str, Any] = {"namespace": state.get("namespace") or "default"}
    for attr in ("cpu", "memory", "run_strategy", "user_data", "node_selector", "labels"):
        if state.get(attr) is not None:
            args[attr] = state[attr]
    if isinstance(args.get("cpu"), float) and args["cpu"].is_integer():
        args["cpu"] = int(args["cpu"])
    if state.get("image") is not None:
        args["image"] = state["image"]
        args["image_kind"] = image_kind(state["image"])
    args["disks"] = [dict(d) for d in state.get("disks") or []]
    return args


def build(state: Mapping[str, Any], *, stack: str, image_kind: Callable[[str], str]) -> Built:
    """The manifest kvtool would apply for these attributes, or the problems, each at its attribute."""
    try:
        manifest = builder.virtual_machine(state["name"], **builder_args(state, image_kind))
    except builder.SpecError as exc:
        return Built(None, [Problem(_builder_path(exc.path), f"Invalid {exc.path.split('[')[0].split('.')[0]}",
                                    exc.detail + (f"\n\nHint: {exc.hint}" if exc.hint else ""))])
    try:
        patch = parse_patch(state.get("manifest"))
    except ValueError as exc:
        return Built(None, [Problem(["manifest"], "Invalid manifest", str(exc))])
    if patch is not None:
        for key in ("apiVersion", "kind"):
            if key in patch and patch[key] != manifest[key]:
                return Built(None, [Problem(["manifest"], "Invalid manifest",
                                            f"{key} is {manifest[key]!r} and cannot be changed here")])
        for key in ("name", "namespace"):
            if key in (patch.get("metadata") or {}):
                return Built(None, [Problem(["manifest"], "Invalid manifest",
                                            f"set metadata.{key} with the {key} attribute, not in manifest")])
        manifest = merge(manifest, patch)
    where = desired.Location("terraform", 0)
    obj, issues = desired.normalise(manifest, where, stack=stack, namespace=state.get("namespace") or "default")
    problems = [Problem(attribute_path(i.path, manifest, state), f"Invalid {_attr_name(i.path, manifest, state)}",
                        _masked(f"{i.path}: {i.message}" if i.path else i.message, state.get("user_data")))
                for i in issues]
    return Built(obj.manifest if obj is not None else None, problems)


def _masked(text: str, secret: str | None) -> str:
    """Schema messages quote the value they refuse; user data must never appear in a diagnostic."""
    if not secret:
        return text
    return text.replace(repr(secret), "(sensitive value)").replace(secret, "(sensitive value)")


def _builder_path(path: str) -> AttrPath:
    m = re.match(r"^disks\[(\d+)\](?:\.(\w+))?", path)
    if m:
        return ["disks", (int(m.group(1)),), *([(m.group(2),)] if m.group(2) else [])]
    return ["image"] if path in ("kernel_args", "image_kind") else [path.split(".")[0]]


def attribute_path(issue_path: str, manifest: Mapping[str, Any], state: Mapping[str, Any]) -> AttrPath:
    """Which attribute a manifest field came from, so Terraform points at the right line."""
    for prefix, attr in _PREFIXES:
        if issue_path == prefix or issue_path.startswith((prefix + ".", prefix + "[")):
            return [attr]
    m = _ITEM.match(issue_path)
    if m:
        items = manifest["spec"]["template"]["spec"]
        for part in m.group(1).split("."):
            items = items.get(part, {}) if isinstance(items, Mapping) else {}
        index = int(m.group(2))
        name = items[index].get("name") if isinstance(items, list) and index < len(items) else None
        if name == builder.ROOT_DISK and state.get("image") is not None:
            return ["image"]
        if name == builder.CLOUDINIT_DISK and state.get("user_data") is not None:
            return ["user_data"]
        names = [d.get("name") for d in state.get("disks") or []]
        if name in names:
            return ["disks", (names.index(name),)]
    return ["manifest"] if state.get("manifest") else []


def _attr_name(issue_path: str, manifest: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    path = attribute_path(issue_path, manifest, state)
    return str(path[0]) if path else "virtual machine"


# -- reading: the cluster's VM as attribute values -----------------------------------------------

def attributes_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Typed attribute values from a manifest (nulls for what is empty or absent)."""
    parsed = builder.parse_virtual_machine(manifest)
    disks = [{k: str(v) for k, v in d.items()} for d in parsed["disks"]]
    return {
        "cpu": parsed["cpu"],
        "memory": None if parsed["memory"] is None else str(parsed["memory"]),
        "image": parsed["image"],
        "disks": disks or None,
        "user_data": parsed["user_data"],
        "run_strategy": parsed["run_strategy"],
        "node_selector": parsed["node_selector"] or None,
        "labels": parsed["labels"] or None,
    }


def same(attr: str, a: Any, b: Any) -> bool:
    """Whether two values of an attribute make the same manifest."""
    return _norm(attr, a) == _norm(attr, b)


def _norm(attr: str, value: Any) -> Any:
    if attr in ("disks", "node_selector", "labels") and not value:
        return None
    if attr == "manifest":
        try:
            return parse_patch(value)
        except ValueError:
            return value
    if attr == "memory" and value is not None:
        try:
            return quantity.parse(value)
        except quantity.QuantityError:
            return value
    if attr == "disks":
        out = []
        for d in value:
            d = {k: v for k, v in d.items() if v is not None and not (k == "bus" and v == builder.DEFAULT_BUS)}
            if "size" in d:
                with contextlib.suppress(quantity.QuantityError):
                    d["size"] = quantity.parse(d["size"])
            out.append(d)
        return out
    if attr == "cpu" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def refresh(prior: Mapping[str, Any], live: Mapping[str, Any], expected: Mapping[str, Any] | None) -> dict[str, Any]:
    """Attribute values for what the cluster has: the prior value wherever the VM still matches what
    `expected` (the manifest built from the prior values) asked for, the cluster's value elsewhere."""
    now = attributes_of(live)
    wanted = attributes_of(expected) if expected is not None else None
    state = dict(prior)
    state["name"], state["namespace"] = live["metadata"]["name"], live["metadata"].get("namespace")
    for attr in SPEC_ATTRIBUTES:
        if wanted is not None and same(attr, wanted[attr], now[attr]):
            continue  # unchanged: keep how the user wrote it
        state[attr] = now[attr]
    if wanted is not None and now["labels"]:
        # Labels others add (kubectl label, controllers) are theirs: show only the ones we set.
        mine = set(prior.get("labels") or {}) | {str(p[2]) for p in owned(live) if p[:2] == ("metadata", "labels")}
        kept = {k: v for k, v in now["labels"].items() if k in mine}
        state["labels"] = prior.get("labels") if same("labels", wanted["labels"], kept) else (kept or None)
    state["manifest"] = _refresh_patch(prior.get("manifest"), live)
    return state


def owned(live: Mapping[str, Any]) -> set[diff.Path]:
    """Leaf paths kvtool's field manager applied to the live object."""
    return diff.owned_paths(live, only=FIELD_MANAGER).get(FIELD_MANAGER, set())


def _refresh_patch(text: str | None, live: Mapping[str, Any]) -> str | None:
    """The `manifest` attribute as the cluster has it: unchanged if every field it sets still holds,
    else the same fields with the cluster's values (so the plan shows what drifted)."""
    try:
        patch = parse_patch(text)
    except ValueError:
        return text
    if patch is None:
        return text
    leaves = diff.flatten(patch, VIRTUAL_MACHINE)
    seen: dict[diff.Path, Any] = {}
    drifted = False
    for path, value in leaves.items():
        found, current = diff.lookup(live, path)
        if value is None:
            drifted |= found
            continue
        if not found or current != value:
            drifted = True
        if found:
            seen[path] = current
    return json.dumps(unflatten(seen), sort_keys=True, separators=(",", ":")) if drifted else text


def unflatten(leaves: Mapping[diff.Path, Any]) -> dict[str, Any]:
    """The inverse of diff.flatten: keyed-list items are rebuilt from their keys."""
    out: dict[str, Any] = {}
    for path, value in leaves.items():
        cur: Any = out
        for n, part in enumerate(path):
            last = n == len(path) - 1
            nxt = path[n + 1] if not last else None
            if isinstance(part, diff.Key):
                item = next((i for i in cur if all(i.get(k) == v for k, v in part)), None)
                if item is None:
                    item = dict(part)
                    cur.append(item)
                cur = item
                continue
            if last:
                cur[part] = copy.deepcopy(value)
            else:
                cur = cur.setdefault(part, [] if isinstance(nxt, diff.Key) else {})
    return out


def residual(live: Mapping[str, Any], built: Mapping[str, Any]) -> dict[str, Any] | None:
    """Fields kvtool applied to `live` that the typed attributes do not produce (for import): they go
    into the `manifest` attribute, so the first plan after an import does not silently drop them."""
    mine = owned(live)
    want = diff.flatten(built, VIRTUAL_MACHINE)
    extra: dict[diff.Path, Any] = {}
    for path in mine:
        if path[:1] == ("status",) or path[:2] == ("metadata", "labels"):
            continue
        if path in want or any(w[: len(path)] == path for w in want):
            continue
        found, value = diff.lookup(live, path)
        if found:
            extra[path] = value
    return unflatten(extra) or None


def is_unknown(value: Any) -> bool:
    """An unknown value: the framework's marker, or a refined unknown (msgpack extension 12, which
    Terraform ≥ 1.6 sends for values such as "prefix-${each.key}" during validation)."""
    from msgpack import ExtType
    from tf.types import Unknown

    return value is Unknown or isinstance(value, ExtType)


def check_known(values: Any) -> bool:
    """True when no value (however deep) is still unknown at plan time."""
    if is_unknown(values):
        return False
    if isinstance(values, Mapping):
        return all(check_known(x) for x in values.values())
    if isinstance(values, list):
        return all(check_known(x) for x in values)
    return True


def error_detail(exc: Exception) -> tuple[str, str]:
    """(summary, detail) of an exception for a diagnostic; never a traceback."""
    if isinstance(exc, KvtoolError):
        first, _, rest = exc.message.partition("\n")
        detail = rest.strip()
        if exc.hint:
            detail = f"{detail}\n\nHint: {exc.hint}".strip()
        return first, detail
    return f"{type(exc).__name__}: {exc}", "This is a bug in kvtool's Terraform provider; please report it."
