"""Plan/apply round trips against the real embedded cluster, through the real CLI."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import Cluster, kvtool
from tests.vmfactory import vm


@pytest.fixture
def stack() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def write(path: Path, *docs: dict) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


def names(cluster: Cluster, stack: str) -> list[str]:
    out = cluster.kubectl("get", "vms", "-A", "-l", f"kvtool.io/stack={stack}", "-o", "json").stdout
    return sorted(i["metadata"]["name"] for i in json.loads(out)["items"])


def test_create_update_delete_round_trip(cluster: Cluster, stack: str, tmp_path: Path) -> None:
    f = write(tmp_path / "lab.yaml", vm(f"{stack}-a"), vm(f"{stack}-b"))
    plan = kvtool("plan", "-f", str(f), "--stack", stack, "--detailed-exitcode")
    assert plan.returncode == 2, plan.stderr
    assert "Plan: 2 to add, 0 to change, 0 to destroy." in plan.stdout
    assert names(cluster, stack) == [], "plan must not change the cluster"

    applied = kvtool("apply", "-f", str(f), "--stack", stack, "--auto-approve", check=True)
    assert "Apply complete! Resources: 2 added, 0 changed, 0 destroyed." in applied.stdout
    assert names(cluster, stack) == [f"{stack}-a", f"{stack}-b"]

    again = kvtool("plan", "-f", str(f), "--stack", stack, "--detailed-exitcode")
    assert again.returncode == 0 and "No changes." in again.stdout, again.stdout

    write(f, vm(f"{stack}-a", cores=2), vm(f"{stack}-c"))
    plan = kvtool("plan", "-f", str(f), "--stack", stack, "--detailed-exitcode")
    assert plan.returncode == 2
    assert "~ spec.template.spec.domain.cpu.cores = 1 -> 2" in plan.stdout
    assert f"# virtualmachine default/{stack}-b will be destroyed (no longer in the desired state)" in plan.stdout
    assert "Plan: 1 to add, 1 to change, 1 to destroy." in plan.stdout
    kvtool("apply", "-f", str(f), "--stack", stack, "--auto-approve", check=True)
    assert names(cluster, stack) == [f"{stack}-a", f"{stack}-c"]
    cores = cluster.kubectl("get", "vm", f"{stack}-a", "-o", "jsonpath={.spec.template.spec.domain.cpu.cores}").stdout
    assert cores == "2"
    assert kvtool("plan", "-f", str(f), "--stack", stack, "--detailed-exitcode").returncode == 0

    plan_json = json.loads(kvtool("plan", "-f", str(f), "--stack", stack, "--json", "--replace",
                                  f"virtualmachine/{stack}-c", check=True).stdout)
    assert plan_json["format_version"] == "1.0"
    assert plan_json["summary"] == {"add": 1, "change": 0, "destroy": 1}
    assert [c["action"] for c in plan_json["changes"]] == ["no-op", "replace"]

    destroyed = kvtool("destroy", "--stack", stack, "--auto-approve", check=True)
    assert "Destroy complete! Resources: 0 added, 0 changed, 2 destroyed." in destroyed.stdout
    assert names(cluster, stack) == []


def test_drift_conflicts_and_force(cluster: Cluster, stack: str, tmp_path: Path) -> None:
    name = f"{stack}-a"
    f = write(tmp_path / "vm.yaml", vm(name), vm(f"{stack}-gone"))
    kvtool("apply", "-f", str(f), "--stack", stack, "--auto-approve", check=True)
    # Behind kvtool's back: kubectl changes a field kvtool set, and deletes a VM.
    cluster.kubectl("patch", "vm", name, "--type=merge", "-p",
                    '{"spec":{"template":{"spec":{"domain":{"cpu":{"cores":3}}}}}}')
    cluster.kubectl("delete", "vm", f"{stack}-gone")
    plan = kvtool("plan", "-f", str(f), "--stack", stack)
    assert "~ spec.template.spec.domain.cpu.cores = 3 -> 1  # owned by kubectl-patch" in plan.stdout, plan.stdout
    assert f"# virtualmachine default/{stack}-gone will be created" in plan.stdout
    assert "Plan: 1 to add, 1 to change, 0 to destroy." in plan.stdout

    refused = kvtool("apply", "-f", str(f), "--stack", stack, "--auto-approve")
    assert refused.returncode == 1
    assert "owned by field manager kubectl-patch" in refused.stderr, refused.stderr
    assert ".spec.template.spec.domain.cpu.cores" in refused.stderr and "--force-conflicts" in refused.stderr
    assert "1 change(s) were applied" in refused.stderr, "the independent create still happened"

    kvtool("apply", "-f", str(f), "--stack", stack, "--auto-approve", "--force-conflicts", check=True)
    assert kvtool("plan", "-f", str(f), "--stack", stack, "--detailed-exitcode").returncode == 0
    kvtool("destroy", "--stack", stack, "--auto-approve", check=True)


def test_stale_saved_plan_is_refused(cluster: Cluster, stack: str, tmp_path: Path) -> None:
    name = f"{stack}-a"
    f = write(tmp_path / "vm.yaml", vm(name))
    kvtool("apply", "-f", str(f), "--stack", stack, "--auto-approve", check=True)
    write(f, vm(name, cores=2))
    planfile = tmp_path / "plan.json"
    kvtool("plan", "-f", str(f), "--stack", stack, "--out", str(planfile), check=True)
    assert oct(planfile.stat().st_mode & 0o777) == "0o600"
    cluster.kubectl("label", "vm", name, "touched=yes")
    stale = kvtool("apply", str(planfile))
    assert stale.returncode == 1
    assert "the saved plan is stale" in stale.stderr and f"virtualmachine default/{name}: changed" in stale.stderr
    fresh = tmp_path / "plan2.json"
    kvtool("plan", "-f", str(f), "--stack", stack, "--out", str(fresh), check=True)
    kvtool("apply", str(fresh), check=True)
    assert cluster.kubectl("get", "vm", name, "-o",
                           "jsonpath={.spec.template.spec.domain.cpu.cores}").stdout == "2"
    kvtool("destroy", "--stack", stack, "--auto-approve", check=True)


def test_bad_input_sends_nothing(cluster: Cluster, stack: str, tmp_path: Path) -> None:
    good = vm(f"{stack}-good")
    bad = vm(f"{stack}-bad", memory="lots")
    f = write(tmp_path / "mixed.yaml", good, bad)
    result = kvtool("apply", "-f", str(f), "--stack", stack, "--auto-approve")
    assert result.returncode == 1
    assert "mixed.yaml, document 2 at spec.template.spec.domain.memory.guest" in result.stderr
    assert "nothing was sent to the cluster" in result.stderr and "Traceback" not in result.stderr
    assert names(cluster, stack) == []


def test_built_in_kinds_the_server_would_refuse_are_caught_by_plan(cluster: Cluster, stack: str,
                                                                    tmp_path: Path) -> None:
    """Services, ConfigMaps and Secrets have no client-side schema: plan asks the server (a dry run), so an apply
    never stops half-way with some objects created."""
    good = vm(f"{stack}-good")
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{stack}-svc"},
               "spec": {"selector": {"kvtool.io/vm": f"{stack}-good"}, "ports": [{"port": 70000}]}}
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{stack}-cm"}, "data": {"bad key!": "x"}}
    f = write(tmp_path / "mixed.yaml", good, service, config)
    for verb in (["plan", "-f", str(f)], ["apply", "-f", str(f), "--auto-approve"]):
        result = kvtool(*verb, "--stack", stack)
        assert result.returncode == 1, result.stdout
        assert "the API server refuses objects of this plan (a dry run; nothing was sent)" in result.stderr
        assert f"Service default/{stack}-svc (" in result.stderr and "mixed.yaml, document 2" in result.stderr
        assert "70000" in result.stderr and "bad key!" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert names(cluster, stack) == []
    assert cluster.kubectl("get", "service", f"{stack}-svc", check=False).returncode != 0


def test_api_server_refuses_a_bad_vm_itself(cluster: Cluster, stack: str, tmp_path: Path) -> None:
    bad = vm(f"{stack}-bad")
    bad["spec"]["running"] = True
    bad["spec"]["template"]["spec"]["domain"]["devices"]["disks"] = [{"name": "nope"}]
    f = write(tmp_path / "bad.yaml", bad)
    result = cluster.kubectl("apply", "-f", str(f), check=False)
    assert result.returncode != 0
    assert "spec.running and spec.runStrategy are mutually exclusive" in result.stderr
    assert "every disk must name a volume in spec.volumes" in result.stderr


def test_destroy_of_one_stack_leaves_another(cluster: Cluster, tmp_path: Path) -> None:
    one, two = f"s1-{uuid.uuid4().hex[:6]}", f"s2-{uuid.uuid4().hex[:6]}"
    kvtool("apply", "-f", str(write(tmp_path / "1.yaml", vm(f"{one}-a"))), "--stack", one, "--auto-approve", check=True)
    kvtool("apply", "-f", str(write(tmp_path / "2.yaml", vm(f"{two}-a"))), "--stack", two, "--auto-approve", check=True)
    kvtool("destroy", "--stack", one, "--auto-approve", check=True)
    assert names(cluster, one) == [] and names(cluster, two) == [f"{two}-a"]
    # A stack cannot take over another stack's object by naming it.
    taken = kvtool("plan", "-f", str(tmp_path / "2.yaml"), "--stack", one)
    assert taken.returncode == 1 and f"belongs to stack '{two}'" in taken.stderr
    kvtool("destroy", "--stack", two, "--auto-approve", check=True)


def test_apply_needs_approval_without_a_terminal(cluster: Cluster, stack: str, tmp_path: Path) -> None:
    f = write(tmp_path / "vm.yaml", vm(f"{stack}-a"))
    result = kvtool("apply", "-f", str(f), "--stack", stack, input="yes\n")
    assert result.returncode == 1 and "--auto-approve" in result.stderr
    assert names(cluster, stack) == []


def test_status_outputs(cluster: Cluster, stack: str, tmp_path: Path) -> None:
    f = write(tmp_path / "vm.yaml", vm(f"{stack}-a", cores=2, memory="256Mi"))
    kvtool("apply", "-f", str(f), "--stack", stack, "--auto-approve", check=True)
    rows = json.loads(kvtool("status", "--stack", stack, "-o", "json", check=True).stdout)
    assert [(r["name"], r["cpu"], r["memory"], r["status"]) for r in rows] == [(f"{stack}-a", 2, "256Mi", "Stopped")]
    table = kvtool("status", "--stack", stack, check=True).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "STATUS", "READY"] and table[1].startswith(f"{stack}-a")
    csv = kvtool("status", "--stack", stack, "-o", "csv", check=True).stdout
    assert csv.splitlines()[0].startswith("namespace,stack,name,status")
    kvtool("destroy", "--stack", stack, "--auto-approve", check=True)


def test_a_user_who_may_only_read_one_namespace_still_plans_it(cluster: Cluster, stack: str, tmp_path: Path) -> None:
    """No cluster-wide list permission (a 403 on the stack's LIST): the plan looks in the desired state's namespaces."""
    ns = stack
    cluster.kubectl("create", "namespace", ns)
    try:
        cluster.kubectl("create", "serviceaccount", "planner", "-n", ns)
        cluster.kubectl("create", "role", "planner", "-n", ns, "--verb=get,list,patch,create",
                        "--resource=virtualmachines.kvtool.io,virtualmachinepools.kvtool.io,secrets,configmaps,"
                        "persistentvolumeclaims,services")
        cluster.kubectl("create", "rolebinding", "planner", "-n", ns, "--role=planner",
                        f"--serviceaccount={ns}:planner")
        token = cluster.kubectl("create", "token", "planner", "-n", ns).stdout.strip()
        config = yaml.safe_load(cluster.kubeconfig.read_text())
        config["users"] = [{"name": "planner", "user": {"token": token}}]
        config["contexts"] = [{"name": "planner", "context": {"cluster": config["clusters"][0]["name"],
                                                             "user": "planner"}}]
        config["current-context"] = "planner"
        restricted = tmp_path / "planner.kubeconfig"
        restricted.write_text(yaml.safe_dump(config))
        f = write(tmp_path / "lab.yaml", vm(f"{stack}-a", namespace=ns))
        kvtool("--kubeconfig", str(restricted), "apply", "-f", str(f), "--stack", stack, "--auto-approve", check=True)
        assert cluster.kubectl("auth", "can-i", "list", "virtualmachines.kvtool.io", "-A",
                               f"--as=system:serviceaccount:{ns}:planner", check=False).stdout.strip() == "no"
        again = kvtool("--kubeconfig", str(restricted), "plan", "-f", str(f), "--stack", stack,
                       "--detailed-exitcode")
        assert again.returncode == 0 and "No changes." in again.stdout, again.stdout + again.stderr
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false")
