"""A short chaos run in `make test` (bench/chaos.py is the long, random one): two VMs with runStrategy Always
while one fault of each kind hits in turn. Each fault must be recovered from (every VM Running and ready
again), never two QEMUs of one VM at once, and nothing left behind once the VMs are deleted."""

from __future__ import annotations

import uuid

from kvtool.api.types import VIRTUAL_MACHINE
from kvtool.kube.resources import Resources
from kvtool.local.layout import Layout
from tests import chaos_engine
from tests.conftest import Cluster, kvtool
from tests.vmfactory import vm

SEED = 11  # which handler pod, which VM, which node's containerd
RECOVERY_TIMEOUT = 240.0


def test_vms_come_back_from_every_kind_of_fault(cluster: Cluster) -> None:
    kvtool("image", "build", "tiny-linux", check=True, timeout=900)
    res = Resources(cluster.api())
    layout = Layout(cluster.home)
    names = [f"chaos-{uuid.uuid4().hex[:4]}-{i}" for i in range(2)]
    for name in names:
        res.create(VIRTUAL_MACHINE, vm(name, run_strategy="Always", namespace="default"))
    assert chaos_engine.wait_until(lambda: chaos_engine.all_running(res, names), 180), "the VMs started"
    report = chaos_engine.run(res, layout, names, 0, SEED, recovery_timeout=RECOVERY_TIMEOUT,
                              faults=chaos_engine.KINDS)
    print(report.summary(RECOVERY_TIMEOUT))
    assert report.injected == len(chaos_engine.KINDS), f"every fault was injected: {report.not_injected}"
    assert not report.lost, f"every fault was recovered from: {report.lost}"
    assert not report.duplicates, f"never two QEMUs of one VM: {report.duplicates}"
    assert not report.left, f"nothing left behind: {report.left}"
