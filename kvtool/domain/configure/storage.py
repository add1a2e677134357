"""Configure step for disks: each spec disk + its volume + the launcher's resolved file -> one <disk>."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvtool.domain import domain as domain_model
from kvtool.domain import spec as s
from kvtool.domain import xmlmodel
from kvtool.domain.configure import boot
from kvtool.domain.devices import Controller, Disk

if TYPE_CHECKING:
    from kvtool.domain.converter import DomainInputs, ResolvedVolume

VOLUME_SOURCES = ("containerDisk", "persistentVolumeClaim", "emptyDisk", "hostDisk", "cloudInitNoCloud",
                  "dataVolume")
UNSUPPORTED_SOURCES = ("cloudInitConfigDrive", "configMap", "secret", "serviceAccount", "downwardAPI",
                       "downwardMetrics", "ephemeral", "memoryDump", "sysprep")
DISK_KINDS = ("disk", "cdrom")
UNSUPPORTED_KINDS = ("lun", "floppy")
BUSES = {"disk": ("virtio", "sata", "scsi"), "cdrom": ("sata", "scsi")}
CACHE_MODES = ("none", "writethrough", "writeback")
# writeback works on every filesystem (cache=none needs O_DIRECT, which tmpfs lacks) and, like none,
# shows the guest a write cache it must flush - so it is as safe for well-behaved guests.
DEFAULT_CACHE = "writeback"


@dataclass(frozen=True)
class Volume:
    index: int
    name: str
    source: str


def volumes_by_name(spec: Mapping[str, Any]) -> dict[str, Volume]:
    """spec.volumes checked: DNS-label names, unique, exactly one supported source each."""
    found: dict[str, Volume] = {}
    for i, (path, name, volume) in enumerate(s.named_entries(s.mapping(spec, "spec").get("volumes"),
                                                             "spec.volumes")):
        source = s.one_of(volume, path, supported=VOLUME_SOURCES, known=UNSUPPORTED_SOURCES, what="volume source")
        s.mapping(volume[source], f"{path}.{source}", required=True)
        unknown = sorted(set(volume) - {"name", *VOLUME_SOURCES, *UNSUPPORTED_SOURCES})
        if unknown:
            raise s.ConversionError(f"{path}.{unknown[0]}", "unknown volume field")
        found[name] = Volume(i, name, source)
    return found


def disk_target(prefix: str, index: int) -> str:
    """libvirt's index -> name: 0 -> vda, 25 -> vdz, 26 -> vdaa (virIndexToDiskName)."""
    letters = ""
    while True:
        letters = chr(ord("a") + index % 26) + letters
        index = index // 26 - 1
        if index < 0:
            return prefix + letters


def _resolved(inputs: DomainInputs, name: str) -> ResolvedVolume:
    path = f"inputs.volumes[{name!r}]"
    resolved = inputs.volumes.get(name)
    if resolved is None:
        raise s.ConversionError(path, "the launcher resolved no file for this volume")
    if not isinstance(resolved.path, str | Path) or not str(resolved.path).startswith("/"):
        raise s.ConversionError(f"{path}.path", f"{s.show(str(resolved.path))} is not an absolute path")
    s.string(str(resolved.path), f"{path}.path", pattern=xmlmodel.ABSOLUTE_PATH)
    s.string(resolved.format, f"{path}.format", choices=("qcow2", "raw"))
    s.boolean(resolved.readonly, f"{path}.readonly", default=False)
    return resolved


def configure_disks(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """One <disk> per spec disk, targets vda.. (virtio) and sda.. (sata and scsi share the sd namespace)."""
    dom = s.mapping(s.mapping(inputs.spec, "spec").get("domain"), "spec.domain")
    devices = s.mapping(dom.get("devices"), "spec.domain.devices")
    volumes = volumes_by_name(inputs.spec)
    counters = {"vd": 0, "sd": 0}
    for path, name, disk_spec in s.named_entries(devices.get("disks"), "spec.domain.devices.disks"):
        if name not in volumes:
            raise s.ConversionError(f"{path}.name", f"no volume named {name!r} in spec.volumes",
                                    hint="a disk attaches the volume of the same name")
        kind = "disk"
        if any(key in disk_spec for key in (*DISK_KINDS, *UNSUPPORTED_KINDS)):
            kind = s.one_of(disk_spec, path, supported=DISK_KINDS, known=UNSUPPORTED_KINDS, what="disk type")
        target = s.mapping(disk_spec.get(kind), f"{path}.{kind}")
        bus = s.string(target.get("bus"), f"{path}.{kind}.bus", default="virtio" if kind == "disk" else "sata",
                       choices=BUSES[kind])
        readonly = s.boolean(target.get("readonly"), f"{path}.{kind}.readonly", default=kind == "cdrom")
        if kind == "cdrom" and not readonly:
            raise s.ConversionError(f"{path}.cdrom.readonly", "a cdrom is always read-only")
        resolved = _resolved(inputs, name)
        prefix = "vd" if bus == "virtio" else "sd"
        disk = Disk(
            type="file",
            device=kind,
            driver_name="qemu",
            driver_type=resolved.format,
            driver_cache=s.string(disk_spec.get("cache"), f"{path}.cache", default=DEFAULT_CACHE,
                                  choices=CACHE_MODES),
            source_file=str(resolved.path),
            target_dev=disk_target(prefix, counters[prefix]),
            target_bus=bus,
            readonly=readonly or resolved.readonly or None,
            serial=s.string(disk_spec.get("serial"), f"{path}.serial", default=None,
                            pattern=Disk.serial.pattern.pattern),
            boot_order=boot.boot_order(disk_spec, path),
            alias=f"ua-disk-{name}",
        )
        if not disk.readonly:
            disk.driver_discard = "unmap"  # thin qcow2/raw files shrink back when the guest trims
        counters[prefix] += 1
        domain.add(disk)
    if any(d.target_bus == "scsi" for d in domain.disks):
        domain.add(Controller(type="scsi", index=0, model="virtio-scsi"))
