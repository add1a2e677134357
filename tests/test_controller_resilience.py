"""The controller and the handler never drop work: API errors injected by an admission policy (the apiserver
refuses the component's writes for one VM), and the VM still converges once they stop, with no further event
about it."""

from __future__ import annotations

import asyncio
import copy
import uuid
from pathlib import Path
from typing import Any

import yaml

from kvtool.api.types import VIRTUAL_MACHINE
from kvtool.controller import operator, template
from kvtool.controller import vm as vm_logic
from kvtool.kube.resources import Resources
from tests.conftest import Cluster, kvtool
from tests.runtime_helpers import condition, get, injected, refusals, refusing_policy, wait_converged
from tests.vmfactory import vm
from tests.waiting import wait_for

CONTROLLER = "system:serviceaccount:kvtool-system:kvtool-controller"
HANDLER = "system:serviceaccount:kvtool-system:kvtool-handler"


def _named(name: str) -> str:
    return f"object.metadata.name != '{name}'"
def test_refused_writes_are_retried_until_the_vm_converges(cluster: Cluster, tmp_path: Path) -> None:
    kvtool("image", "build", "tiny-linux", check=True, timeout=900)
    name = f"refused-{uuid.uuid4().hex[:5]}"
    doc = vm(name, run_strategy="Always")
    with injected(cluster, refusing_policy(f"test-refuse-{name}", CONTROLLER, "CREATE", "virtualmachineinstances",
                                           _named(name), "injected fault: the VMI create is refused")) as policy:
        # The policy is in force once a dry run of the controller's own create is refused.
        probe = copy.deepcopy(doc)
        probe["metadata"].update(namespace="default", uid=str(uuid.uuid4()))
        vmi = vm_logic.vmi_for(probe)
        vmi["metadata"].pop("ownerReferences")
        wait_for(lambda: "injected fault" in cluster.kubectl(
            "create", "--dry-run=server", f"--as={CONTROLLER}", "-f", "-", input=yaml.safe_dump(vmi),
            check=False).stderr, timeout=30, what="the admission policy in force")
        _apply(tmp_path, doc)
        wait_for(lambda: refusals(cluster, policy) >= 3, timeout=60,
                 what="the controller retrying its refused create (3 refusals)")
        assert get(cluster, "vmi", name) is None
        failure = condition(get(cluster, "vm", name), "Failure")
        assert failure.get("reason") == "FailedCreate" and "injected fault" in failure.get("message", ""), failure
    # Nothing about the VM changes from here on: only the controller's own retry can start it.
    wait_converged(cluster, name, policy)
    assert condition(get(cluster, "vm", name), "Failure").get("status") == "False", "the failure cleared"
    cluster.kubectl("delete", "vm", name, "--wait=false")


def test_refused_status_writes_of_the_handler_are_retried_until_the_vm_is_running(cluster: Cluster,
                                                                                 tmp_path: Path) -> None:
    kvtool("image", "build", "tiny-linux", check=True, timeout=900)
    name = f"unreported-{uuid.uuid4().hex[:5]}"
    with injected(cluster, refusing_policy(f"test-refuse-{name}", HANDLER, "UPDATE", "virtualmachineinstances/status",
                                           _named(name), "injected fault: the VMI status write is refused")) as policy:
        _apply(tmp_path, vm(name, run_strategy="Always"))
        # The guest runs, but the handler cannot say so: its worker ends on each refusal and the handler's
        # work queue restarts it with backoff (2 s, 4 s, ...).
        wait_for(lambda: refusals(cluster, policy) >= 3, timeout=90,
                 what="the handler retrying its refused status write (3 refusals)")
        vmi = get(cluster, "vmi", name)
        assert vmi is not None and vmi["status"].get("phase") != "Running", vmi and vmi["status"]
    wait_converged(cluster, name, policy)
    cluster.kubectl("delete", "vm", name, "--wait=false")


def test_a_status_decided_on_an_older_vm_does_not_take_back_a_request_written_since(cluster: Cluster,
                                                                                   tmp_path: Path) -> None:
    """kvtool start/stop/restart write the VM's status.stateChangeRequests; the controller's status write, decided
    on the VM as its cache showed it before the request came, must be refused, not write its [] over it (CI once
    lost a restore's Stop this way: the VM kept running and the restore failed after its grace period)."""
    name = f"stale-{uuid.uuid4().hex[:5]}"
    _apply(tmp_path, vm(name, run_strategy="Manual"))
    read = wait_for(lambda: (v := get(cluster, "vm", name)) and
                    (v.get("status") or {}).get("printableStatus") == "Stopped" and v,
                    timeout=60, what="the controller's first status of the stopped VM")
    res = Resources(cluster.api())
    res.merge_patch(VIRTUAL_MACHINE, "default", name,
                    {"status": {"stateChangeRequests": [{"action": "Stop", "uid": "no-such-vmi"}]}},
                    subresource="status", field_manager="kvtool")

    async def write_decided_on_read() -> bool:
        ctl = operator.Controller(res, template.LauncherConfig())
        decision = vm_logic.decide(read, None)
        assert decision.status["stateChangeRequests"] == []  # what the older VM calls for: nothing to do
        return await ctl._write_vm_status(read, {**decision.status, "printableStatus": "Starting"})

    assert asyncio.run(write_decided_on_read()) is False
    cluster.kubectl("delete", "vm", name, "--wait=false")


def _apply(tmp_path: Path, doc: dict[str, Any]) -> None:
    path = tmp_path / "vm.yaml"
    path.write_text(yaml.safe_dump(doc))
    kvtool("apply", "-f", str(path), "--stack", "resilience", "--auto-approve", check=True)
