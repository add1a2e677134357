"""The diff engine, pure: properties (hypothesis) and the cases plans must get right."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kvtool.api.types import VIRTUAL_MACHINE
from kvtool.plan import diff, render
from kvtool.plan.desired import DesiredState, Location, normalise
from kvtool.plan.model import Action, Plan
from kvtool.plan.planner import LiveState, key_of, make_plan
from tests.vmfactory import vm

KIND = VIRTUAL_MACHINE


# -- a model of the API server's server-side apply, enough for the diff's contract ----------

def fields_v1(manifest: dict[str, Any]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in diff.flatten(manifest, KIND):
        node = root
        for part in path:
            key = ("k:" + json.dumps(dict(part), separators=(",", ":"))) if isinstance(part, diff.Key) else f"f:{part}"
            node = node.setdefault(key, {})
    return root


def server_apply(live: dict[str, Any] | None, manifest: dict[str, Any], manager: str = "kvtool") -> dict[str, Any]:
    """Apply manifest as `manager`: its fields win, fields it owned before and dropped go away."""
    out = copy.deepcopy(live) if live else {"metadata": {}, "status": {"printableStatus": "Stopped"}}
    if live:
        before = diff.owned_paths(live).get(manager, set())
        wanted = set(diff.flatten(manifest, KIND))
        for path in sorted(before - wanted, key=len, reverse=True):
            _delete(out, path)
    _merge(out, manifest)
    meta = out.setdefault("metadata", {})
    meta["resourceVersion"] = str(int(meta.get("resourceVersion", "0")) + 1)
    meta["uid"] = meta.get("uid", "uid-1")
    meta["creationTimestamp"] = "2026-01-01T00:00:00Z"
    others = [m for m in meta.get("managedFields", []) if m["manager"] != manager]
    meta["managedFields"] = [*others, {"manager": manager, "operation": "Apply", "apiVersion": "kvtool.io/v1alpha1",
                                       "fieldsType": "FieldsV1", "fieldsV1": fields_v1(manifest)}]
    return out


def _merge(dst: Any, src: Any) -> Any:
    if isinstance(dst, dict) and isinstance(src, dict):
        for k, v in src.items():
            dst[k] = _merge(dst.get(k), v) if k in dst else copy.deepcopy(v)
        return dst
    if isinstance(dst, list) and isinstance(src, list) and all(isinstance(i, dict) and "name" in i for i in src + dst):
        by = {i["name"]: i for i in dst}
        for item in src:
            by[item["name"]] = _merge(by.get(item["name"], {}), item)
        return list(by.values())
    return copy.deepcopy(src)


def _delete(obj: Any, path: tuple[Any, ...]) -> None:
    found, _ = diff.lookup(obj, path[:-1])
    if not found:
        return
    _, parent = diff.lookup(obj, path[:-1])
    last = path[-1]
    if isinstance(last, diff.Key) and isinstance(parent, list):
        parent[:] = [i for i in parent if not all(i.get(k) == v for k, v in last)]
    elif isinstance(parent, dict):
        parent.pop(last, None)


def desired(*docs: dict[str, Any], stack: str = "s") -> DesiredState:
    state = DesiredState(stack)
    for i, d in enumerate(docs):
        obj, issues = normalise(d, Location("<test>", i), stack=stack, namespace="default")
        assert not issues, issues
        assert obj is not None
        state.objects.append(obj)
    return state


def live_of(state: DesiredState, extra: dict[str, Any] | None = None) -> LiveState:
    live = LiveState()
    for d in state.objects:
        obj = server_apply(None, d.manifest)
        if extra:
            _merge(obj, extra)
        live.members[key_of(KIND, obj)] = obj
    return live


def plan_of(state: DesiredState, live: LiveState) -> Plan:
    return make_plan(state, live, "https://test")


# -- strategies ---------------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True)


@st.composite
def vms(draw: st.DrawFn) -> dict[str, Any]:
    doc = vm(draw(names), cores=draw(st.integers(1, 8)), memory=draw(st.sampled_from(["64Mi", "128Mi", "1Gi"])),
             run_strategy=draw(st.sampled_from(["Always", "Halted", "Manual"])),
             labels=draw(st.dictionaries(st.sampled_from(["a", "b", "team"]), names, max_size=2)))
    tspec = doc["spec"]["template"]["spec"]
    vol_names = draw(st.lists(names, max_size=4, unique=True))
    tspec["volumes"] = [{"name": n, "emptyDisk": {"capacity": draw(st.sampled_from(["1Gi", "2Gi"]))}}
                        for n in vol_names]
    tspec["domain"]["devices"]["disks"] = [{"name": n, "disk": {"bus": draw(st.sampled_from(["virtio", "sata"]))}}
                                           for n in vol_names]
    return doc


def shuffled(doc: Any, rnd: random.Random) -> Any:
    """The same object with dict keys and keyed-list items in another order."""
    if isinstance(doc, dict):
        items = list(doc.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(doc, list) and all(isinstance(i, dict) and "name" in i for i in doc):
        out = [shuffled(i, rnd) for i in doc]
        rnd.shuffle(out)
        return out
    return doc


# -- properties -----------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(vms(), min_size=1, max_size=4, unique_by=lambda d: d["metadata"]["name"]))
def test_plan_after_apply_is_empty(docs: list[dict[str, Any]]) -> None:
    state = desired(*docs)
    first = plan_of(state, LiveState())
    assert first.summary() == (len(docs), 0, 0)
    # The server adds defaults, status and other managers' fields; none of that is drift.
    live = live_of(state, extra={"status": {"printableStatus": "Stopped", "conditions": []},
                                 "metadata": {"annotations": {"other": "x"}}})
    assert not plan_of(state, live).has_changes


@settings(max_examples=60, deadline=None)
@given(st.lists(vms(), min_size=1, max_size=4, unique_by=lambda d: d["metadata"]["name"]),
       st.lists(vms(), min_size=1, max_size=4, unique_by=lambda d: d["metadata"]["name"]), st.randoms())
def test_plans_do_not_depend_on_order(before: list[dict[str, Any]], after: list[dict[str, Any]],
                                      rnd: random.Random) -> None:
    live = live_of(desired(*before))
    a = plan_of(desired(*after), live)
    b = plan_of(desired(*[shuffled(d, rnd) for d in reversed(after)]), live)
    assert render.render_text(a, color=False) == render.render_text(b, color=False)
    fields = [[(c["address"], c["action"], c["fields"]) for c in p.to_json()["changes"]] for p in (a, b)]
    assert fields[0] == fields[1]


@settings(max_examples=40, deadline=None)
@given(vms(), vms())
def test_apply_of_any_plan_converges(old: dict[str, Any], new: dict[str, Any]) -> None:
    new["metadata"]["name"] = old["metadata"]["name"]
    live_obj = server_apply(None, desired(old).objects[0].manifest)
    state = desired(new)
    live = LiveState({key_of(KIND, live_obj): live_obj})
    p = plan_of(state, live)
    applied = server_apply(live_obj, p.changes[0].manifest or {})
    assert not plan_of(state, LiveState({key_of(KIND, applied): applied})).has_changes


# -- cases ------------------------------------------------------------------------------------------

def _single(old: dict[str, Any], new: dict[str, Any], live_extra: dict[str, Any] | None = None):
    live = live_of(desired(old), extra=live_extra)
    return plan_of(desired(new), live).changes[0]


def test_update_in_place_shows_before_and_after() -> None:
    rc = _single(vm("a", cores=1), vm("a", cores=2))
    assert rc.action == Action.UPDATE and not rc.restart_required
    (f,) = rc.fields
    assert (f.path, f.before, f.after) == ("spec.template.spec.domain.cpu.cores", 1, 2)


def test_running_vm_template_change_requires_restart() -> None:
    rc = _single(vm("a", memory="128Mi"), vm("a", memory="256Mi"),
                 live_extra={"status": {"printableStatus": "Running", "created": True}})
    assert rc.action == Action.UPDATE and rc.restart_required
    assert rc.fields[0].requires_restart
    rc = _single(vm("a", run_strategy="Always"), vm("a", run_strategy="Halted"),
                 live_extra={"status": {"printableStatus": "Running", "created": True}})
    assert not rc.restart_required, "runStrategy is not part of the template"


def test_removed_field_is_a_removal() -> None:
    old = vm("a", labels={"team": "x"})
    rc = _single(old, vm("a"))
    (f,) = rc.fields
    assert f.path == "metadata.labels.team" and not f.after_set and f.before == "x"


def test_drift_by_another_manager_is_shown_as_a_conflict() -> None:
    state = desired(vm("a", cores=1))
    obj = server_apply(None, state.objects[0].manifest)
    edited = copy.deepcopy(obj)
    edited["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = 4
    edited["metadata"]["managedFields"].append({
        "manager": "kubectl-edit", "operation": "Update", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:domain": {"f:cpu": {"f:cores": {}}}}}}}})
    rc = plan_of(state, LiveState({key_of(KIND, edited): edited})).changes[0]
    (f,) = rc.fields
    assert (f.before, f.after, f.conflict_with) == (4, 1, ["kubectl-edit"])
    text = render.render_text(plan_of(state, LiveState({key_of(KIND, edited): edited})), color=False)
    assert "owned by kubectl-edit: apply needs --force-conflicts" in text


def test_objects_no_longer_desired_are_deleted_and_replace_is_counted_twice() -> None:
    live = live_of(desired(vm("a"), vm("b")))
    p = make_plan(desired(vm("a")), live, "s", replace=["virtualmachine/a"])
    assert [(c.name, c.action) for c in p.changes] == [("a", Action.REPLACE), ("b", Action.DELETE)]
    assert p.summary() == (1, 0, 2)
    assert p.summary_line() == "Plan: 1 to add, 0 to change, 2 to destroy."


def test_secrets_are_masked_everywhere() -> None:
    secret = "#!/bin/sh\necho password=hunter2\n"
    p = plan_of(desired(vm("a", user_data=secret)), LiveState())
    text = render.render_text(p, color=False)
    dumped = json.dumps(p.to_json())
    assert "hunter2" not in text and "hunter2" not in dumped
    assert "(sensitive value)" in text
    assert "hunter2" in json.dumps(p.to_json(include_secrets=True)), "saved plans keep what apply needs"
    changed = _single(vm("a", user_data=secret), vm("a", user_data=secret.replace("hunter2", "swordfish")))
    assert changed.fields[0].sensitive
    assert "swordfish" not in render.render_text(Plan("s", "x", [changed]), color=False)


def test_plan_json_round_trips() -> None:
    live = live_of(desired(vm("a"), vm("b")))
    p = make_plan(desired(vm("a", cores=3), vm("c")), live, "https://x")
    again = Plan.from_json(json.loads(json.dumps(p.to_json(include_secrets=True))))
    assert again.to_json() == p.to_json()
    assert p.to_json()["summary"] == {"add": 1, "change": 1, "destroy": 1}


def test_display_paths() -> None:
    path = ("spec", "template", "spec", "volumes", diff.Key((("name", "root"),)), "containerDisk", "image")
    assert diff.display(path) == "spec.template.spec.volumes[name=root].containerDisk.image"
    assert diff.display(("metadata", "labels", "kvtool.io/stack")) == 'metadata.labels["kvtool.io/stack"]'
