"""Load the JSON Schemas in schemas/ and validate documents against them.

Validation returns every problem at once, each with a field path and a
message a person can act on (unknown fields get a did-you-mean), followed
by the cross-field rules of kvtool.api.rules, the client-side twins of the
CRDs' CEL rules.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import fastjsonschema
import referencing
from referencing.jsonschema import DRAFT202012

from kvtool import paths
from kvtool.api import rules

if TYPE_CHECKING:
    import jsonschema

SCHEMA_FILES = ("common.json", "virtualmachine.json", "virtualmachineinstance.json",
                "virtualmachineinstancemigration.json", "virtualmachinepool.json", "virtualmachinesnapshot.json",
                "virtualmachinerestore.json")
# Marks a KubeVirt field kvtool refuses; its value says why. The field's schema is {"not": {}, UNSUPPORTED: why}.
UNSUPPORTED = "x-kvtool-unsupported"


def unsupported_message(reason: str) -> str:
    """The sentence after a refused KubeVirt field's path: that kvtool does not support it, and why."""
    return f"kvtool does not support this KubeVirt field: {reason}"


@dataclass(frozen=True, order=True)
class Issue:
    """One validation problem: where (a dotted field path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def schema_dir() -> Path:
    """kvtool/api/schemas: a link to the repository's schemas/ in a checkout, the files themselves in a
    wheel (so the launcher image validates with the same schemas)."""
    return Path(os.environ.get("KVTOOL_SCHEMAS") or Path(__file__).resolve().parent / "schemas")


@functools.cache
def load(name: str) -> dict[str, Any]:
    path = schema_dir() / name
    with open(path) as f:
        return json.load(f)


@functools.cache
def registry() -> referencing.Registry:
    resources = [(load(n)["$id"], DRAFT202012.create_resource(load(n))) for n in SCHEMA_FILES]
    return referencing.Registry().with_resources(resources)


@functools.cache
def inlined(name: str) -> dict[str, Any]:
    """The schema with every $ref replaced by its target: validating it needs no reference lookups,
    which made up most of the cost of validating thousands of VMs."""

    def inline(node: Any, base: str) -> Any:
        if isinstance(node, list):
            return [inline(n, base) for n in node]
        if not isinstance(node, Mapping):
            return node
        if "$ref" in node:
            target, target_id = _resolve(node, base)
            return inline({**target, **{k: v for k, v in node.items() if k != "$ref"}}, target_id)
        return {k: inline(v, base) for k, v in node.items() if k not in ("$defs", "$id", "$schema")}

    doc = load(name)
    return inline(doc, doc["$id"])


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    # Only invalid documents need its detailed errors: importing jsonschema costs ~0.2 s, ~1.8 s more when
    # rfc3987-syntax is installed (Jupyter pulls it in; jsonschema compiles its IRI grammar at import).
    import jsonschema

    return jsonschema.Draft202012Validator(inlined(name),
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


@functools.cache
def fast_check(name: str) -> Callable[[Any], Any]:
    """A compiled validator: ~20x faster than jsonschema, but with terse errors. Valid documents
    (nearly all of them) pass here alone; the rest go through jsonschema for good messages.
    Generating its code costs ~0.3 s, so the generated module is kept in the cache dir by schema hash
    and imported like any module (Python caches its bytecode in __pycache__, checked against the source)."""
    definition = {**inlined(name), "$schema": "http://json-schema.org/draft-07/schema#"}
    formats = {"date-time": _DATE_TIME}
    key = json.dumps([definition, fastjsonschema.VERSION], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    module_name = f"kvtool_validator_{name.removesuffix('.json')}_{digest}"
    source = paths.cache_dir() / "schemas" / f"{module_name}.py"
    if not source.exists():
        code = fastjsonschema.compile_to_code(definition, formats=formats)
        try:
            paths.write_atomic(source, code)
        except OSError:  # a read-only cache only costs time: run the code from memory
            namespace: dict[str, Any] = {}
            exec(compile(code, f"<{name} validator>", "exec"), namespace)
            return functools.partial(namespace["validate"], custom_formats=formats)
    spec = importlib.util.spec_from_file_location(module_name, source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return functools.partial(module.validate, custom_formats=formats)


_DATE_TIME = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"


@functools.cache
def rule_tree(name: str) -> rules.RuleNode | None:
    return rules.compile_rules(inlined(name))


def format_path(parts: Sequence[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def validate(doc: Mapping[str, Any], schema_name: str) -> list[Issue]:
    """All schema and cross-field problems of doc; empty when it is valid."""
    try:
        fast_check(schema_name)(doc)
        issues: list[Issue] = []
    except fastjsonschema.JsonSchemaException:
        issues = [_issue(e) for e in validator(schema_name).iter_errors(doc)]
    refused = [i.path for i in issues if i.message.startswith(unsupported_message(""))]
    # A cross-field rule about an object with a refused field ("a network needs a source: pod" next to its
    # refused multus) only repeats the refusal less clearly.
    issues += [Issue(path, message) for path, message in rules.check(doc, rule_tree(schema_name))
               if not any(r.startswith(f"{path}.") for r in refused)]
    return sorted(set(issues))


def _resolve(node: Mapping[str, Any], base_id: str) -> tuple[Mapping[str, Any], str]:
    """Follow a $ref, returning the target schema and its document's $id."""
    ref = node["$ref"]
    resolver = registry().resolver(base_uri=base_id)
    resolved = resolver.lookup(ref)
    target_id = resolved.resolver._base_uri
    return resolved.contents, target_id


def _issue(error: jsonschema.ValidationError) -> Issue:
    path = format_path(list(error.absolute_path))
    return Issue(path, _message(error))


def _message(error: jsonschema.ValidationError) -> str:
    kw, schema, inst = error.validator, error.schema, error.instance
    if kw == "not" and isinstance(schema, dict) and UNSUPPORTED in schema:
        return unsupported_message(schema[UNSUPPORTED])
    if kw == "additionalProperties" and isinstance(inst, dict) and isinstance(schema, dict):
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(k for k in inst if k not in allowed)
        parts = []
        for key in extra:
            guess = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else ""
            parts.append(f"unknown field {key!r}{hint}")
        return "; ".join(parts) + f" (allowed: {', '.join(allowed)})"
    if kw == "required":
        missing = cast("Sequence[str]", error.validator_value)  # the schema's "required" list
        field = next((f for f in missing if f not in inst), missing[0]) if isinstance(inst, dict) else missing[0]
        return f"missing required field {field!r}"
    if kw == "type":
        return f"expected {_types(error.validator_value)}, got {_describe(inst)}"
    if kw == "enum":
        return f"{inst!r} is not one of: {', '.join(map(str, cast('Sequence[Any]', error.validator_value)))}"
    if kw == "const":
        return f"must be {error.validator_value!r}, got {inst!r}"
    if kw in ("pattern", "format"):
        desc = schema.get("description") if isinstance(schema, dict) else None
        return f"{inst!r} is not valid: {desc or 'expected ' + str(error.validator_value)}"
    if kw == "anyOf" and isinstance(schema, dict) and schema.get("x-kubernetes-int-or-string"):
        return f"{inst!r} is not a Kubernetes quantity (examples: 128Mi, 1Gi, 500m, 2)"
    if kw == "propertyNames":
        return f"{inst!r} has an invalid key: {error.message}"
    if kw in ("minimum", "maximum", "minLength", "maxLength", "maxItems", "minItems", "maxProperties"):
        return f"{_describe(inst)}: {kw} is {error.validator_value}"
    return error.message


def _types(t: object) -> str:
    return " or ".join(t) if isinstance(t, list) else str(t)


def _describe(value: object) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object",
             type(None): "null"}
    name = names.get(type(value), type(value).__name__)
    shown = repr(value) if not isinstance(value, (dict, list)) else name
    return f"{name} {shown}" if shown != name else name


def walk_schema(node: Any, base_id: str) -> Iterator[tuple[Mapping[str, Any], str]]:
    """Yield (schema node, document id) resolving refs — for CRD generation and tests."""
    if isinstance(node, Mapping) and "$ref" in node:
        node, base_id = _resolve(node, base_id)
    yield node, base_id
