"""Build a VirtualMachine manifest from a few plain arguments. Pure: no cluster, no disk, no store.

The Terraform provider, the notebook forms and anyone scripting kvtool build
VMs through this one function, so a VM made by any of them is the same
manifest `kvtool plan` would compare against. It only assembles the
document (and refuses arguments it cannot place, with the argument's path);
checking values against the schema is the caller's job
(kvtool.api.schema.validate or kvtool.plan.desired.normalise), so there is
one set of rules and messages.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from kvtool.api.types import API_VERSION, MANAGED_BY, MANAGED_BY_LABEL, STACK_LABEL
from kvtool.errors import KvtoolError

# Images booted straight from a kernel + initrd (firmware.kernelBoot) when the caller cannot ask
# the image store; anything else is a bootable disk image (a containerDisk root disk).
KERNEL_IMAGES = frozenset({"tiny-linux"})
IMAGE_KINDS = ("kernel", "disk")
RUN_STRATEGIES = ("Always", "Halted", "Manual", "RerunOnFailure", "Once")

ROOT_DISK = "root"
CLOUDINIT_DISK = "cloudinit"
NETWORK = "default"
DEFAULT_BUS = "virtio"
# What a disk argument may hold: one source (image, size or claim) and an optional bus.
DISK_SOURCES = ("image", "size", "claim")
DISK_KEYS = ("name", *DISK_SOURCES, "bus")


class SpecError(KvtoolError):
    """An argument the builder cannot turn into a manifest; `path` names it (`disks[1].size`)."""

    def __init__(self, path: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}", hint)
        self.path = path
        self.detail = message


def image_kind(image: str, kernel_images: frozenset[str] | set[str] = KERNEL_IMAGES) -> str:
    """"kernel" or "disk" for an image name, when the caller has no image store to ask."""
    return "kernel" if image in kernel_images else "disk"


def virtual_machine(name: str, *, namespace: str = "default", cpu: int = 1, memory: str | int = "128Mi",
                    image: str | None = None, image_kind: str | None = None, kernel_args: str | None = None,
                    disks: Sequence[Mapping[str, Any]] = (), user_data: str | None = None,
                    run_strategy: str = "Always", node_selector: Mapping[str, str] | None = None,
                    labels: Mapping[str, str] | None = None, stack: str | None = None) -> dict[str, Any]:
    """A VirtualMachine manifest (kvtool.io/v1alpha1, KubeVirt field names).

    image: booted via kernelBoot when image_kind is "kernel" (default: guessed with
    `image_kind()`), else attached as the containerDisk root disk. disks: extra disks, each
    {"name", one of "image" (containerDisk) / "size" (emptyDisk) / "claim" (PVC), optional "bus"}.
    user_data: cloud-init NoCloud user data (a cloudinit disk). stack: also set kvtool's
    managed-by and stack labels (kvtool.plan.desired sets them anyway when it loads the manifest).
    """
    kind = _image_kind(image, image_kind)
    domain: dict[str, Any] = {"cpu": {"cores": cpu}, "memory": {"guest": memory}}
    disk_list: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    if image is not None and kind == "kernel":
        boot: dict[str, Any] = {"container": {"image": image}}
        if kernel_args is not None:
            boot["kernelArgs"] = kernel_args
        domain["firmware"] = {"kernelBoot": boot}
    elif image is not None:
        disk_list.append({"name": ROOT_DISK, "disk": {"bus": DEFAULT_BUS}})
        volumes.append({"name": ROOT_DISK, "containerDisk": {"image": image}})
    if kernel_args is not None and kind != "kernel":
        raise SpecError("kernel_args", "only a kernel image boots with kernel arguments",
                        hint="drop kernel_args, or use a kernel image such as tiny-linux")
    taken = {d["name"]: "image" for d in disk_list}
    if user_data is not None:
        taken[CLOUDINIT_DISK] = "user_data"
    for i, spec in enumerate(disks):
        disk, volume = _disk(spec, f"disks[{i}]", taken)
        disk_list.append(disk)
        volumes.append(volume)
    if user_data is not None:
        disk_list.append({"name": CLOUDINIT_DISK, "disk": {"bus": DEFAULT_BUS}})
        volumes.append({"name": CLOUDINIT_DISK, "cloudInitNoCloud": {"userData": user_data}})
    domain["devices"] = {"disks": disk_list, "interfaces": [{"name": NETWORK, "masquerade": {}}]}

    template_spec: dict[str, Any] = {"domain": domain, "networks": [{"name": NETWORK, "pod": {}}]}
    if volumes:
        template_spec["volumes"] = volumes
    if node_selector:
        template_spec["nodeSelector"] = dict(node_selector)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    all_labels = dict(labels or {})
    if stack is not None:
        all_labels.update({MANAGED_BY_LABEL: MANAGED_BY, STACK_LABEL: stack})
    if all_labels:
        metadata["labels"] = all_labels
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "metadata": metadata,
        "spec": {"runStrategy": run_strategy, "template": {"spec": template_spec}},
    }


def _image_kind(image: str | None, given: str | None) -> str | None:
    if given is None:
        return image_kind(image) if image is not None else None
    if given not in IMAGE_KINDS:
        raise SpecError("image_kind", f"{given!r} is not one of: {', '.join(IMAGE_KINDS)}")
    return given


def _disk(spec: Mapping[str, Any], path: str, taken: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One extra disk: (the disks[] entry, the volumes[] entry)."""
    if not isinstance(spec, Mapping):
        raise SpecError(path, f"expected a mapping with {', '.join(DISK_KEYS)}, got {type(spec).__name__}")
    for key in spec:
        if key not in DISK_KEYS:
            guess = difflib.get_close_matches(str(key), DISK_KEYS, n=1)
            raise SpecError(f"{path}.{key}", "unknown disk field" + (f"; did you mean {guess[0]!r}?" if guess else ""),
                            hint=f"a disk takes {', '.join(DISK_KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{path}.name", "every disk needs a name")
    if name in taken:
        raise SpecError(f"{path}.name", f"{name!r} is already used by {taken[name]}",
                        hint="give each disk its own name")
    taken[name] = path
    sources = [k for k in DISK_SOURCES if spec.get(k) is not None]
    if len(sources) != 1:
        found = " and ".join(sources) if sources else "none"
        raise SpecError(path, f"a disk takes exactly one of image, size and claim (found {found})",
                        hint='e.g. {name = "data", size = "1Gi"} for an empty disk')
    source, value = sources[0], spec[sources[0]]
    bus = spec.get("bus")
    disk = {"name": name, "disk": {"bus": bus if bus is not None else DEFAULT_BUS}}
    if source == "image":
        volume: dict[str, Any] = {"name": name, "containerDisk": {"image": value}}
    elif source == "size":
        volume = {"name": name, "emptyDisk": {"capacity": value}}
    else:
        volume = {"name": name, "persistentVolumeClaim": {"claimName": value}}
    return disk, volume


def parse_virtual_machine(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The builder's arguments back from a manifest (what `virtual_machine` would need to make it).

    Parts the builder cannot express (other volume kinds, devices, tolerations...) are left
    out; callers that need them compare the manifest itself.
    """
    meta = manifest.get("metadata") or {}
    spec = manifest.get("spec") or {}
    tspec = (spec.get("template") or {}).get("spec") or {}
    domain = tspec.get("domain") or {}
    volumes = {v.get("name"): v for v in tspec.get("volumes") or [] if isinstance(v, Mapping)}
    boot = (domain.get("firmware") or {}).get("kernelBoot") or {}
    image = (boot.get("container") or {}).get("image")
    kind = "kernel" if image is not None else None
    user_data = None
    disks = []
    for disk in (domain.get("devices") or {}).get("disks") or []:
        volume = volumes.get(disk.get("name")) or {}
        bus = (disk.get("disk") or {}).get("bus")
        if disk.get("name") == ROOT_DISK and image is None and "containerDisk" in volume:
            image, kind = volume["containerDisk"].get("image"), "disk"
        elif disk.get("name") == CLOUDINIT_DISK and "userData" in (volume.get("cloudInitNoCloud") or {}):
            user_data = volume["cloudInitNoCloud"]["userData"]
        elif "cdrom" not in disk:
            entry: dict[str, Any] = {"name": disk.get("name")}
            if "containerDisk" in volume:
                entry["image"] = volume["containerDisk"].get("image")
            elif "emptyDisk" in volume:
                entry["size"] = volume["emptyDisk"].get("capacity")
            elif "persistentVolumeClaim" in volume:
                entry["claim"] = volume["persistentVolumeClaim"].get("claimName")
            else:
                continue  # another volume kind: not something the builder makes
            if bus is not None and bus != DEFAULT_BUS:
                entry["bus"] = bus
            disks.append(entry)
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in (MANAGED_BY_LABEL, STACK_LABEL)}
    strategy = spec.get("runStrategy") or ("Always" if spec.get("running") else "Halted")
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "cpu": (domain.get("cpu") or {}).get("cores", 1),
        "memory": (domain.get("memory") or {}).get("guest"),
        "image": image,
        "image_kind": kind,
        "kernel_args": boot.get("kernelArgs"),
        "disks": disks,
        "user_data": user_data,
        "run_strategy": strategy,
        "node_selector": dict(tspec.get("nodeSelector") or {}),
        "labels": labels,
        "stack": (meta.get("labels") or {}).get(STACK_LABEL),
    }
