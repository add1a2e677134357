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
from kvtool.domain.configure.compute import vcpu_count
from kvtool.domain.configure.devices import virtio_model
from kvtool.domain.devices import Controller, Disk, PCIAddress
from kvtool.domain.devices.address import PCI_ADDRESS

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


IO_THREAD_POLICIES = ("shared", "auto")


def _block_size(disk: Disk, disk_spec: Mapping[str, Any], path: str) -> None:
    """blockSize.custom -> <blockio>: the sector sizes the guest sees (e.g. 4096 for 4Kn disks)."""
    block_size = s.mapping(disk_spec.get("blockSize"), f"{path}.blockSize")
    if not block_size:
        return
    custom = s.mapping(block_size.get("custom"), f"{path}.blockSize.custom", required=True)
    logical = s.integer(custom.get("logical"), f"{path}.blockSize.custom.logical", minimum=512, maximum=4096)
    physical = s.integer(custom.get("physical"), f"{path}.blockSize.custom.physical", minimum=512, maximum=65536)
    for value, key in ((logical, "logical"), (physical, "physical")):
        if value & (value - 1):
            raise s.ConversionError(f"{path}.blockSize.custom.{key}", f"{value} is not a power of 2")
    if logical > physical:
        raise s.ConversionError(f"{path}.blockSize.custom", f"logical {logical} is larger than physical {physical}")
    disk.blockio_logical, disk.blockio_physical = logical, physical


def _io_threads(inputs: DomainInputs, domain: domain_model.Domain, disk: Disk, disk_spec: Mapping[str, Any],
                path: str, policy: str | None, virtio_index: int) -> None:
    """ioThreadsPolicy shared: thread 1 for every virtio disk, except that dedicatedIOThread disks get their own;
    auto: one thread per disk (KubeVirt caps auto at 2x vCPUs and shares beyond)."""
    dedicated = s.boolean(disk_spec.get("dedicatedIOThread"), f"{path}.dedicatedIOThread", default=False)
    if disk.target_bus != "virtio":
        if dedicated:
            raise s.ConversionError(f"{path}.dedicatedIOThread", "only a virtio disk has an I/O thread")
        return
    if policy is None and not dedicated:
        return
    used = domain.iothreads or 0
    if policy == "auto" and used >= 2 * vcpu_count(inputs.spec):
        disk.driver_iothread = 1 + virtio_index % used
        return
    if dedicated or policy == "auto" or used == 0:
        used += 1
        domain.iothreads = used
        disk.driver_iothread = used
    else:
        disk.driver_iothread = 1


def configure_disks(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """One <disk> per spec disk, targets vda.. (virtio) and sda.. (sata and scsi share the sd namespace)."""
    dom = s.mapping(s.mapping(inputs.spec, "spec").get("domain"), "spec.domain")
    devices_spec = s.mapping(dom.get("devices"), "spec.domain.devices")
    volumes = volumes_by_name(inputs.spec)
    policy = s.string(dom.get("ioThreadsPolicy"), "spec.domain.ioThreadsPolicy", default=None,
                      choices=IO_THREAD_POLICIES)
    multi_queue = s.boolean(devices_spec.get("blockMultiQueue"), "spec.domain.devices.blockMultiQueue",
                            default=False)
    transitional = virtio_model(inputs.spec) == "virtio-transitional"
    counters = {"vd": 0, "sd": 0}
    for path, name, disk_spec in s.named_entries(devices_spec.get("disks"), "spec.domain.devices.disks"):
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
        cache = s.string(disk_spec.get("cache"), f"{path}.cache", default=DEFAULT_CACHE, choices=CACHE_MODES)
        io = s.string(disk_spec.get("io"), f"{path}.io", default=None, choices=("native", "threads", "default"))
        if io == "native" and cache != "none":
            raise s.ConversionError(f"{path}.io", "io native needs cache none", hint="set cache: none")
        if kind == "cdrom" and not readonly:
            raise s.ConversionError(f"{path}.cdrom.readonly", "a cdrom is always read-only")
        resolved = _resolved(inputs, name)
        prefix = "vd" if bus == "virtio" else "sd"
        disk = Disk(
            type="file",
            device=kind,
            driver_name="qemu",
            driver_type=resolved.format,
            driver_cache=cache,
            driver_io=None if io == "default" else io,
            driver_error_policy=s.string(disk_spec.get("errorPolicy"), f"{path}.errorPolicy", default=None,
                                         choices=("stop", "ignore", "report", "enospace")),
            source_file=str(resolved.path),
            target_dev=disk_target(prefix, counters[prefix]),
            target_bus=bus,
            readonly=readonly or resolved.readonly or None,
            serial=s.string(disk_spec.get("serial"), f"{path}.serial", default=None,
                            pattern=Disk.serial.pattern.pattern),
            boot_order=boot.boot_order(disk_spec, path),
            alias=f"ua-disk-{name}",
            shareable=s.boolean(disk_spec.get("shareable"), f"{path}.shareable", default=False) or None,
        )
        rotation = s.integer(target.get("rotationRate"), f"{path}.{kind}.rotationRate", default=None, minimum=1,
                             maximum=65534)
        if rotation is not None:
            if bus not in ("sata", "scsi"):
                raise s.ConversionError(f"{path}.{kind}.rotationRate", "is for sata and scsi disks",
                                        hint="set bus: sata or scsi")
            disk.target_rotation_rate = rotation
        if kind == "cdrom" and target.get("tray") is not None:
            disk.target_tray = s.string(target["tray"], f"{path}.cdrom.tray", choices=("open", "closed"))
        pci = s.string(target.get("pciAddress"), f"{path}.{kind}.pciAddress", default=None, pattern=PCI_ADDRESS)
        if pci is not None:
            if bus != "virtio":
                raise s.ConversionError(f"{path}.{kind}.pciAddress", "only a virtio disk sits on PCI")
            disk.address = PCIAddress.parse_kubevirt(pci)
        if bus == "virtio":
            if transitional:
                disk.model = "virtio-transitional"
            if multi_queue:
                disk.driver_queues = vcpu_count(inputs.spec)
        _block_size(disk, disk_spec, path)
        _io_threads(inputs, domain, disk, disk_spec, path, policy, counters["vd"])
        if not disk.readonly:
            disk.driver_discard = "unmap"  # thin qcow2/raw files shrink back when the guest trims
        counters[prefix] += 1
        domain.add(disk)
    if any(d.target_bus == "scsi" for d in domain.disks):
        domain.add(Controller(type="scsi", index=0, model="virtio-scsi"))
