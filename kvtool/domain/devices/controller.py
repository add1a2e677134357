"""<controller>: virtio-scsi when a disk wants the scsi bus; usb model none so q35 gets no USB we never use."""

from __future__ import annotations

from kvtool.domain import xmlmodel
from kvtool.domain.xmlmodel import Int, Text


class Controller(xmlmodel.XMLObject):
    TAG = "controller"

    type = Text("./@type", choices=("scsi", "usb"), required=True)
    index = Int("./@index", minimum=0, required=True)
    model = Text("./@model", choices=("virtio-scsi", "none", "qemu-xhci"), required=True)

    def check(self) -> None:
        if (self.type, self.model) not in {("scsi", "virtio-scsi"), ("usb", "none"), ("usb", "qemu-xhci")}:
            raise xmlmodel.XMLModelError(f"Controller: model {self.model!r} does not fit type {self.type!r}")
