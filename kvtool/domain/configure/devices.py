"""Configure steps for the fixed devices: emulator, controllers, serial console, RNG, balloon."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvtool.domain import domain as domain_model
from kvtool.domain import spec as s
from kvtool.domain import xmlmodel
from kvtool.domain.devices import Console, Controller, MemBalloon, Rng, Serial

if TYPE_CHECKING:
    from kvtool.domain.converter import DomainInputs


def _path(value: object, path: str) -> str:
    return s.string(None if value is None else str(value), path, pattern=xmlmodel.ABSOLUTE_PATH)


def configure_emulator(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """An explicit QEMU binary when the launcher has one; else libvirt picks from its capabilities."""
    if inputs.emulator is not None:
        domain.emulator = _path(inputs.emulator, "inputs.emulator")


def configure_controllers(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """No USB controller: nothing uses one, and q35 would otherwise get a qemu-xhci plus its port."""
    domain.add(Controller(type="usb", index=0, model="none"))


def configure_serial_console(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """ttyS0 as the console: appended to serial_log when given (the console log), else a pty.

    libvirt turns a serial-type <console> into a mirror of serial port 0, so the
    console has the same type and source; we write that mirror out ourselves so
    the XML says what libvirt will do.
    """
    devices = s.mapping(s.mapping(s.mapping(inputs.spec, "spec").get("domain"), "spec.domain").get("devices"),
                        "spec.domain.devices")
    if not s.boolean(devices.get("autoattachSerialConsole"), "spec.domain.devices.autoattachSerialConsole",
                     default=True):
        return
    if inputs.serial_log is None:
        domain.add(Serial(type="pty", target_port=0))
        domain.add(Console(type="pty", target_type="serial", target_port=0))
        return
    log = _path(inputs.serial_log, "inputs.serial_log")
    if s.boolean(inputs.console_pty, "inputs.console_pty", default=False):
        domain.add(Serial(type="pty", log_file=log, log_append=True, target_port=0))
        domain.add(Console(type="pty", target_type="serial", target_port=0))
    else:
        domain.add(Serial(type="file", source_path=log, source_append=True, target_port=0))
        domain.add(Console(type="file", source_path=log, source_append=True, target_type="serial", target_port=0))


def configure_rng(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """virtio-rng from /dev/urandom: guests otherwise can stall early in boot waiting for entropy."""
    domain.add(Rng(model="virtio", backend_model="random", backend="/dev/urandom"))


def configure_memballoon(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """No balloon: the pod's memory request is the guest's memory; nobody reclaims it behind its back."""
    domain.memballoon = MemBalloon(model="none")
