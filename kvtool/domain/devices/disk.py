"""<disk>: one file-backed disk or cdrom, as the launcher prepared it."""

from __future__ import annotations

from kvtool.domain import xmlmodel
from kvtool.domain.devices.address import PCIAddress
from kvtool.domain.xmlmodel import Child, Int, Presence, Text


class Disk(xmlmodel.XMLObject):
    TAG = "disk"

    type = Text("./@type", choices=("file",), required=True, doc="the launcher always hands us files")
    device = Text("./@device", choices=("disk", "cdrom"), required=True)
    model = Text("./@model", choices=("virtio-transitional",), doc="for guests older than virtio 1.0")
    driver_name = Text("./driver/@name", choices=("qemu",))
    driver_type = Text("./driver/@type", choices=("raw", "qcow2"))
    driver_cache = Text("./driver/@cache", choices=("none", "writethrough", "writeback"))
    driver_error_policy = Text("./driver/@error_policy", choices=("stop", "ignore", "report", "enospace"))
    driver_io = Text("./driver/@io", choices=("native", "threads"))
    driver_discard = Text("./driver/@discard", choices=("unmap", "ignore"))
    driver_iothread = Int("./driver/@iothread", minimum=1)
    driver_queues = Int("./driver/@queues", minimum=1, maximum=256)
    source_file = Text("./source/@file", pattern=xmlmodel.ABSOLUTE_PATH, required=True)
    target_dev = Text("./target/@dev", pattern=r"(vd|sd)[a-z]{1,3}", required=True)
    target_bus = Text("./target/@bus", choices=("virtio", "sata", "scsi"), required=True)
    target_tray = Text("./target/@tray", choices=("open", "closed"))
    target_rotation_rate = Int("./target/@rotation_rate", minimum=1, maximum=65534, doc="1: an SSD")
    readonly = Presence("./readonly")
    shareable = Presence("./shareable")
    blockio_logical = Int("./blockio/@logical_block_size", minimum=512, maximum=65536)
    blockio_physical = Int("./blockio/@physical_block_size", minimum=512, maximum=65536)
    serial = Text("./serial", pattern=r"[A-Za-z0-9_.+-]{1,256}")
    boot_order = Int("./boot/@order", minimum=1)
    alias = Text("./alias/@name", pattern=xmlmodel.USER_ALIAS, doc="ua-<disk name>, maps libvirt events back")
    address = Child(PCIAddress)

    def check(self) -> None:
        prefix = "vd" if self.target_bus == "virtio" else "sd"
        if not self.target_dev.startswith(prefix):
            raise xmlmodel.XMLModelError(f"Disk: target {self.target_dev!r} does not fit bus {self.target_bus!r}")
        if self.device == "cdrom" and not self.readonly:
            raise xmlmodel.XMLModelError("Disk: a cdrom must be readonly")
        if self.device == "cdrom" and self.target_bus == "virtio":
            raise xmlmodel.XMLModelError("Disk: a cdrom cannot sit on the virtio bus")
        if self.target_tray is not None and self.device != "cdrom":
            raise xmlmodel.XMLModelError("Disk: only a cdrom has a tray")
        if self.target_rotation_rate is not None and self.target_bus not in ("sata", "scsi"):
            raise xmlmodel.XMLModelError("Disk: a rotation rate is for sata and scsi disks")
        if self.address is not None and self.target_bus != "virtio":
            raise xmlmodel.XMLModelError("Disk: only a virtio disk sits on PCI")
        if self.driver_io == "native" and self.driver_cache != "none":
            raise xmlmodel.XMLModelError("Disk: io native needs cache none")
