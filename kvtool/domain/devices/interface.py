"""<interface>: a NIC on a tap the launcher created (ethernet) or, for tests and dev, on slirp (user)."""

from __future__ import annotations

from kvtool.domain import xmlmodel
from kvtool.domain.devices.address import PCIAddress
from kvtool.domain.xmlmodel import Child, Flag, Int, Text

TAP_NAME = r"[A-Za-z0-9_-]{1,15}"


class Interface(xmlmodel.XMLObject):
    TAG = "interface"

    type = Text("./@type", choices=("ethernet", "user"), required=True)
    mac = Text("./mac/@address", pattern=xmlmodel.MAC_ADDRESS, required=True)
    target_dev = Text("./target/@dev", pattern=TAP_NAME, doc="pre-created tap; libvirt must not create it")
    target_managed = Flag("./target/@managed")
    model = Text("./model/@type", choices=("virtio", "virtio-transitional", "e1000", "e1000e", "rtl8139",
                                                    "ne2k_pci", "pcnet"))
    boot_order = Int("./boot/@order", minimum=1)
    rom_enabled = Flag("./rom/@enabled", doc="the NIC's option ROM (iPXE): only for network boot; off saves boot time")
    alias = Text("./alias/@name", pattern=xmlmodel.USER_ALIAS)
    acpi_index = Int("./acpi/@index", minimum=1, maximum=16383, doc="the guest's stable NIC name (eno<N>)")
    address = Child(PCIAddress)

    def check(self) -> None:
        if self.type == "ethernet" and (self.target_dev is None or self.target_managed is not False):
            raise xmlmodel.XMLModelError("Interface: type ethernet needs an unmanaged target tap")
        if self.type == "user" and self.target_dev is not None:
            raise xmlmodel.XMLModelError("Interface: type user takes no target tap")
