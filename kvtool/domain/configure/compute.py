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
EFI_MIN_MEMORY = 256 << 20  # measured: OVMF (Debian 2022.11) at 128 MiB stops in a #GP under TCG
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
    # KubeVirt's firmware.uuid is the machine's UUID (libvirt requires SMBIOS and <uuid> to agree); else the VMI's.
    firmware_uuid = _firmware(inputs.spec).get("uuid")
    path, value = ("spec.domain.firmware.uuid", firmware_uuid) if firmware_uuid is not None else \
        ("inputs.uuid", inputs.uuid)
    try:
        domain.uuid = str(uuid.UUID(s.string(value, path)))
    except ValueError:
        raise s.ConversionError(path, f"{s.show(value)} is not a UUID") from None


def _firmware(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    return s.mapping(_domain(spec).get("firmware"), "spec.domain.firmware")


def configure_sysinfo(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """SMBIOS the guest reads: firmware.serial (and the UUID with it), domain.chassis."""
    firmware = _firmware(inputs.spec)
    chassis = s.mapping(_domain(inputs.spec).get("chassis"), "spec.domain.chassis")
    serial = s.string(firmware.get("serial"), "spec.domain.firmware.serial", default=None,
                      pattern=domain_model.SMBIOS_TEXT)
    if serial is None and not chassis:
        return
    sysinfo = domain_model.Sysinfo(type="smbios")
    if serial is not None:
        sysinfo.add(domain_model.SystemEntry(name="serial", value=serial))
        sysinfo.add(domain_model.SystemEntry(name="uuid", value=domain.uuid))
    for key in ("manufacturer", "version", "serial", "asset", "sku"):
        value = s.string(chassis.get(key), f"spec.domain.chassis.{key}", default=None,
                         pattern=domain_model.SMBIOS_TEXT)
        if value is not None:
            sysinfo.add(domain_model.ChassisEntry(name=key, value=value))
    domain.sysinfo = sysinfo


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


def vcpu_count(spec: Mapping[str, Any]) -> int:
    """sockets*cores*threads, each defaulting to 1."""
    cpu_spec = s.mapping(_domain(spec).get("cpu"), "spec.domain.cpu")
    count = 1
    for key in ("sockets", "cores", "threads"):
        count *= s.integer(cpu_spec.get(key), f"spec.domain.cpu.{key}", default=1, minimum=1,
                           maximum=domain_model.MAX_VCPUS)
    return count


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
    for path, name, feature in s.named_entries(cpu_spec.get("features"), "spec.domain.cpu.features",
                                               pattern=r"[a-z0-9_.-]{1,32}"):
        cpu.add(domain_model.CPUFeature(name=name, policy=s.string(
            feature.get("policy"), f"{path}.policy", default="require",
            choices=("force", "require", "optional", "disable", "forbid"))))
    if cpu.features and cpu.mode is None:
        # libvirt takes features only with a model: KubeVirt's default (host-model) under KVM, and under TCG
        # QEMU's own default, qemu64.
        if inputs.virt_type == "kvm":
            cpu.mode = "host-model"
        else:
            cpu.mode, cpu.model, cpu.model_fallback = "custom", "qemu64", "allow"
    domain.vcpu = vcpus
    domain.cpu = cpu


# TCG's translation cache, by default: an eighth of the guest's memory, within these bounds. QEMU's own default
# (1 GiB) costs ~30 MB of RSS per idle VM; a fixed 16 MiB suits a busybox guest but makes a distribution thrash
# it. Measured, Debian 12 booting to the end of cloud-init under TCG in 1 GiB: 197 s with 16 MiB, 78 s with 64,
# 58 s with 128, 56 s with 256, 48 s with QEMU's 1 GiB.
TB_CACHE_MIN_MIB, TB_CACHE_MAX_MIB = 16, 256


def tcg_tb_cache_mib(memory_bytes: int) -> int:
    """The TCG translation cache for a guest of `memory_bytes`: 1/8 of it, from 16 to 256 MiB."""
    return max(TB_CACHE_MIN_MIB, min(TB_CACHE_MAX_MIB, (memory_bytes >> 20) // 8))


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
    machine_type = s.string(machine.get("type"), "spec.domain.machine.type", default="",
                            pattern=r"[A-Za-z0-9_.-]{0,64}")
    os = domain_model.OS(type="hvm", arch="x86_64", machine=machine_type or "q35")
    firmware = s.mapping(dom.get("firmware"), "spec.domain.firmware")
    _bootloader(inputs, os, s.mapping(firmware.get("bootloader"), "spec.domain.firmware.bootloader"))
    if domain.sysinfo is not None:
        os.smbios_mode = "sysinfo"
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


def secure_boot(spec: Mapping[str, Any]) -> bool:
    """Does the VMI boot EFI with Secure Boot? (efi's secureBoot defaults to true, as in KubeVirt.)"""
    bootloader = s.mapping(_firmware(spec).get("bootloader"), "spec.domain.firmware.bootloader")
    if bootloader.get("efi") is None:
        return False
    efi = s.mapping(bootloader["efi"], "spec.domain.firmware.bootloader.efi")
    return s.boolean(efi.get("secureBoot"), "spec.domain.firmware.bootloader.efi.secureBoot", default=True)


def _bootloader(inputs: DomainInputs, os: domain_model.OS, bootloader: Mapping[str, Any]) -> None:
    """bios (SeaBIOS, the default) or efi: OVMF chosen by libvirt from the firmware descriptors."""
    path = "spec.domain.firmware.bootloader"
    if "bios" in bootloader and "efi" in bootloader:
        raise s.ConversionError(path, "set bios or efi, not both")
    if bootloader.get("bios") is not None:
        bios = s.mapping(bootloader["bios"], f"{path}.bios")
        if s.boolean(bios.get("useSerial"), f"{path}.bios.useSerial", default=False):
            os.bios_useserial = True
    if bootloader.get("efi") is None:
        return
    efi = s.mapping(bootloader["efi"], f"{path}.efi")
    if s.boolean(efi.get("persistent"), f"{path}.efi.persistent", default=False):
        raise s.ConversionError(f"{path}.efi.persistent", "persistent EFI variables are not supported by kvtool: "
                                "they live as long as the launcher pod", hint="leave persistent unset")
    if guest_memory_bytes(inputs.spec) < EFI_MIN_MEMORY:
        raise s.ConversionError("spec.domain.memory.guest", "EFI firmware (OVMF) needs at least 256Mi of guest "
                                "memory: with less it stops in a protection fault before the guest starts",
                                hint="give the VM 256Mi or more, or boot it with bios")
    os.firmware = "efi"
    secure = secure_boot(inputs.spec)
    os.add(domain_model.FirmwareFeature(enabled=secure, name="secure-boot"))
    os.add(domain_model.FirmwareFeature(enabled=secure, name="enrolled-keys"))


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


def _enabled(features: Mapping[str, Any], path: str, name: str) -> bool | None:
    """A KubeVirt FeatureState: None when absent, else its `enabled` (default true)."""
    if features.get(name) is None:
        return None
    state = s.mapping(features[name], f"{path}.{name}")
    return s.boolean(state.get("enabled"), f"{path}.{name}.enabled", default=True)


HYPERV_FLAGS = ("relaxed", "vapic", "vpindex", "runtime", "synic", "reset", "frequencies", "reenlightenment",
                "ipi", "evmcs")


def _hyperv(spec: Mapping[str, Any], path: str) -> domain_model.HyperV:
    """features.hyperv -> <hyperv mode='custom'>, one element per enlightenment given."""
    hyperv = domain_model.HyperV(mode="custom")
    for name in HYPERV_FLAGS:
        state = _enabled(spec, path, name)
        if state is not None:
            setattr(hyperv, name, state)
    hyperv.spinlocks = _enabled(spec, path, "spinlocks")
    if hyperv.spinlocks:
        retries = s.mapping(spec["spinlocks"], f"{path}.spinlocks").get("spinlocks")
        hyperv.spinlocks_retries = s.integer(retries, f"{path}.spinlocks.spinlocks", default=4096, minimum=4095,
                                             maximum=4294967295)
    hyperv.stimer = _enabled(spec, path, "synictimer")
    if hyperv.stimer:
        hyperv.stimer_direct = _enabled(s.mapping(spec["synictimer"], f"{path}.synictimer"),
                                        f"{path}.synictimer", "direct")
    hyperv.vendor_id = _enabled(spec, path, "vendorid")
    if hyperv.vendor_id:
        value = s.mapping(spec["vendorid"], f"{path}.vendorid").get("vendorid")
        hyperv.vendor_id_value = s.string(value, f"{path}.vendorid.vendorid", pattern=r"[A-Za-z0-9]{1,12}")
    hyperv.tlbflush = _enabled(spec, path, "tlbflush")
    return hyperv


def configure_features(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """acpi + apic (unless the spec disables them), smm, Hyper-V, KVM hiding, pvspinlock; a small TCG
    translation cache on TCG."""
    path = "spec.domain.features"
    features_spec = s.mapping(_domain(inputs.spec).get("features"), path)
    features = domain_model.Features()
    for name in ("acpi", "apic"):
        setattr(features, name, _enabled(features_spec, path, name) is not False)
    if features.apic and features_spec.get("apic") is not None:
        eoi = s.mapping(features_spec["apic"], f"{path}.apic").get("endOfInterrupt")
        if eoi is not None:
            features.apic_eoi = s.boolean(eoi, f"{path}.apic.endOfInterrupt", default=False)
    features.smm = _enabled(features_spec, path, "smm")
    if secure_boot(inputs.spec) and not features.smm:
        raise s.ConversionError(f"{path}.smm", "EFI Secure Boot needs SMM",
                                hint="set features.smm: {} or bootloader.efi.secureBoot: false")
    features.pvspinlock = _enabled(features_spec, path, "pvspinlock")
    if features_spec.get("kvm") is not None:
        hidden = s.mapping(features_spec["kvm"], f"{path}.kvm").get("hidden")
        if hidden is not None:
            features.kvm_hidden = s.boolean(hidden, f"{path}.kvm.hidden", default=False)
    if features_spec.get("hyperv") is not None:
        features.hyperv = _hyperv(s.mapping(features_spec["hyperv"], f"{path}.hyperv"), f"{path}.hyperv")
    if inputs.virt_type == "qemu" and inputs.tcg_tb_cache_mib is not None:
        features.tcg_tb_cache = s.integer(inputs.tcg_tb_cache_mib or tcg_tb_cache_mib(guest_memory_bytes(inputs.spec)),
                                          "inputs.tcg_tb_cache_mib", minimum=1, maximum=1 << 20)
        features.tcg_tb_cache_unit = "MiB"
    domain.features = features


# KubeVirt's timer names -> libvirt's; each takes these settings.
TIMERS = {"hpet": ("hpet", ("tickPolicy", "present")), "pit": ("pit", ("tickPolicy", "present")),
          "rtc": ("rtc", ("tickPolicy", "present", "track")), "kvm": ("kvmclock", ("present",)),
          "hyperv": ("hypervclock", ("present",))}
TICK_POLICIES = {"hpet": ("delay", "catchup", "merge", "discard"), "pit": ("delay", "catchup", "discard"),
                 "rtc": ("delay", "catchup")}


def configure_clock(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """UTC (with an offset), or the spec's timezone; the spec's timers, else virt-manager's tested x86
    defaults (catch-up RTC, delayed PIT, no HPET)."""
    path = "spec.domain.clock"
    clock_spec = s.mapping(_domain(inputs.spec).get("clock"), path)
    if "utc" in clock_spec and "timezone" in clock_spec:
        raise s.ConversionError(path, "set utc or timezone, not both")
    timezone = s.string(clock_spec.get("timezone"), f"{path}.timezone", default=None,
                        pattern=domain_model.Clock.timezone.pattern.pattern)
    offset = s.integer(s.mapping(clock_spec.get("utc"), f"{path}.utc").get("offsetSeconds"),
                       f"{path}.utc.offsetSeconds", default=None, minimum=-(2**31), maximum=2**31 - 1)
    if timezone:
        clock = domain_model.Clock(offset="timezone", timezone=timezone)
    elif offset:
        clock = domain_model.Clock(offset="variable", adjustment=offset, basis="utc")
    else:
        clock = domain_model.Clock(offset="utc")
    timers = s.mapping(clock_spec.get("timer"), f"{path}.timer")
    if not timers:
        clock.add(domain_model.Timer(name="rtc", tickpolicy="catchup"))
        clock.add(domain_model.Timer(name="pit", tickpolicy="delay"))
        clock.add(domain_model.Timer(name="hpet", present=False))
    for key, (libvirt_name, settings) in TIMERS.items():
        if timers.get(key) is None:
            continue
        timer_path = f"{path}.timer.{key}"
        timer_spec = s.mapping(timers[key], timer_path)
        timer = domain_model.Timer(name=libvirt_name,
                                   present=s.boolean(timer_spec.get("present"), f"{timer_path}.present", default=True))
        if "tickPolicy" in settings:
            timer.tickpolicy = s.string(timer_spec.get("tickPolicy"), f"{timer_path}.tickPolicy", default=None,
                                        choices=TICK_POLICIES[key])
        if "track" in settings:
            timer.track = s.string(timer_spec.get("track"), f"{timer_path}.track", default=None,
                                   choices=("guest", "wall"))
        clock.add(timer)
    domain.clock = clock


def configure_lifecycle(inputs: DomainInputs, domain: domain_model.Domain) -> None:
    """Power-off and crash end the domain (the handler decides about restarts); a guest reboot stays inside,
    unless rebootPolicy Terminate makes it end the VMI too."""
    policy = s.string(_domain(inputs.spec).get("rebootPolicy"), "spec.domain.rebootPolicy", default="Reboot",
                      choices=("Reboot", "Terminate"))
    domain.on_poweroff = "destroy"
    domain.on_reboot = "restart" if policy == "Reboot" else "destroy"
    domain.on_crash = "destroy"
