"""Configure steps for the machine itself: identity, CPU, memory, boot, features, clock, lifecycle."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvtool.domain import domain as domain_model
from kvtool.domain import spec as s
from kvtool.domain.configure import boot

if TYPE_CHECKING:
    from kvtool.domain.converter import DomainInputs

MIN_MEMORY = 1 << 20  # 1 MiB; below that QEMU refuses, and it is surely a unit mistake
MAX_MEMORY = 1 << 50  # 1 PiB
MAX_CMDLINE = 2047  # x86 COMMAND_LINE_SIZE is 2048 including the NUL
METADATA_KEYS = ("namespace", "name", "uid")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f]*")


def _domain(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    return s.mapping(s.mapping(spec, "spec", required=True).get("domain"), "spec.domain", required=True)


def configure_identity(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """Hypervisor type, name and UUID: what libvirt identifies the domain by."""
    domain.type = s.string(inputs.virt_type, "inputs.virt_type", choices=("qemu", "kvm"))
    name = s.string(inputs.name, "inputs.name", pattern=domain_model.DOMAIN_NAME)
    if name in (".", ".."):
        raise s.ConversionError("inputs.name", f"{name!r} is not a usable name (libvirt puts it in file paths)")
    domain.name = name
    try:
        domain.uuid = str(uuid.UUID(s.string(inputs.uuid, "inputs.uuid")))
    except ValueError:
        raise s.ConversionError("inputs.uuid", f"{s.show(inputs.uuid)} is not a UUID") from None


def configure_metadata(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """<metadata><kvtool:vmi namespace= name= uid=/>: which VMI this domain belongs to."""
    metadata = s.mapping(inputs.metadata, "inputs.metadata")
    if not metadata:
        return
    element = domain_model.VMIMetadata()
    for key, value in sorted(metadata.items()):
        path = f"inputs.metadata[{key!r}]"
        if key not in METADATA_KEYS:
            raise s.ConversionError(path, f"unknown key (known: {', '.join(METADATA_KEYS)})")
        setattr(element, key, s.string(value, path, pattern=_PRINTABLE.pattern, max_length=253))
    domain.metadata = element


def configure_cpu(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """vcpu = sockets*cores*threads plus the same <topology>; an optional CPU model."""
    cpu_spec = s.mapping(_domain(inputs.spec).get("cpu"), "spec.domain.cpu")
    counts = {key: s.integer(cpu_spec.get(key), f"spec.domain.cpu.{key}", default=1, minimum=1,
                             maximum=domain_model.MAX_VCPUS) for key in ("sockets", "cores", "threads")}
    vcpus = counts["sockets"] * counts["cores"] * counts["threads"]
    if vcpus > domain_model.MAX_VCPUS:
        raise s.ConversionError("spec.domain.cpu", f"sockets*cores*threads = {vcpus} exceeds "
                                f"{domain_model.MAX_VCPUS} vCPUs")
    cpu = domain_model.CPU(**counts)
    model = s.string(cpu_spec.get("model"), "spec.domain.cpu.model", default=None, pattern=r"[A-Za-z0-9_.+-]{1,64}")
    if model in ("host-passthrough", "host-model"):
        if model == "host-passthrough" and inputs.virt_type != "kvm":
            raise s.ConversionError("spec.domain.cpu.model", "host-passthrough needs KVM; this node runs TCG",
                                    hint="leave cpu.model unset, or name a model such as Nehalem")
        cpu.mode = model
    elif model is not None:
        cpu.mode, cpu.model, cpu.model_fallback = "custom", model, "allow"
    domain.vcpu = vcpus
    domain.cpu = cpu


def guest_memory_bytes(spec: Mapping[str, Any]) -> int:
    """memory.guest, else resources.requests.memory, else resources.limits.memory (KubeVirt's order)."""
    dom = _domain(spec)
    resources = s.mapping(dom.get("resources"), "spec.domain.resources")
    candidates = [
        ("spec.domain.memory.guest", s.mapping(dom.get("memory"), "spec.domain.memory").get("guest")),
        ("spec.domain.resources.requests.memory",
         s.mapping(resources.get("requests"), "spec.domain.resources.requests").get("memory")),
        ("spec.domain.resources.limits.memory",
         s.mapping(resources.get("limits"), "spec.domain.resources.limits").get("memory")),
    ]
    for path, value in candidates:
        if value is None:
            continue
        size = s.quantity_bytes(value, path)
        if size < MIN_MEMORY:
            raise s.ConversionError(path, f"{s.show(value)} is less than 1Mi", hint="write e.g. 256Mi")
        if size > MAX_MEMORY:
            raise s.ConversionError(path, f"{s.show(value)} is more than 1Pi")
        return size
    raise s.ConversionError("spec.domain.memory.guest", "no guest memory given",
                            hint="set spec.domain.memory.guest or spec.domain.resources.requests.memory")


def configure_memory(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """<memory unit='KiB'>, rounded up to whole KiB."""
    domain.memory = -(-guest_memory_bytes(inputs.spec) // 1024)
    domain.memory_unit = "KiB"


def _absolute(value: Any, path: str) -> str:
    if not isinstance(value, str | Path):
        raise s.ConversionError(path, f"expected a path, got {type(value).__name__}")
    text = str(value)
    if not text.startswith("/") or not _PRINTABLE.fullmatch(text) or len(text) > 4096:
        raise s.ConversionError(path, f"{s.show(text)} is not an absolute path")
    return text


def configure_os(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """q35 hvm; direct kernel boot when the spec asks for it, else disks by bootOrder (or plain hd)."""
    dom = _domain(inputs.spec)
    machine = s.mapping(dom.get("machine"), "spec.domain.machine")
    os = domain_model.OS(type="hvm", arch="x86_64", machine=s.string(
        machine.get("type"), "spec.domain.machine.type", default="q35", pattern=r"[A-Za-z0-9_.-]{1,64}"))
    firmware = s.mapping(dom.get("firmware"), "spec.domain.firmware")
    bootloader = s.mapping(firmware.get("bootloader"), "spec.domain.firmware.bootloader")
    if bootloader.get("efi") is not None:
        raise s.ConversionError("spec.domain.firmware.bootloader.efi", "EFI is not supported by kvtool yet",
                                hint="use bios (the default) or kernelBoot")
    kernel_boot = firmware.get("kernelBoot")
    if kernel_boot is not None:
        _kernel_boot(inputs, os, s.mapping(kernel_boot, "spec.domain.firmware.kernelBoot"))
    else:
        for value, name in ((inputs.kernel, "kernel"), (inputs.initrd, "initrd")):
            if value is not None:
                raise s.ConversionError(f"inputs.{name}", "set, but the spec has no firmware.kernelBoot")
        if not boot.boot_orders(inputs.spec):
            os.boot_dev = "hd"
    boot.boot_orders(inputs.spec)  # duplicates are an error even with kernel boot
    domain.os = os


def _kernel_boot(inputs: DomainInputs, os: domain_model.OS, kernel_boot: Mapping[str, Any]) -> None:
    path = "spec.domain.firmware.kernelBoot"
    container = s.mapping(kernel_boot.get("container"), f"{path}.container", required=True)
    if inputs.kernel is None:
        raise s.ConversionError("inputs.kernel", f"{path} asks for direct kernel boot, but no kernel was resolved")
    os.kernel = _absolute(inputs.kernel, "inputs.kernel")
    if container.get("initrdPath") is not None and inputs.initrd is None:
        raise s.ConversionError("inputs.initrd", f"{path}.container.initrdPath is set, but no initrd was resolved")
    if inputs.initrd is not None:
        os.initrd = _absolute(inputs.initrd, "inputs.initrd")
    args = s.string(kernel_boot.get("kernelArgs"), f"{path}.kernelArgs", default=None, pattern=_PRINTABLE.pattern,
                    max_length=MAX_CMDLINE)
    if args:
        os.cmdline = args


def configure_features(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """acpi + apic (unless the spec disables them); a small TCG translation cache on TCG."""
    features_spec = s.mapping(_domain(inputs.spec).get("features"), "spec.domain.features")
    features = domain_model.Features()
    for name in ("acpi", "apic"):
        path = f"spec.domain.features.{name}"
        enabled = s.boolean(s.mapping(features_spec.get(name), path).get("enabled"), f"{path}.enabled", default=True)
        setattr(features, name, enabled)
    if inputs.virt_type == "qemu" and inputs.tcg_tb_cache_mib is not None:
        features.tcg_tb_cache = s.integer(inputs.tcg_tb_cache_mib, "inputs.tcg_tb_cache_mib", minimum=1,
                                          maximum=1 << 20)
        features.tcg_tb_cache_unit = "MiB"
    domain.features = features


def configure_clock(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """UTC (or the spec's timezone) with catch-up timers, virt-manager's tested x86 defaults."""
    clock_spec = s.mapping(_domain(inputs.spec).get("clock"), "spec.domain.clock")
    if "utc" in clock_spec and "timezone" in clock_spec:
        raise s.ConversionError("spec.domain.clock", "set utc or timezone, not both")
    timezone = s.string(clock_spec.get("timezone"), "spec.domain.clock.timezone", default=None,
                        pattern=domain_model.Clock.timezone.pattern.pattern)
    clock = domain_model.Clock(offset="timezone" if timezone else "utc", timezone=timezone)
    clock.add(domain_model.Timer(name="rtc", tickpolicy="catchup"))
    clock.add(domain_model.Timer(name="pit", tickpolicy="delay"))
    clock.add(domain_model.Timer(name="hpet", present=False))
    domain.clock = clock


def configure_lifecycle(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """Power-off and crash end the domain (the handler decides about restarts); a guest reboot stays inside."""
    domain.on_poweroff = "destroy"
    domain.on_reboot = "restart"
    domain.on_crash = "destroy"
