"""Secrets stay secret: a recognisable canary in cloud-init user data and in a Secret, applied and run for
real, appears in no CLI output, no plan (text, JSON, notebook HTML), no status, no event and no log."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import yaml

from kvtool.kube import clients
from kvtool.kube.resources import Resources
from kvtool.notebook import planview
from kvtool.plan import desired, planner
from tests.conftest import Cluster, kvtool
from tests.runtime_helpers import wait_running
from tests.vmfactory import vm

STACK = "secrets"


def test_a_planted_secret_appears_nowhere_but_where_it_belongs(cluster: Cluster, tmp_path: Path) -> None:
    kvtool("image", "build", "tiny-linux", check=True, timeout=900)
    canary = f"kvt-canary-{uuid.uuid4().hex}"
    name = f"secret-{uuid.uuid4().hex[:5]}"
    machine = vm(name, run_strategy="Always", user_data=f"#!/bin/sh\n# password: {canary}\ntrue\n")
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-creds"},
              "stringData": {"password": canary}}
    path = tmp_path / "stack.yaml"
    path.write_text(yaml.safe_dump_all([machine, secret]))

    said: dict[str, str] = {}
    for label, args in (("plan", ["plan", "-f", str(path)]), ("plan --json", ["plan", "-f", str(path), "--json"]),
                        ("apply", ["apply", "-f", str(path), "--auto-approve"])):
        result = kvtool(*args, "--stack", STACK, check=label == "apply")
        said[label] = result.stdout + result.stderr
    res = Resources(clients.api_client(cluster.kubeconfig))
    state = desired.load([path], stack=STACK)
    said["notebook plan"] = planview.render_html(planner.plan(res, state, "embedded"), show_noop=True)
    wait_running(cluster, name)
    said["status"] = kvtool("status", "--stack", STACK, "-o", "json", check=True).stdout
    said["status NAME"] = kvtool("status", name, "-o", "yaml", check=True).stdout
    said["VM status"] = json.dumps(json.loads(cluster.kubectl("get", "vm", name, "-o", "json").stdout)["status"])
    said["VMI status"] = json.dumps(json.loads(cluster.kubectl("get", "vmi", name, "-o", "json").stdout)["status"])
    said["events"] = cluster.kubectl("get", "events", "-A", "-o", "json").stdout
    logs = [*(cluster.home / "logs").glob("*.log"), *cluster.home.glob("nodes/*/pod-logs/*/*/*.log")]
    assert any("kvtool-controller" in str(p) for p in logs) and any("virt-launcher" in str(p) for p in logs)
    for log in logs:
        said[f"log {log.relative_to(cluster.home)}"] = log.read_text(errors="replace")
    assert "(sensitive value)" in said["plan"], said["plan"]
    leaks = sorted(label for label, text in said.items() if canary in text)
    assert not leaks, f"the canary leaked into: {leaks}"
    # It did reach where it belongs: the Secret and the VM's own spec.
    stored = json.loads(cluster.kubectl("get", "secret", f"{name}-creds", "-o", "json").stdout)
    assert stored["data"]["password"]
    kvtool("destroy", "--stack", STACK, "--auto-approve", check=True)
