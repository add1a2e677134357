"""A lab that ends by itself (issue 15, part 6): `kvtool apply --ttl` and the controller, with no client running,
stops (or deletes) the VMs at the deadline; `kvtool status` shows the time left and why a VM stopped;
`kvtool lab extend` gives more time and the controller starts the VMs again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from tests.conftest import Cluster, kvtool
from tests.runtime_helpers import condition, get, vm_status, wait_for, wait_running
from tests.vmfactory import vm

STACK = "expiring"
TTL = 60


def test_a_lab_with_a_ttl_is_stopped_by_the_controller_and_extended(cluster: Cluster, tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text(yaml.safe_dump(vm("ttl-a", run_strategy="Always")))
    files = ("-f", str(lab), "--stack", STACK, "--ttl", f"{TTL}s")
    plan = kvtool("plan", *files, check=True)
    assert any("kvtool.io/ttl" in line and f'"{TTL}s"' in line for line in plan.stdout.splitlines()), plan.stdout
    kvtool("apply", *files, "--auto-approve", check=True)
    try:
        applied = time.monotonic()
        wait_running(cluster, "ttl-a")
        table = kvtool("status", "--stack", STACK, check=True).stdout
        assert table.splitlines()[0].split()[-2:] == ["EXPIRES", "MESSAGE"], table
        assert "expires at" in condition(get(cluster, "vm", "ttl-a"), "Expired")["message"]
        # Nothing of kvtool's runs from here on: only the controller in the cluster acts at the deadline.
        wait_for(lambda: vm_status(cluster, "ttl-a") == "Stopped" and get(cluster, "vmi", "ttl-a") is None,
                 timeout=TTL + 90, what="the controller to stop the expired VM")
        stopped_after = time.monotonic() - applied
        assert stopped_after >= TTL - 5, f"stopped {stopped_after:.0f}s after apply, before its {TTL}s ttl"
        expired = condition(get(cluster, "vm", "ttl-a"), "Expired")
        assert expired["status"] == "True" and expired["reason"] == "TTLExpired", expired
        assert f"kvtool lab extend --stack {STACK} --by 1h" in expired["message"]
        row = json.loads(kvtool("status", "--stack", STACK, "-o", "json", check=True).stdout)[0]
        assert row["expires"] == "expired" and row["message"].startswith("TTLExpired: the lab's time ran out")
        events = cluster.kubectl("get", "events", "--field-selector", "involvedObject.name=ttl-a,reason=Expired",
                                 "-o", "jsonpath={.items[*].message}").stdout
        assert "the lab's time ran out" in events

        # More time: the controller starts it again; the same files plan no change (extend's deadline is not theirs).
        extended = kvtool("lab", "extend", "--stack", STACK, "--by", "10m", check=True)
        assert extended.stdout.startswith("ttl-a: expires at ") and "(in 10m00s)" in extended.stdout, extended.stdout
        wait_running(cluster, "ttl-a", timeout=120)
        assert condition(get(cluster, "vm", "ttl-a"), "Expired")["status"] == "False"
        again = kvtool("plan", *files, "--detailed-exitcode")
        assert again.returncode == 0 and "No changes." in again.stdout, again.stdout + again.stderr
    finally:
        kvtool("destroy", "--stack", STACK, "--auto-approve", check=True)


def test_on_expiry_delete_deletes_the_vms(cluster: Cluster, tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text(yaml.safe_dump_all([vm("ttl-d1"), vm("ttl-d2")]))  # Halted: nothing to boot, they still expire
    try:
        kvtool("apply", "-f", str(lab), "--stack", STACK, "--ttl", "20s", "--on-expiry", "delete", "--auto-approve",
               check=True)
        wait_for(lambda: get(cluster, "vm", "ttl-d1") is None and get(cluster, "vm", "ttl-d2") is None,
                 timeout=120, what="the controller to delete both expired VMs")
    finally:
        kvtool("destroy", "--stack", STACK, "--auto-approve", check=True)


def test_bad_expiry_input_is_refused_before_the_cluster(tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    doc = vm("ttl-bad")
    doc["metadata"]["annotations"] = {"kvtool.io/ttl": "soon", "kvtool.io/on-expiry": "Shelve"}
    lab.write_text(yaml.safe_dump(doc))
    result = kvtool("plan", "-f", str(lab), "--stack", STACK, "--kubeconfig", str(tmp_path / "none"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "at metadata.annotations.kvtool.io/ttl: 'soon' is not a duration (examples: 90s, 5m, 1h30m, 2d)" \
        in result.stderr, result.stderr
    lab.write_text(yaml.safe_dump(vm("ttl-bad")))
    result = kvtool("apply", "-f", str(lab), "--ttl", "3 hours", "--kubeconfig", str(tmp_path / "none"))
    assert result.returncode == 1 and "--ttl: '3 hours' is not a duration" in result.stderr, result.stderr
