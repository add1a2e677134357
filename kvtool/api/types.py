"""Names of things on the wire: API group, kinds kvtool manages, and its labels."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GROUP = "kvtool.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kvtool"
STACK_LABEL = "kvtool.io/stack"
STUDENT_LABEL = "kvtool.io/student"  # a roster lab's VM: whose it is (kvtool.plan.roster)
POOL_LABEL = "kvtool.io/vmpool"  # on a VirtualMachinePool's VMs: the pool's name (KubeVirt's kubevirt.io/vmpool)
SNAPSHOT_LABEL = "kvtool.io/snapshot"  # on a VirtualMachineSnapshot's backup claims and copy Jobs: the snapshot's name
RESTORE_LABEL = "kvtool.io/restore"  # on a VirtualMachineRestore's copy Jobs: the restore's name
DEFAULT_STACK = "default"
FIELD_MANAGER = "kvtool"

# Labels the controller puts on what it creates for a VM.
# kvtool's own VMI and VM condition (KubeVirt has none for it): the guest kernel's first report of trouble on
# its serial console (an oops, a panic, a soft lockup), set by the handler, mirrored on the VM by the controller.
GUEST_KERNEL_ERROR = "GuestKernelError"

VM_LABEL = "kvtool.io/vm"
VMI_LABEL = "kvtool.io/vmi"
VMI_UID_LABEL = "kvtool.io/vmi-uid"
LAUNCHER_LABEL_KEY = "kvtool.io"
LAUNCHER_LABEL_VALUE = "virt-launcher"
# On a migration's target launcher pod: the VirtualMachineInstanceMigration's uid (KubeVirt's label).
MIGRATION_JOB_LABEL = "kvtool.io/migrationJobUID"
# "true"/"false" on a VMI: `kvtool pause`/`unpause` set it, its node's handler makes the domain follow.
PAUSE_ANNOTATION = "kvtool.io/paused"


def wants_paused(vmi: Mapping[str, Any]) -> bool:
    """Should this VMI's guest be paused? The annotation when set, else spec.startStrategy Paused (KubeVirt's
    "start paused, until someone unpauses")."""
    annotation = ((vmi.get("metadata") or {}).get("annotations") or {}).get(PAUSE_ANNOTATION)
    if annotation is not None:
        return annotation == "true"
    return (vmi.get("spec") or {}).get("startStrategy") == "Paused"


def claim_volumes(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(volume, claim name) of each persistentVolumeClaim or dataVolume volume of a VMI spec (or a VM's
    template spec): the disks that live in the cluster's storage, which migration, failover and snapshots
    must each look at."""
    out = []
    for volume in spec.get("volumes") or []:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName") or (
            volume.get("dataVolume") or {}).get("name")
        if claim:
            out.append((volume.get("name", ""), claim))
    return out


@dataclass(frozen=True)
class Kind:
    """A kind kvtool can plan and apply, with what the diff engine must know about it."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True
    schema: str | None = None  # schema file name for kvtool's own kinds
    # Field paths (dotted, `*` matches one segment) whose values are never shown.
    sensitive: tuple[str, ...] = ()
    # Field paths that cannot change in place: a change forces replacement.
    immutable: tuple[str, ...] = ()
    # Field path prefixes that a running instance only takes on restart.
    restart_required: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        return self.api_version.split("/")[0] if "/" in self.api_version else ""

    @property
    def version(self) -> str:
        return self.api_version.split("/")[-1]

    @property
    def key(self) -> tuple[str, str]:
        return (self.api_version, self.kind)

    @property
    def label(self) -> str:
        """How plans name the kind: `virtualmachine`, `secret`."""
        return self.kind.lower()


VIRTUAL_MACHINE = Kind(
    API_VERSION, "VirtualMachine", "virtualmachines", schema="virtualmachine.json",
    sensitive=("spec.template.spec.volumes[*].cloudInitNoCloud.userData",
               "spec.template.spec.volumes[*].cloudInitNoCloud.userDataBase64",
               "spec.template.spec.volumes[*].cloudInitNoCloud.networkData",
               "spec.template.spec.volumes[*].cloudInitNoCloud.networkDataBase64"),
    restart_required=("spec.template",),
)
VIRTUAL_MACHINE_INSTANCE = Kind(API_VERSION, "VirtualMachineInstance", "virtualmachineinstances",
                                schema="virtualmachineinstance.json")
VIRTUAL_MACHINE_INSTANCE_MIGRATION = Kind(API_VERSION, "VirtualMachineInstanceMigration",
                                          "virtualmachineinstancemigrations",
                                          schema="virtualmachineinstancemigration.json")
VIRTUAL_MACHINE_POOL = Kind(
    API_VERSION, "VirtualMachinePool", "virtualmachinepools", schema="virtualmachinepool.json",
    sensitive=tuple(p.replace("spec.template.", "spec.virtualMachineTemplate.spec.template.")
                    for p in VIRTUAL_MACHINE.sensitive),
)
# Snapshots and restores: run by the controller, like migrations; never planned.
VIRTUAL_MACHINE_SNAPSHOT = Kind(API_VERSION, "VirtualMachineSnapshot", "virtualmachinesnapshots",
                                schema="virtualmachinesnapshot.json")
VIRTUAL_MACHINE_RESTORE = Kind(API_VERSION, "VirtualMachineRestore", "virtualmachinerestores",
                               schema="virtualmachinerestore.json")
# KubeVirt's own kinds, for clusters that run KubeVirt: same fields, checked against kvtool's schemas first.
KUBEVIRT_API_VERSION = "kubevirt.io/v1"
KUBEVIRT_VIRTUAL_MACHINE = Kind(KUBEVIRT_API_VERSION, "VirtualMachine", "virtualmachines",
                                schema="virtualmachine.json", sensitive=VIRTUAL_MACHINE.sensitive,
                                restart_required=VIRTUAL_MACHINE.restart_required)
KUBEVIRT_VIRTUAL_MACHINE_INSTANCE = Kind(KUBEVIRT_API_VERSION, "VirtualMachineInstance", "virtualmachineinstances")
SECRET = Kind("v1", "Secret", "secrets", sensitive=("data.*", "stringData.*"), immutable=("type",))
CONFIG_MAP = Kind("v1", "ConfigMap", "configmaps")
PVC = Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims",
           immutable=("spec.accessModes", "spec.storageClassName", "spec.volumeMode", "spec.volumeName",
                      "spec.selector"))
SERVICE = Kind("v1", "Service", "services", immutable=("spec.clusterIP", "spec.clusterIPs"))
POD = Kind("v1", "Pod", "pods")  # read and made by the runtime (launcher pods), never planned
LEASE = Kind("coordination.k8s.io/v1", "Lease", "leases")  # heartbeats: kubelets' and the handlers'

# What `kvtool plan` accepts in desired state, in the order it applies creates.
PLANNABLE: tuple[Kind, ...] = (SECRET, CONFIG_MAP, PVC, VIRTUAL_MACHINE, VIRTUAL_MACHINE_POOL, SERVICE)
BY_KEY: dict[tuple[str, str], Kind] = {k.key: k for k in (*PLANNABLE, VIRTUAL_MACHINE_INSTANCE,
                                                         VIRTUAL_MACHINE_INSTANCE_MIGRATION,
                                                         VIRTUAL_MACHINE_SNAPSHOT, VIRTUAL_MACHINE_RESTORE,
                                                         KUBEVIRT_VIRTUAL_MACHINE, KUBEVIRT_VIRTUAL_MACHINE_INSTANCE)}


@dataclass(frozen=True)
class Target:
    """Whose VM API kvtool drives on a cluster: its own (kvtool.io, run by kvtool's controller) or KubeVirt's
    (kubevirt.io/v1, run by KubeVirt). Desired state is written and checked the same way for both."""

    name: str
    vm: Kind
    vmi: Kind

    @property
    def plannable(self) -> tuple[Kind, ...]:
        """PLANNABLE with this target's VirtualMachine, in the same order; pools are kvtool's own kind."""
        return tuple(self.vm if k is VIRTUAL_MACHINE else k for k in PLANNABLE
                     if k is not VIRTUAL_MACHINE_POOL or self.vm is VIRTUAL_MACHINE)


KVTOOL = Target("kvtool", VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE)
KUBEVIRT = Target("kubevirt", KUBEVIRT_VIRTUAL_MACHINE, KUBEVIRT_VIRTUAL_MACHINE_INSTANCE)
TARGETS = {t.name: t for t in (KVTOOL, KUBEVIRT)}


def kind_for(api_version: str, kind: str) -> Kind | None:
    return BY_KEY.get((api_version, kind))
