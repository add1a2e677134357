"""Configure steps for the devices that are not disks or NICs: emulator, inputs, controllers, serial console,
watchdog, sound, RNG, balloon, vsock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kvtool.domain import domain as domain_model
from kvtool.domain import spec as s
from kvtool.domain import xmlmodel
from kvtool.domain.devices import Console, Controller, Input, MemBalloon, Rng, Serial, Sound, Vsock, Watchdog

if TYPE_CHECKING:
    from kvtool.domain.converter import DomainInputs


def _path(value: object, path: str) -> str:
    return s.string(None if value is None else str(value), path, pattern=xmlmodel.ABSOLUTE_PATH)


def configure_emulator(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """An explicit QEMU binary when the launcher has one; else libvirt picks from its capabilities."""
    if inputs.emulator is not None:
        domain.emulator = _path(inputs.emulator, "inputs.emulator")


def devices_spec(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    dom = s.mapping(s.mapping(spec, "spec").get("domain"), "spec.domain")
    return s.mapping(dom.get("devices"), "spec.domain.devices")


def _autoattach(spec: Mapping[str, Any], key: str, default: bool) -> bool:
    return s.boolean(devices_spec(spec).get(key), f"spec.domain.devices.{key}", default=default)


def virtio_model(spec: Mapping[str, Any]) -> str:
    """virtio, or virtio-transitional for guests older than virtio 1.0 (devices.useVirtioTransitional)."""
    return "virtio-transitional" if _autoattach(spec, "useVirtioTransitional", False) else "virtio"


def wants_vsock(spec: Mapping[str, Any]) -> bool:
    """autoattachVSOCK: true, or devices.vsock: {} (newer KubeVirt's form)."""
    vsock = devices_spec(spec).get("vsock")
    s.mapping(vsock, "spec.domain.devices.vsock")
    return _autoattach(spec, "autoattachVSOCK", False) or vsock is not None


def configure_inputs(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """devices.inputs, or one virtio tablet when autoattachInputDevice asks and none is listed."""
    listed = list(s.named_entries(devices_spec(inputs.spec).get("inputs"), "spec.domain.devices.inputs"))
    for path, name, entry in listed:
        domain.add(Input(type=s.string(entry.get("type"), f"{path}.type", choices=("tablet", "keyboard")),
                         bus=s.string(entry.get("bus"), f"{path}.bus", default="usb", choices=("usb", "virtio")),
                         alias=f"ua-input-{name}"))
    if not listed and _autoattach(inputs.spec, "autoattachInputDevice", False):
        domain.add(Input(type="tablet", bus="virtio", alias="ua-input-default-0"))


def configure_controllers(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """A USB controller (qemu-xhci) only for USB inputs: q35 would otherwise always get one plus its ports."""
    usb = any(i.bus == "usb" for i in domain.inputs)
    domain.add(Controller(type="usb", index=0, model="qemu-xhci" if usb else "none"))


def configure_serial_console(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """ttyS0 as the console: appended to serial_log when given (the console log), else a pty.

    libvirt turns a serial-type <console> into a mirror of serial port 0, so the
    console has the same type and source; we write that mirror out ourselves so
    the XML says what libvirt will do.
    """
    if not _autoattach(inputs.spec, "autoattachSerialConsole", True):
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


def _named_device(spec: Mapping[str, Any], key: str) -> tuple[str, Mapping[str, Any], str] | None:
    """(field path, entry, its DNS-label name) of a single named device (devices.watchdog, devices.sound)."""
    if devices_spec(spec).get(key) is None:
        return None
    path = f"spec.domain.devices.{key}"
    entry = s.mapping(devices_spec(spec)[key], path)
    return path, entry, s.string(entry.get("name"), f"{path}.name", pattern=s.NAME)


def configure_watchdog(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """devices.watchdog: an i6300esb whose action (default reset) ends or restarts the guest when it hangs."""
    found = _named_device(inputs.spec, "watchdog")
    if found is None:
        return
    path, watchdog, name = found
    model = s.one_of(watchdog, path, supported=("i6300esb",), known=("diag288",), what="watchdog model")
    action = s.string(s.mapping(watchdog[model], f"{path}.{model}").get("action"), f"{path}.{model}.action",
                      default="reset", choices=("poweroff", "reset", "shutdown"))
    domain.add(Watchdog(model=model, action=action, alias=f"ua-watchdog-{name}"))


def configure_sound(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """devices.sound: an ich9 (default) or ac97 card."""
    found = _named_device(inputs.spec, "sound")
    if found is None:
        return
    path, sound, name = found
    domain.add(Sound(model=s.string(sound.get("model"), f"{path}.model", default="ich9", choices=("ich9", "ac97")),
                     alias=f"ua-sound-{name}"))


def configure_rng(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """virtio-rng from /dev/urandom, always (devices.rng or not): guests otherwise can stall early in boot
    waiting for entropy."""
    s.mapping(devices_spec(inputs.spec).get("rng"), "spec.domain.devices.rng")
    domain.add(Rng(model=virtio_model(inputs.spec), backend_model="random", backend="/dev/urandom"))


def configure_memballoon(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """No balloon unless autoattachMemBalloon: the pod's memory request is the guest's memory; nobody reclaims
    it behind its back. (KubeVirt attaches one by default, for its memory statistics.)"""
    wanted = _autoattach(inputs.spec, "autoattachMemBalloon", False)
    domain.memballoon = MemBalloon(model=virtio_model(inputs.spec) if wanted else "none")


def configure_vsock(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """autoattachVSOCK (or devices.vsock: {}): a virtio-vsock device with a context ID libvirt picks."""
    if wants_vsock(inputs.spec):
        domain.vsock = Vsock(model=virtio_model(inputs.spec), cid_auto=True)
