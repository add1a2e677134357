"""Hypothesis strategies for fuzzing kvtool's inputs, and the one check every case must pass.

Valid manifests (a VM with cloud-init and disks, a Secret, a ConfigMap, a Service) are mutated: a
value replaced by one of another type, huge, unicode or empty; a key removed; an unknown key
added; then written as YAML, sometimes with YAML's own oddities (duplicate keys, `no`, tabs,
anchors, a broken line). Each case goes through `validate` (the YAML reader, the schemas, the
rules), the planner, and the Terraform provider's builder; each must end in a valid result or a
KvtoolError with a message: anything else is a traceback a user would see. Shared by
tests/test_fuzz.py (a few hundred cases) and bench/fuzz.py (ten thousand).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from kvtool.api import builder
from kvtool.errors import KvtoolError
from kvtool.plan import desired, planner
from kvtool.terraform import vmspec
from tests.vmfactory import vm

BASE: list[dict[str, Any]] = [
    vm("fuzz-vm", run_strategy="Always", user_data="#cloud-config\npassword: x\n"),
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fuzz-secret"}, "stringData": {"k": "v"}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fuzz-cm"}, "data": {"k": "v"}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "fuzz-svc"},
     "spec": {"selector": {"kvtool.io/vm": "fuzz-vm"}, "ports": [{"port": 22, "targetPort": 22}]}},
]
BASE[0]["spec"]["template"]["spec"]["domain"]["devices"]["disks"].append({"name": "data", "disk": {"bus": "virtio"}})
BASE[0]["spec"]["template"]["spec"]["volumes"].append({"name": "data", "emptyDisk": {"capacity": "1Gi"}})

TF_BASE = {"name": "fuzz-vm", "namespace": "default", "image": "tiny-linux", "cpu": 1, "memory": "256Mi",
           "run_strategy": "Always", "user_data": None, "node_selector": None, "labels": None,
           "disks": [{"name": "d", "size": "1Gi", "bus": "virtio"}], "manifest": None}

ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.text(alphabet=st.characters(min_codepoint=0x80, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)),
            max_size=30),
    st.just("x" * 70_000), st.just(""), st.just("1e999999"), st.just("-1Gi"), st.just("no"), st.just("0x1F"),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A YAML text: the base documents with a few mutations."""
    docs = copy.deepcopy(draw(st.lists(st.sampled_from(BASE), min_size=1, max_size=3)))
    for _ in range(draw(st.integers(1, 4))):
        doc = draw(st.sampled_from(docs))
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        parent = _parent(doc, path)
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(ODD_VALUES)
        elif action == "remove":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(ODD_VALUES)
    text = yaml.safe_dump_all(docs, allow_unicode=True, sort_keys=False)
    oddity = draw(st.sampled_from(["", "dup", "no", "tab", "anchor", "broken"]))
    if oddity == "dup":
        text = text.replace("metadata:\n", "metadata:\n  name: dup\n", 1)
    elif oddity == "no":
        text = text.replace("name: fuzz-vm", "name: no", 1)
    elif oddity == "tab":
        text = text.replace("  ", "\t", 1)
    elif oddity == "anchor":
        text = "x: &a [*a]\n---\n" + text
    elif oddity == "broken":
        text = text[: draw(st.integers(0, len(text)))]
    return text


ODD_STRINGS = st.one_of(st.text(max_size=40), st.sampled_from(["", "x" * 70_000, "1e999999", "-1Gi", "no", "{", "[1",
                                                                 "spec: {template: []}", "null", "🙂", "a/b"]))
# Terraform checks attribute types against the provider's schema before the provider sees them: strings stay
# strings, numbers numbers, maps of strings maps of strings. Their contents are fair game.
TF_TYPES: dict[str, st.SearchStrategy[Any]] = {
    "name": ODD_STRINGS, "namespace": ODD_STRINGS, "image": ODD_STRINGS, "memory": ODD_STRINGS,
    "run_strategy": ODD_STRINGS, "user_data": st.one_of(st.none(), ODD_STRINGS),
    "manifest": st.one_of(st.none(), ODD_STRINGS),
    "cpu": st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False)),
    "node_selector": st.one_of(st.none(), st.dictionaries(ODD_STRINGS, ODD_STRINGS, max_size=3)),
    "labels": st.one_of(st.none(), st.dictionaries(ODD_STRINGS, ODD_STRINGS, max_size=3)),
    "disks": st.one_of(st.none(), st.lists(st.fixed_dictionaries({"name": ODD_STRINGS, "size": ODD_STRINGS,
                                                                  "bus": ODD_STRINGS}), max_size=3)),
}


@st.composite
def tf_states(draw: st.DrawFn) -> dict[str, Any]:
    state = dict(TF_BASE)
    for key in draw(st.lists(st.sampled_from(sorted(TF_TYPES)), max_size=3)):
        state[key] = draw(TF_TYPES[key])
    return state


def check_yaml(text: str) -> str:
    """validate + plan of one YAML text: "valid" or "refused"; raises on anything but a clear KvtoolError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            state = desired.load([path], stack="fuzz")
        except KvtoolError as exc:
            assert str(exc).strip(), "an error without a message"
            return "refused"
    plan = planner.make_plan(state, planner.LiveState(), "https://fuzz")
    assert len(plan.changes) == len(state.objects), "every valid desired object is planned for creation"
    return "valid" if state.objects else "empty"


def check_tf(state: dict[str, Any]) -> str:
    """The Terraform provider's builder: a manifest or problems each naming an attribute, never an exception."""
    try:
        built = vmspec.build(state, stack="fuzz", image_kind=lambda _name: "kernel")
    except KvtoolError as exc:
        assert str(exc).strip()
        return "refused"
    assert (built.manifest is None) == bool(built.problems), built
    assert all(p.detail for p in built.problems)
    return "valid" if built.manifest is not None else "refused"


__all__ = ["builder", "check_tf", "check_yaml", "mutated", "tf_states"]
