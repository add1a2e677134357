"""<address type='pci'>: where a device sits on the guest's PCI bus (KubeVirt's pciAddress)."""

from __future__ import annotations

from kvtool.domain import xmlmodel
from kvtool.domain.xmlmodel import Text

# KubeVirt's pciAddress form: domain:bus:slot.function, e.g. 0000:01:01.0
PCI_ADDRESS = r"([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])"


class PCIAddress(xmlmodel.XMLObject):
    TAG = "address"

    type = Text("./@type", choices=("pci",), required=True)
    domain = Text("./@domain", pattern=r"0x[0-9a-f]{4}", required=True)
    bus = Text("./@bus", pattern=r"0x[0-9a-f]{2}", required=True)
    slot = Text("./@slot", pattern=r"0x[0-1][0-9a-f]", required=True)
    function = Text("./@function", pattern=r"0x[0-7]", required=True)

    @classmethod
    def parse_kubevirt(cls, text: str) -> PCIAddress:
        """"0000:01:01.0" -> <address type='pci' domain='0x0000' bus='0x01' slot='0x01' function='0x0'/>."""
        import re

        match = re.fullmatch(PCI_ADDRESS, text)
        if match is None:
            raise xmlmodel.XMLModelError(f"PCIAddress: {text!r} is not domain:bus:slot.function")
        domain, bus, slot, function = (part.lower() for part in match.groups())
        return cls(type="pci", domain=f"0x{domain}", bus=f"0x{bus}", slot=f"0x{slot}", function=f"0x{function}")
