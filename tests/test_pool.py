"""A VirtualMachinePool on the real cluster (issue 15, part 4): applied from a file, it makes its VMs, which boot;
`kvtool scale` takes it 2 -> 4 -> 1 (kubectl scale works on it too), a VM deleted by hand is made again, the plan
names the VMs the pool makes, and destroying the stack takes the pool's VMs with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Cluster, kvtool
from tests.runtime_helpers import condition, get
from tests.vmfactory import vm
from tests.waiting import wait_for

STACK = "pools"
POOL = "class"


def pool_doc(replicas: int) -> dict[str, Any]:
    template = vm("ignored", memory="96Mi", run_strategy="Always")
    return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachinePool", "metadata": {"name": POOL},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"course": "os101"}},
                     "scaleInStrategy": {"proactive": {"selectionPolicy": {"sortPolicy": "DescendingOrder"}}},
                     "virtualMachineTemplate": {"metadata": {"labels": {"course": "os101"}},
                                                "spec": template["spec"]}}}


def pool_vms(cluster: Cluster) -> dict[str, dict[str, Any]]:
    out = cluster.kubectl("get", "vm", "-l", f"kvtool.io/vmpool={POOL}", "-o", "json").stdout
    return {v["metadata"]["name"]: v for v in json.loads(out)["items"] if not v["metadata"].get("deletionTimestamp")}


def ready_vms(cluster: Cluster) -> set[str]:
    return {name for name, v in pool_vms(cluster).items() if (v.get("status") or {}).get("ready")}


def describe(cluster: Cluster) -> Any:
    def text() -> str:
        pool = get(cluster, "virtualmachinepool", POOL) or {}
        vms = {n: (v.get("status") or {}).get("printableStatus") for n, v in pool_vms(cluster).items()}
        return f"pool status: {json.dumps(pool.get('status'), indent=1)}\nVMs: {vms}"
    return text


def scale(cluster: Cluster, replicas: int) -> None:
    scaled = kvtool("scale", POOL, "--replicas", str(replicas), "--wait", "--timeout", "300")
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr + describe(cluster)()
    assert "scaled: replicas" in scaled.stdout and f"{replicas} VMs, {replicas} ready" in scaled.stdout
    assert f"belongs to stack {STACK!r}" in scaled.stdout  # the drift it makes is named


def test_a_pool_scales_heals_and_goes_with_its_stack(cluster: Cluster, tmp_path: Path) -> None:
    lab = tmp_path / "pool.yaml"
    lab.write_text(yaml.safe_dump(pool_doc(2)))
    files = ("-f", str(lab), "--stack", STACK)
    plan = kvtool("plan", *files, check=True).stdout
    assert "replicas 0 -> 2: the controller makes class-0, class-1" in plan, plan
    kvtool("apply", *files, "--auto-approve", check=True)
    try:
        wait_for(lambda: ready_vms(cluster) == {"class-0", "class-1"}, timeout=300, what="the pool's 2 VMs ready",
                 describe=describe(cluster))
        vm0 = pool_vms(cluster)["class-0"]
        assert vm0["metadata"]["labels"]["kvtool.io/stack"] == STACK
        assert vm0["metadata"]["ownerReferences"][0]["kind"] == "VirtualMachinePool"
        # The pool's status follows its VMs' (a sync after their change): wait for it, do not race it.
        pool = wait_for(lambda: (p := get(cluster, "virtualmachinepool", POOL) or {})
                        and (p.get("status") or {}).get("readyReplicas") == 2 and p, timeout=60,
                        what="the pool's status counting 2 ready VMs", describe=describe(cluster))
        assert pool["status"]["labelSelector"] == "course=os101"
        # The stack's status lists the pool's VMs; the pool's own plan is unchanged (its VMs are not the plan's).
        status = json.loads(kvtool("status", "--stack", STACK, "-o", "json", check=True).stdout)
        assert sorted(r["name"] for r in status) == ["class-0", "class-1"], status
        again = kvtool("plan", *files, "--detailed-exitcode")
        assert again.returncode == 0 and "No changes." in again.stdout, again.stdout + again.stderr

        scale(cluster, 4)
        assert set(pool_vms(cluster)) == {"class-0", "class-1", "class-2", "class-3"}
        scale(cluster, 1)
        wait_for(lambda: set(pool_vms(cluster)) == {"class-0"}, timeout=120, what="scale-in to class-0 only",
                 describe=describe(cluster))  # DescendingOrder: the highest indexes went first
        events = cluster.kubectl("get", "events", "--field-selector",
                                 f"involvedObject.name={POOL},reason=SuccessfulDelete",
                                 "-o", "jsonpath={.items[*].message}").stdout
        assert "class-3" in events and "class-1" in events, events

        # Deleted by hand: the pool makes it again (the same lowest free name, a new VM).
        uid = pool_vms(cluster)["class-0"]["metadata"]["uid"]
        cluster.kubectl("delete", "vm", "class-0", "--wait=false")
        wait_for(lambda: (v := pool_vms(cluster).get("class-0")) is not None and v["metadata"]["uid"] != uid
                 and (v.get("status") or {}).get("ready"), timeout=300, what="the pool to remake class-0",
                 describe=describe(cluster))

        # kubectl's scale verb reaches the same subresource; the plan shows the drift from the files by name.
        cluster.kubectl("scale", "virtualmachinepool", POOL, "--replicas=3")
        wait_for(lambda: len(pool_vms(cluster)) == 3, timeout=60, what="kubectl scale to 3 VMs",
                 describe=describe(cluster))
        drift = kvtool("plan", *files)
        assert "replicas 3 -> 2: the controller removes class-2 (not-ready VMs first, then DescendingOrder)" \
            in drift.stdout, drift.stdout + drift.stderr
        assert condition(get(cluster, "virtualmachinepool", POOL), "ReplicaFailure").get("status") == "False"
    finally:
        kvtool("destroy", "--stack", STACK, "--auto-approve", check=True)
    wait_for(lambda: not pool_vms(cluster), timeout=180, what="the pool's VMs to go with it",
             describe=describe(cluster))


def test_autohealing_replaces_a_vm_that_keeps_failing_to_start(cluster: Cluster) -> None:
    """Written with kubectl, as a KubeVirt user would: a pool whose VM no node can take (its nodeSelector matches
    none) replaces it once it has been unschedulable for minFailingToStartDuration, and says why in an event."""
    doc = pool_doc(1)
    doc["metadata"]["name"] = "crashy"
    doc["spec"]["autohealing"] = {"minFailingToStartDuration": "20s"}
    vmi_spec = doc["spec"]["virtualMachineTemplate"]["spec"]["template"]["spec"]
    vmi_spec["nodeSelector"] = {"kvtool.io/no-such-node": "true"}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    try:
        def vms() -> list[dict[str, Any]]:
            out = cluster.kubectl("get", "vm", "-l", "kvtool.io/vmpool=crashy", "-o", "json").stdout
            return json.loads(out)["items"]
        wait_for(lambda: [v for v in vms() if (v.get("status") or {}).get("printableStatus") == "ErrorUnschedulable"],
                 timeout=60, what="the pool's VM unschedulable",
                 describe=lambda: json.dumps([v.get("status") for v in vms()], indent=1))
        first = vms()[0]["metadata"]["uid"]

        def healed() -> str:
            return cluster.kubectl("get", "events", "--field-selector",
                                   "involvedObject.name=crashy,reason=Autohealed",
                                   "-o", "jsonpath={.items[*].message}").stdout
        wait_for(healed, timeout=120, what="an Autohealed event on the pool",
                 describe=lambda: json.dumps([v.get("status") for v in vms()], indent=1))
        assert "ErrorUnschedulable for" in healed() and "minFailingToStartDuration 20s" in healed(), healed()
        wait_for(lambda: any(v["metadata"]["uid"] != first and not v["metadata"].get("deletionTimestamp")
                             for v in vms()), timeout=60, what="a new VM in place of the failing one")
    finally:
        cluster.kubectl("delete", "virtualmachinepool", "crashy", "--wait=true", "--timeout=120s")
