"""<disk>: one file-backed disk or cdrom, as the launcher prepared it."""

from __future__ import annotations

from kvtool.domain import xmlmodel
from kvtool.domain.xmlmodel import Int, Presence, Text


class Disk(xmlmodel.XMLObject):
    TAG = "disk"

    type = Text("./@type", choices=("file",), required=True, doc="the launcher always hands us files")
    device = Text("./@device", choices=("disk", "cdrom"), required=True)
    driver_name = Text("./driver/@name", choices=("qemu",))
    driver_type = Text("./driver/@type", choices=("raw", "qcow2"))
    driver_cache = Text("./driver/@cache", choices=("none", "writethrough", "writeback"))
    driver_discard = Text("./driver/@discard", choices=("unmap", "ignore"))
    source_file = Text("./source/@file", pattern=xmlmodel.ABSOLUTE_PATH, required=True)
    target_dev = Text("./target/@dev", pattern=r"(vd|sd)[a-z]{1,3}", required=True)
    target_bus = Text("./target/@bus", choices=("virtio", "sata", "scsi"), required=True)
    readonly = Presence("./readonly")
    serial = Text("./serial", pattern=r"[A-Za-z0-9_.+-]{1,20}")
    boot_order = Int("./boot/@order", minimum=1)
    alias = Text("./alias/@name", pattern=xmlmodel.USER_ALIAS, doc="ua-<disk name>, maps libvirt events back")

    def check(self) -> None:
        prefix = "vd" if self.target_bus == "virtio" else "sd"
        if not self.target_dev.startswith(prefix):
            raise xmlmodel.XMLModelError(f"Disk: target {self.target_dev!r} does not fit bus {self.target_bus!r}")
        if self.device == "cdrom" and not self.readonly:
            raise xmlmodel.XMLModelError("Disk: a cdrom must be readonly")
        if self.device == "cdrom" and self.target_bus == "virtio":
            raise xmlmodel.XMLModelError("Disk: a cdrom cannot sit on the virtio bus")
