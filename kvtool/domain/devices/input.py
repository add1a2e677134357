"""<input>: a tablet (absolute pointer) or keyboard, on virtio or USB (KubeVirt's devices.inputs)."""

from __future__ import annotations

from kvtool.domain import xmlmodel
from kvtool.domain.xmlmodel import Text


class Input(xmlmodel.XMLObject):
    TAG = "input"

    type = Text("./@type", choices=("tablet", "keyboard"), required=True)
    bus = Text("./@bus", choices=("virtio", "usb"), required=True)
    alias = Text("./alias/@name", pattern=xmlmodel.USER_ALIAS)
