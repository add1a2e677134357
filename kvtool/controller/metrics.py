"""The controller's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SYNCS = Counter("kvtool_controller_syncs_total", "Reconciles run, by object kind and result", ["kind", "result"])
VMIS_CREATED = Counter("kvtool_controller_vmis_created_total", "VirtualMachineInstances created")
PODS_CREATED = Counter("kvtool_controller_launcher_pods_created_total", "Launcher pods created")
LEADER = Gauge("kvtool_controller_leader", "1 while this replica holds the leader lease")
