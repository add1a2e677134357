"""Configure step for interfaces: each spec interface + its pod network + the launcher's tap -> one <interface>.

masquerade and bridge differ only in what the launcher wires up behind the
tap; to the domain both are "a NIC on this pre-created tap".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kvtool.domain import domain as domain_model
from kvtool.domain import spec as s
from kvtool.domain import xmlmodel
from kvtool.domain.configure import boot
from kvtool.domain.configure.devices import virtio_model
from kvtool.domain.devices import Interface, PCIAddress, interface
from kvtool.domain.devices.address import PCI_ADDRESS

if TYPE_CHECKING:
    from kvtool.domain.converter import DomainInputs

BINDINGS = ("masquerade", "bridge")
UNSUPPORTED_BINDINGS = ("sriov", "slirp", "passt", "passtBinding", "macvtap", "binding")
NETWORK_SOURCES = ("pod",)
UNSUPPORTED_NETWORK_SOURCES = ("multus",)
MODELS = ("virtio", "e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet")


def mac_address(value: Any, path: str) -> str:
    """A unicast MAC, written lower-case (a multicast MAC would make the guest NIC drop its own traffic)."""
    mac = s.string(value, path, pattern=xmlmodel.MAC_ADDRESS).lower()
    if int(mac[:2], 16) & 1:
        raise s.ConversionError(path, f"{mac!r} is a multicast address", hint="the first octet must be even")
    return mac


def networks_by_name(spec: Mapping[str, Any]) -> dict[str, int]:
    """spec.networks checked: DNS-label names, unique, exactly one supported source each."""
    found: dict[str, int] = {}
    for i, (path, name, network) in enumerate(s.named_entries(s.mapping(spec, "spec").get("networks"),
                                                              "spec.networks", pattern=s.IFACE_NAME)):
        s.one_of(network, path, supported=NETWORK_SOURCES, known=UNSUPPORTED_NETWORK_SOURCES, what="network source")
        found[name] = i
    return found


def configure_interfaces(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """<interface type='ethernet'> on the launcher's tap, or type='user' (slirp) when it resolved none."""
    dom = s.mapping(s.mapping(inputs.spec, "spec").get("domain"), "spec.domain")
    devices = s.mapping(dom.get("devices"), "spec.domain.devices")
    networks = networks_by_name(inputs.spec)
    for path, name, iface_spec in s.named_entries(devices.get("interfaces"), "spec.domain.devices.interfaces",
                                                      pattern=s.IFACE_NAME):
        if name not in networks:
            raise s.ConversionError(f"{path}.name", f"no network named {name!r} in spec.networks",
                                    hint="an interface connects to the network of the same name")
        binding = s.one_of(iface_spec, path, supported=BINDINGS, known=UNSUPPORTED_BINDINGS, what="binding")
        s.mapping(iface_spec[binding], f"{path}.{binding}")
        spec_mac = s.string(iface_spec.get("macAddress"), f"{path}.macAddress", default=None)
        if spec_mac is not None:
            spec_mac = mac_address(spec_mac, f"{path}.macAddress")
        model = s.string(iface_spec.get("model"), f"{path}.model", default="virtio", choices=MODELS)
        if model == "virtio":
            model = virtio_model(inputs.spec)

        resolved_path = f"inputs.interfaces[{name!r}]"
        resolved = inputs.interfaces.get(name)
        if resolved is None:
            raise s.ConversionError(resolved_path, "the launcher resolved no tap or MAC for this interface")
        mac = mac_address(resolved.mac, f"{resolved_path}.mac")
        if spec_mac is not None and mac != spec_mac:
            raise s.ConversionError(f"{resolved_path}.mac", f"{mac!r} differs from {path}.macAddress {spec_mac!r}")
        order = boot.boot_order(iface_spec, path)
        nic = Interface(mac=mac, model=model, boot_order=order, alias=f"ua-net-{name}",
                        acpi_index=s.integer(iface_spec.get("acpiIndex"), f"{path}.acpiIndex", default=None,
                                             minimum=1, maximum=16383))
        pci = s.string(iface_spec.get("pciAddress"), f"{path}.pciAddress", default=None, pattern=PCI_ADDRESS)
        if pci is not None:
            nic.address = PCIAddress.parse_kubevirt(pci)
        if order is None:
            nic.rom_enabled = False  # no network boot: skip loading iPXE in the firmware
        if resolved.tap is None:
            nic.type = "user"
        else:
            tap = s.string(resolved.tap, f"{resolved_path}.tap", pattern=interface.TAP_NAME)
            nic.type, nic.target_dev, nic.target_managed = "ethernet", tap, False
        domain.add(nic)

