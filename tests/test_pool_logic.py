"""VirtualMachinePool's pure parts: the controller's decisions (kvtool.controller.pool), the plan's notes on a pool,
its schema's rules, and KubeVirt's pool.kubevirt.io documents read as kvtool's."""

from __future__ import annotations

import copy
import datetime as dt
import random
from typing import Any

import pytest

from kvtool.api import kubevirt, schema
from kvtool.api.types import MANAGED_BY_LABEL, POOL_LABEL, STACK_LABEL, VIRTUAL_MACHINE_POOL
from kvtool.controller import pool as pool_logic
from kvtool.plan.desired import Location, normalise
from kvtool.plan.model import Action
from kvtool.plan.planner import LiveState, key_of, make_plan
from kvtool.plan.render import render_text
from tests.test_diff import desired
from tests.vmfactory import vm

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def pool_doc(name: str = "lab", replicas: int = 2, **spec: Any) -> dict[str, Any]:
    template = vm("ignored", run_strategy="Always")
    return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachinePool",
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "virtualMachineTemplate": {"metadata": {"labels": {"app": name}},
                                                "spec": template["spec"]}, **spec}}


def live_pool(**kw: Any) -> dict[str, Any]:
    doc = pool_doc(**kw)
    doc["metadata"].update(namespace="default", uid="pool-uid",
                           labels={STACK_LABEL: "s", MANAGED_BY_LABEL: "kvtool"})
    return doc


def made(pool: dict[str, Any], index: int, *, ready: bool = True, created: str = "2026-12-01T10:00:00Z",
         **status: Any) -> dict[str, Any]:
    out = pool_logic.vm_for(pool, index)
    out["metadata"].update(uid=f"vm-uid-{index}", creationTimestamp=created)
    out["status"] = {"ready": ready, **status}
    return out


def names(bodies: list[dict[str, Any]]) -> list[str]:
    return [b["metadata"]["name"] for b in bodies]


def test_a_new_pool_makes_its_vms_named_by_index_with_its_labels_and_owner() -> None:
    pool = live_pool(replicas=3)
    d = pool_logic.decide(pool, [], NOW)
    assert names(d.create) == ["lab-0", "lab-1", "lab-2"]
    first = d.create[0]
    assert first["metadata"]["labels"] == {"app": "lab", POOL_LABEL: "lab", STACK_LABEL: "s",
                                           MANAGED_BY_LABEL: "kvtool"}
    owner = first["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("VirtualMachinePool", "pool-uid", True)
    assert first["spec"] == pool["spec"]["virtualMachineTemplate"]["spec"]
    assert d.status == {"replicas": 0, "readyReplicas": 0, "labelSelector": "app=lab",
                        "conditions": d.status["conditions"]}


def test_scale_out_fills_the_lowest_free_indexes_and_skips_names_in_use() -> None:
    pool = live_pool(replicas=4)
    other = vm("lab-1")  # not the pool's: its name is taken all the same
    other["metadata"].update(namespace="default", uid="x")
    d = pool_logic.decide(pool, [made(pool, 0), made(pool, 3), other], NOW)
    assert names(d.create) == ["lab-2", "lab-4"]
    assert d.status["replicas"] == 2 and not d.delete
    # The controller hands over only the pool's own VMs, and the namespace's names as a container of its own.
    d = pool_logic.decide(pool, [made(pool, 0), made(pool, 3)], NOW, taken={"lab-1", "lab-2", "other"})
    assert names(d.create) == ["lab-4", "lab-5"]


def test_a_vm_deleted_by_hand_is_made_again_but_not_while_its_deletion_runs() -> None:
    pool = live_pool(replicas=2)
    d = pool_logic.decide(pool, [made(pool, 0)], NOW)
    assert names(d.create) == ["lab-1"]
    going = made(pool, 1)
    going["metadata"]["deletionTimestamp"] = "2026-12-01T11:59:59Z"
    d = pool_logic.decide(pool, [made(pool, 0), going], NOW)
    assert names(d.create) == ["lab-2"]  # lab-1's name is still held by the VM being deleted


@pytest.mark.parametrize(("policy", "gone"), [("DescendingOrder", ["lab-3", "lab-2", "lab-1"]),
                                              ("AscendingOrder", ["lab-0", "lab-1", "lab-2"]),
                                              ("Newest", ["lab-2", "lab-1", "lab-0"]),
                                              ("Oldest", ["lab-3", "lab-0", "lab-1"])])
def test_scale_in_removes_vms_in_the_sort_policys_order(policy: str, gone: list[str]) -> None:
    pool = live_pool(replicas=1, scaleInStrategy={"proactive": {"selectionPolicy": {"sortPolicy": policy}}})
    stamps = ["2026-12-01T10:00:01Z", "2026-12-01T10:00:02Z", "2026-12-01T10:00:03Z", "2026-12-01T10:00:00Z"]
    vms = [made(pool, i, created=stamps[i]) for i in range(4)]
    d = pool_logic.decide(pool, vms, NOW)
    assert [n for n, _ in d.delete] == gone
    assert d.delete[0][1].startswith("vm-uid-")  # deleted by uid: never a namesake made meanwhile


def test_scale_in_takes_vms_that_are_not_ready_first_and_random_by_default() -> None:
    pool = live_pool(replicas=2)
    vms = [made(pool, 0), made(pool, 1, ready=False), made(pool, 2)]
    picks = {pool_logic.decide(pool, vms, NOW, random.Random(seed)).delete[0][0] for seed in range(20)}
    assert picks == {"lab-1"}
    pool = live_pool(replicas=1)
    picks = {tuple(n for n, _ in pool_logic.decide(pool, [made(pool, i) for i in range(3)], NOW,
                                                   random.Random(seed)).delete) for seed in range(20)}
    assert len(picks) > 1  # Random: not always the same two


def test_unmanaged_scale_in_never_removes_a_vm() -> None:
    pool = live_pool(replicas=0, scaleInStrategy={"unmanaged": {}})
    d = pool_logic.decide(pool, [made(pool, 0)], NOW)
    assert not d.delete and not d.create


def test_autohealing_replaces_a_vm_that_keeps_failing_to_start() -> None:
    pool = live_pool(replicas=2, autohealing={"startUpFailureThreshold": 2, "minFailingToStartDuration": "1m"})
    crashing = made(pool, 1, ready=False, printableStatus="CrashLoopBackOff", startFailure={"consecutiveFailCount": 2})
    d = pool_logic.decide(pool, [made(pool, 0), crashing], NOW)
    assert d.delete == [("lab-1", "vm-uid-1")] and names(d.create) == ["lab-2"]
    assert d.events[0][:2] == ("Warning", "Autohealed") and "2 consecutive start failures" in d.events[0][2]
    # Unschedulable for 30 s of its 60: not yet, and the pool asks to be looked at again when it would be.
    stuck = made(pool, 1, ready=False, printableStatus="ErrorUnschedulable",
                 conditions=[{"type": "Ready", "status": "False",
                              "lastTransitionTime": (NOW - dt.timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")}])
    d = pool_logic.decide(pool, [made(pool, 0), stuck], NOW)
    assert not d.delete and d.requeue_after == pytest.approx(30)
    d = pool_logic.decide(pool, [made(pool, 0), stuck], NOW + dt.timedelta(seconds=31))
    assert d.delete == [("lab-1", "vm-uid-1")] and "ErrorUnschedulable for 61s" in d.events[0][2]
    # Without autohealing a failing VM stays: the user sees why in its status.
    plain = live_pool(replicas=2)
    assert not pool_logic.decide(plain, [made(plain, 0), made(plain, 1, ready=False, printableStatus="CrashLoopBackOff",
                                                             startFailure={"consecutiveFailCount": 9})], NOW).delete


def test_paused_and_mismatched_pools_do_nothing_and_say_why() -> None:
    pool = live_pool(replicas=3, paused=True)
    d = pool_logic.decide(pool, [], NOW)
    assert not d.create and any(c["type"] == "ReplicaPaused" and c["status"] == "True" for c in d.status["conditions"])
    pool = live_pool(replicas=3)
    pool["spec"]["selector"] = {"matchExpressions": [{"key": "app", "operator": "In", "values": ["other"]}]}
    d = pool_logic.decide(pool, [], NOW)
    failure = next(c for c in d.status["conditions"] if c["type"] == "ReplicaFailure")
    assert not d.create and failure["reason"] == "SelectorMismatch"


def test_a_changed_template_rewrites_each_vms_spec() -> None:
    pool = live_pool(replicas=2)
    vms = [made(pool, 0), made(pool, 1)]
    assert not pool_logic.decide(pool, vms, NOW).update
    changed = copy.deepcopy(pool)
    changed["spec"]["virtualMachineTemplate"]["spec"]["template"]["spec"]["domain"]["memory"]["guest"] = "256Mi"
    d = pool_logic.decide(changed, vms, NOW)
    assert names(d.update) == ["lab-0", "lab-1"]
    assert d.update[0]["spec"]["template"]["spec"]["domain"]["memory"]["guest"] == "256Mi"


def test_name_generation_gives_each_vm_its_own_secrets_and_config_maps() -> None:
    pool = live_pool(nameGeneration={"appendIndexToSecretRefs": True, "appendIndexToConfigMapRefs": True})
    tspec = pool["spec"]["virtualMachineTemplate"]["spec"]["template"]["spec"]
    tspec["volumes"] = [{"name": "ci", "cloudInitNoCloud": {"secretRef": {"name": "login"}}},
                        {"name": "cm", "configMap": {"name": "motd"}}]
    tspec["accessCredentials"] = [{"sshPublicKey": {"source": {"secret": {"secretName": "keys"}},
                                                    "propagationMethod": {"noCloud": {}}}}]
    spec = pool_logic.vm_for(pool, 3)["spec"]["template"]["spec"]
    assert spec["volumes"][0]["cloudInitNoCloud"]["secretRef"]["name"] == "login-3"
    assert spec["volumes"][1]["configMap"]["name"] == "motd-3"
    assert spec["accessCredentials"][0]["sshPublicKey"]["source"]["secret"]["secretName"] == "keys-3"
    assert tspec["volumes"][0]["cloudInitNoCloud"]["secretRef"]["name"] == "login"  # the pool's own is untouched


def test_selectors_as_strings_and_matches() -> None:
    selector = {"matchLabels": {"b": "2", "a": "1"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["y", "x"]},
                                     {"key": "gone", "operator": "DoesNotExist"}]}
    assert pool_logic.selector_string(selector) == "a=1,b=2,tier in (x,y),!gone"
    assert pool_logic.selector_matches(selector, {"a": "1", "b": "2", "tier": "x"})
    assert not pool_logic.selector_matches(selector, {"a": "1", "b": "2", "tier": "x", "gone": ""})
    assert not pool_logic.selector_matches(selector, {"a": "1", "b": "2"})


def test_schema_refuses_what_the_controller_cannot_do_with_the_field_and_reason() -> None:
    bad = pool_doc("p" * 57)
    bad["spec"]["selector"]["matchLabels"]["app"] = "other"
    bad["spec"]["updateStrategy"] = {"proactive": {}}
    bad["spec"]["replicas"] = -1
    issues = {i.path: i.message for i in schema.validate(bad, "virtualmachinepool.json")}
    assert "at most 56 characters" in issues["metadata.name"]
    assert "must match virtualMachineTemplate.metadata.labels" in issues["spec.selector.matchLabels"]
    assert "kvtool does not roll template changes out" in issues["spec.updateStrategy"]
    assert "spec.replicas" in issues
    assert schema.validate(pool_doc(), "virtualmachinepool.json") == []


def test_a_kubevirt_pool_reads_as_kvtools() -> None:
    doc = pool_doc()
    doc["apiVersion"] = "pool.kubevirt.io/v1beta1"
    doc["status"] = {"replicas": 2}
    assert kubevirt.is_kubevirt(doc)
    converted = kubevirt.from_kubevirt(doc)
    assert converted.manifest["apiVersion"] == "kvtool.io/v1alpha1" and "status" not in converted.manifest
    assert converted.source == "pool.kubevirt.io/v1beta1 VirtualMachinePool"


def _plan_text(state: Any, live: LiveState) -> tuple[Any, str]:
    planned = make_plan(state, live, "https://test")
    return planned, render_text(planned, color=False)


def test_the_plan_shows_the_vms_a_pool_makes_and_removes() -> None:
    state = desired(pool_doc(replicas=2))
    planned, text = _plan_text(state, LiveState())
    assert "#   replicas 0 -> 2: the controller makes lab-0, lab-1" in text, text
    live_doc = copy.deepcopy(state.objects[0].manifest)
    live_doc["metadata"].update(uid="u", resourceVersion="1")
    key = key_of(VIRTUAL_MACHINE_POOL, live_doc)
    grown = desired(pool_doc(replicas=4))
    live = LiveState(members={key: live_doc}, pool_vms={("default", "lab"): ["lab-0", "lab-1"]})
    planned, text = _plan_text(grown, live)
    assert planned.changes[0].action == Action.UPDATE
    assert "replicas 2 -> 4: the controller makes lab-2, lab-3 (now: lab-0, lab-1)" in text, text
    shrunk = desired(pool_doc(replicas=1, scaleInStrategy={"proactive": {"selectionPolicy": {
        "sortPolicy": "DescendingOrder"}}}))
    _, text = _plan_text(shrunk, live)
    assert "replicas 2 -> 1: the controller removes lab-1 (not-ready VMs first, then DescendingOrder)" in text, text
    _, text = _plan_text(desired(), live)
    assert "its VMs go with it: lab-0, lab-1" in text, text


def test_a_pool_on_a_kubevirt_target_is_refused_by_name() -> None:
    from kvtool.api.types import KUBEVIRT
    from kvtool.plan.desired import InvalidInput, retarget

    state = desired(pool_doc())
    with pytest.raises(InvalidInput) as caught:
        retarget(state, KUBEVIRT)
    assert "VirtualMachinePool is kvtool's own kind" in str(caught.value)
    obj, issues = normalise(pool_doc(), Location("<t>", 0), stack="s", namespace="default")
    assert obj is not None and not issues


def test_the_example_pool_is_valid_desired_state() -> None:
    from pathlib import Path

    from kvtool.plan.desired import load

    state = load([Path(__file__).resolve().parent.parent / "examples" / "pool" / "pool.yaml"], stack="s")
    assert [o.kind for o in state.objects] == [VIRTUAL_MACHINE_POOL]


def test_expectations_keep_a_stale_cache_from_making_or_removing_twice() -> None:
    pool = live_pool(replicas=1)
    vms = [made(pool, i) for i in range(3)]
    writes = pool_logic.Expectations()
    first = pool_logic.decide(pool, writes.seen(pool, vms, 0.0), NOW, random.Random(1))
    for _name, uid in first.delete:
        writes.deleted(uid, 0.0)
    # The cache has not seen the deletions: without expectations, Random would pick two more, maybe the third.
    again = pool_logic.decide(pool, writes.seen(pool, vms, 1.0), NOW, random.Random(2))
    assert not again.delete and not again.create
    # Scale out on a cache that lacks the VMs just made: no second create of the same count.
    grow = live_pool(replicas=3)
    writes = pool_logic.Expectations()
    d = pool_logic.decide(grow, writes.seen(grow, [], 0.0), NOW)
    for body in d.create:
        writes.created({**body, "metadata": {**body["metadata"], "uid": "new-" + body["metadata"]["name"]}}, 0.0)
    assert not pool_logic.decide(grow, writes.seen(grow, [], 1.0), NOW).create
    # Past their time, expectations are forgotten: a lost watch event never stalls the pool.
    assert len(pool_logic.decide(grow, writes.seen(grow, [], 1000.0), NOW).create) == 3
