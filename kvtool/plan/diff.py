"""The diff: desired manifest vs live object, only over fields the user set. Pure functions.

Objects are flattened to {path: leaf}. A path is a tuple of keys, where an
item of a keyed list (x-kubernetes-list-type: map, e.g. disks by name) is a
`Key` — so item order never matters. Fields kvtool applied before but no
longer wants (from the live object's managedFields) are removals; fields
only the server or other managers set are never shown.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
from collections.abc import Iterator, Mapping
from typing import Any

from kvtool.api import quantity, schema
from kvtool.api.types import FIELD_MANAGER, MANAGED_BY_LABEL, STACK_LABEL, Kind
from kvtool.plan.model import SENSITIVE, Action, FieldChange, ResourceChange

RUNNING_STATUSES = {"Running", "Starting", "Provisioning", "Paused", "Migrating", "Stopping", "CrashLoopBackOff",
                    "Unknown", "WaitingForVolumeBinding", "ErrorUnschedulable"}


class Key(tuple):
    """One item of a keyed list, e.g. Key((('name', 'root'),))."""

    __slots__ = ()

    def __str__(self) -> str:
        return "[" + ",".join(f"{k}={v}" for k, v in self) + "]"


Path = tuple[Any, ...]


def display(path: Path) -> str:
    """spec.template.spec.volumes[name=root].containerDisk.image; keys with dots are quoted."""
    out = ""
    for part in path:
        if isinstance(part, Key):
            out += str(part)
        elif "." in str(part) or "/" in str(part):
            out += f'["{part}"]'
        else:
            out += f".{part}" if out else str(part)
    return out


# Identity fields every object has; the plan's header already names them.
_IDENTITY = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace"),
             ("metadata", "labels", MANAGED_BY_LABEL), ("metadata", "labels", STACK_LABEL)}


def _interesting(path: Path) -> bool:
    """False for identity fields and for the key field inside a keyed item (`disks[name=x].name`)."""
    if path in _IDENTITY:
        return False
    return not (len(path) >= 2 and isinstance(path[-2], Key) and any(k == path[-1] for k, _ in path[-2]))


@functools.cache
def keyed_lists(kind: Kind) -> dict[tuple[str, ...], tuple[str, ...]]:
    """Paths (keys only) of lists whose items are identified by keys, from the kind's schema."""
    if not kind.schema:
        return {}
    found: dict[tuple[str, ...], tuple[str, ...]] = {}

    def walk(node: Mapping[str, Any], base: str, path: tuple[str, ...], depth: int) -> None:
        while "$ref" in node:
            node, base = schema._resolve(node, base)
        if depth > 20:
            return
        if node.get("type") == "array" and node.get("x-kubernetes-list-type") == "map":
            found[path] = tuple(node.get("x-kubernetes-list-map-keys", ["name"]))
        for key, sub in node.get("properties", {}).items():
            walk(sub, base, (*path, key), depth + 1)
        if isinstance(node.get("items"), Mapping):
            walk(node["items"], base, path, depth + 1)

    doc = schema.load(kind.schema)
    walk(doc, doc["$id"], (), 0)
    return found


def _plain(path: Path) -> tuple[str, ...]:
    return tuple(p for p in path if not isinstance(p, Key))


def flatten(obj: Any, kind: Kind) -> dict[Path, Any]:
    """{path: leaf} of obj; keyed-list items are addressed by key, empty maps and lists are leaves."""
    out: dict[Path, Any] = {}
    _flatten(obj, keyed_lists(kind), (), (), out)
    return out


def _flatten(obj: Any, keyed: dict[tuple[str, ...], tuple[str, ...]], path: Path, plain: tuple[str, ...],
             out: dict[Path, Any]) -> None:
    if type(obj) is dict or isinstance(obj, Mapping):  # the first test is the cheap one: manifests are dicts
        if not obj and path:
            out[path] = {}
        for k, v in obj.items():
            if (not path and k == "status") or (plain == ("metadata",) and k == "managedFields"):
                continue
            _flatten(v, keyed, (*path, k), (*plain, k), out)
    elif isinstance(obj, list) and plain in keyed and all(isinstance(i, Mapping) for i in obj):
        keys = keyed[plain]
        for item in obj:
            _flatten(item, keyed, (*path, Key(tuple((k, item.get(k)) for k in keys))), plain, out)
        if not obj:
            out[path] = []
    else:
        out[path] = obj


def lookup(obj: Any, path: Path) -> tuple[bool, Any]:
    """(found, value) of path in obj."""
    cur = obj
    for part in path:
        if isinstance(part, Key):
            if not isinstance(cur, list):
                return False, None
            match = next((i for i in cur if isinstance(i, Mapping) and all(i.get(k) == v for k, v in part)), None)
            if match is None:
                return False, None
            cur = match
        elif (type(cur) is dict or isinstance(cur, Mapping)) and part in cur:
            cur = cur[part]
        else:
            return False, None
    return True, cur


def owned_paths(live: Mapping[str, Any], manager: str = FIELD_MANAGER, apply_only: bool = True,
                only: str | None = None) -> dict[str, set[Path]]:
    """Leaf paths per field manager (main resource only), from metadata.managedFields.

    `only` restricts parsing to one manager: kvtool's own fields are needed for every object,
    everyone else's only when a field is about to change (to name the conflict)."""
    result: dict[str, set[Path]] = {}
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("subresource") or entry.get("fieldsType") != "FieldsV1":
            continue
        name = entry.get("manager", "")
        if apply_only and name == manager and entry.get("operation") != "Apply":
            name = f"{name} ({entry.get('operation', '').lower()})"
        if only is not None and name != only:
            continue
        result.setdefault(name, set()).update(_leaf_paths(json.dumps(entry.get("fieldsV1") or {})))
    return result


@functools.lru_cache(maxsize=256)
def _leaf_paths(fields_v1: str) -> frozenset[Path]:
    """The leaf paths of one managedFields entry, by its JSON text: the objects of a stack mostly share a shape,
    so a plan of 1000 VMs walks a handful of distinct field sets, not 1000."""
    return frozenset(_fields_v1(json.loads(fields_v1), ()))


def _fields_v1(node: Mapping[str, Any], path: Path) -> Iterator[Path]:
    children = [k for k in node if k != "."]
    if not children:
        if path:
            yield path
        return
    for k in children:
        if k.startswith("f:"):
            yield from _fields_v1(node[k], (*path, k[2:]))
        elif k.startswith("k:"):
            try:
                items = json.loads(k[2:])
            except ValueError:
                continue
            yield from _fields_v1(node[k], (*path, Key(tuple(items.items()))))
        elif k.startswith("v:"):
            yield path  # an item of a set-list: the list as a whole
        elif k.startswith("i:"):
            yield path


def _equal(a: Any, b: Any, path: Path) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if a == b and (type(a) is type(b) or (isinstance(a, int | float) and isinstance(b, int | float))):
        return True
    if isinstance(a, str | int) and isinstance(b, str | int) and not isinstance(a, bool) and not isinstance(b, bool):
        # Quantities: the server may store 1Gi for 1024Mi on built-in kinds.
        try:
            return quantity.parse(a) == quantity.parse(b) and _quantity_path(path)
        except quantity.QuantityError:
            return False
    return False


def _quantity_path(path: Path) -> bool:
    names = {str(p) for p in path if not isinstance(p, Key)}
    return bool(names & {"requests", "limits", "capacity", "guest", "storage"})


def _matches(path: Path, patterns: tuple[str, ...]) -> bool:
    text = display(path)
    generic = "".join("[*]" if isinstance(p, Key) else f".{p}" for p in path).lstrip(".")
    for pat in patterns:
        if fnmatch.fnmatchcase(generic, pat) or fnmatch.fnmatchcase(text, pat) or \
                generic.startswith(pat + ".") or generic == pat:
            return True
    return False


def _is_running(live: Mapping[str, Any]) -> bool:
    status = live.get("status") or {}
    return bool(status.get("created")) or status.get("printableStatus") in RUNNING_STATUSES


def diff_object(kind: Kind, desired: Mapping[str, Any] | None, live: Mapping[str, Any] | None,
                source: str | None = None, force_replace: bool = False) -> ResourceChange:
    meta = (desired or live or {}).get("metadata", {})
    rc = ResourceChange(kind.api_version, kind.kind, meta.get("namespace"), meta.get("name", ""), Action.NOOP,
                        manifest=dict(desired) if desired is not None else None, source=source)
    if live is not None:
        rc.resource_version = live.get("metadata", {}).get("resourceVersion")
        rc.uid = live.get("metadata", {}).get("uid")
    if desired is None:
        rc.action = Action.DELETE
        return rc
    want = flatten(desired, kind)
    if live is None:
        rc.action = Action.CREATE
        rc.fields = [FieldChange(display(p), None, v, before_set=False, sensitive=_matches(p, kind.sensitive))
                     for p, v in sorted(want.items(), key=lambda kv: display(kv[0])) if _interesting(p)]
        return rc
    mine = owned_paths(live, only=FIELD_MANAGER).get(FIELD_MANAGER, set())
    running = _is_running(live)
    changes: list[FieldChange] = []
    for path, value in want.items():
        found, current = lookup(live, path)
        if found and _equal(value, current, path):
            continue
        changes.append(FieldChange(display(path), current if found else None, value, before_set=found))
    for path in mine:
        if path in want or any(path[: len(w)] == w for w in want if len(w) < len(path)):
            continue
        if any(w[: len(path)] == path for w in want):
            continue  # a parent of something still wanted
        found, current = lookup(live, path)
        if found and path[:2] != ("metadata", "managedFields"):
            changes.append(FieldChange(display(path), current, None, after_set=False))
    owners = owned_paths(live) if changes else {}
    owners.pop(FIELD_MANAGER, None)
    for fc in changes:
        path_t = next((p for p in (*want, *mine) if display(p) == fc.path), ())
        fc.sensitive = _matches(path_t, kind.sensitive)
        fc.forces_replacement = _matches(path_t, kind.immutable)
        fc.requires_restart = running and _matches(path_t, kind.restart_required)
        fc.conflict_with = sorted(m for m, paths in owners.items() if path_t in paths and fc.after_set)
    rc.fields = sorted(changes, key=lambda f: f.path)
    if not rc.fields and not force_replace:
        return rc
    rc.replace_reasons = [f"{f.path} cannot be changed in place" for f in rc.fields if f.forces_replacement]
    if force_replace:
        rc.replace_reasons.append("replacement requested with --replace")
    if rc.replace_reasons:
        rc.action = Action.REPLACE
    else:
        rc.action = Action.UPDATE
        rc.restart_required = any(f.requires_restart for f in rc.fields)
    return rc


def masked(rc: ResourceChange) -> dict[str, Any] | None:
    """rc.manifest with every sensitive leaf replaced by a marker."""
    from kvtool.api.types import kind_for

    kind = kind_for(rc.api_version, rc.kind)
    if rc.manifest is None or kind is None:
        return rc.manifest
    out = copy.deepcopy(rc.manifest)
    for path in flatten(out, kind):
        if _matches(path, kind.sensitive):
            _set(out, path, SENSITIVE)
    return out


def _set(obj: Any, path: Path, value: Any) -> None:
    cur = obj
    for part in path[:-1]:
        cur = next(i for i in cur if all(i.get(k) == v for k, v in part)) if isinstance(part, Key) else cur[part]
    last = path[-1]
    if isinstance(last, Key):
        return
    cur[last] = value

