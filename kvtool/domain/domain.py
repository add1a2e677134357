"""<domain> and its non-device parts (os, cpu, features, clock, metadata).

The Domain class also holds the rules that span devices - unique target
names, unique boot orders, <os><boot dev> versus per-device <boot order> -
because only the whole document can check them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from kvtool.domain import xmlmodel
from kvtool.domain.devices import (
    Console,
    Controller,
    Disk,
    Input,
    Interface,
    MemBalloon,
    Rng,
    Serial,
    Sound,
    Vsock,
    Watchdog,
)
from kvtool.domain.xmlmodel import Child, Children, Flag, Int, Presence, Text

KVTOOL_NS = "https://kvtool.io/domain/v1"
# Written as xmlns:kvtool="..." instead of ElementTree's ns0; libvirt keeps metadata verbatim.
ET.register_namespace("kvtool", KVTOOL_NS)

DOMAIN_NAME = r"[A-Za-z0-9_.-]{1,200}"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
MAX_VCPUS = 255  # q35 without an IOMMU and x2APIC interrupt remapping stops here


class VMIMetadata(xmlmodel.XMLObject):
    """Which VMI this domain runs, so a handler can map a libvirt domain back without parsing its name."""

    TAG = "{" + KVTOOL_NS + "}vmi"

    namespace = Text("./@namespace")
    name = Text("./@name")
    uid = Text("./@uid")


class FirmwareFeature(xmlmodel.XMLObject):
    """A requirement for libvirt's firmware autoselection (secure-boot, enrolled-keys)."""

    TAG = "feature"

    enabled = Flag("./@enabled", required=True)
    name = Text("./@name", choices=("secure-boot", "enrolled-keys"), required=True)


class OS(xmlmodel.XMLObject):
    TAG = "os"

    firmware = Text("./@firmware", choices=("efi", "bios"), doc="libvirt picks a matching firmware descriptor")
    firmware_features = Children(FirmwareFeature, "./firmware")
    type = Text("./type", choices=("hvm",), required=True)
    arch = Text("./type/@arch", choices=("x86_64",))
    machine = Text("./type/@machine", pattern=r"[A-Za-z0-9_.-]{1,64}")
    kernel = Text("./kernel", pattern=xmlmodel.ABSOLUTE_PATH)
    initrd = Text("./initrd", pattern=xmlmodel.ABSOLUTE_PATH)
    cmdline = Text("./cmdline")
    boot_dev = Text("./boot/@dev", choices=("hd", "cdrom", "network"))
    bios_useserial = Flag("./bios/@useserial", doc="SeaBIOS writes to the serial console")
    smbios_mode = Text("./smbios/@mode", choices=("sysinfo",))

    def check(self) -> None:
        if self.kernel is None and (self.initrd is not None or self.cmdline is not None):
            raise xmlmodel.XMLModelError("OS: initrd and cmdline need a kernel")
        if self.firmware_features and self.firmware != "efi":
            raise xmlmodel.XMLModelError("OS: firmware features go with firmware efi")
        if self.bios_useserial is not None and self.firmware == "efi":
            raise xmlmodel.XMLModelError("OS: useserial is a BIOS setting")


class CPUFeature(xmlmodel.XMLObject):
    TAG = "feature"

    policy = Text("./@policy", choices=("force", "require", "optional", "disable", "forbid"), required=True)
    name = Text("./@name", pattern=r"[a-z0-9_.-]{1,32}", required=True)


class CPU(xmlmodel.XMLObject):
    TAG = "cpu"

    mode = Text("./@mode", choices=("custom", "host-model", "host-passthrough"))
    model = Text("./model", pattern=r"[A-Za-z0-9_.+-]{1,64}")
    model_fallback = Text("./model/@fallback", choices=("allow", "forbid"))
    sockets = Int("./topology/@sockets", minimum=1, maximum=MAX_VCPUS)
    cores = Int("./topology/@cores", minimum=1, maximum=MAX_VCPUS)
    threads = Int("./topology/@threads", minimum=1, maximum=MAX_VCPUS)
    features = Children(CPUFeature)

    def check(self) -> None:
        if self.model is not None and self.mode != "custom":
            raise xmlmodel.XMLModelError("CPU: a named model needs mode custom")


_ON_OFF = ("on", "off")


class HyperV(xmlmodel.XMLObject):
    """Hyper-V enlightenments (KubeVirt's features.hyperv): Windows guests run faster believing in them."""

    TAG = "hyperv"

    mode = Text("./@mode", choices=("custom",), required=True)
    relaxed = Flag("./relaxed/@state", words=_ON_OFF)
    vapic = Flag("./vapic/@state", words=_ON_OFF)
    spinlocks = Flag("./spinlocks/@state", words=_ON_OFF)
    spinlocks_retries = Int("./spinlocks/@retries", minimum=4095, maximum=4294967295)
    vpindex = Flag("./vpindex/@state", words=_ON_OFF)
    runtime = Flag("./runtime/@state", words=_ON_OFF)
    synic = Flag("./synic/@state", words=_ON_OFF)
    stimer = Flag("./stimer/@state", words=_ON_OFF)
    stimer_direct = Flag("./stimer/direct/@state", words=_ON_OFF)
    reset = Flag("./reset/@state", words=_ON_OFF)
    vendor_id = Flag("./vendor_id/@state", words=_ON_OFF)
    vendor_id_value = Text("./vendor_id/@value", pattern=r"[A-Za-z0-9]{1,12}")
    frequencies = Flag("./frequencies/@state", words=_ON_OFF)
    reenlightenment = Flag("./reenlightenment/@state", words=_ON_OFF)
    tlbflush = Flag("./tlbflush/@state", words=_ON_OFF)
    ipi = Flag("./ipi/@state", words=_ON_OFF)
    evmcs = Flag("./evmcs/@state", words=_ON_OFF)


class Features(xmlmodel.XMLObject):
    TAG = "features"

    acpi = Presence("./acpi")
    apic = Presence("./apic")
    apic_eoi = Flag("./apic/@eoi", words=_ON_OFF)
    hyperv = Child(HyperV)
    kvm_hidden = Flag("./kvm/hidden/@state", words=_ON_OFF)
    pvspinlock = Flag("./pvspinlock/@state", words=_ON_OFF)
    smm = Flag("./smm/@state", words=_ON_OFF)
    tcg_tb_cache = Int("./tcg/tb-cache", minimum=1, maximum=1 << 20, doc="TCG translation cache; QEMU's 1 GiB "
                       "default costs ~30 MB RSS per idle VM")
    tcg_tb_cache_unit = Text("./tcg/tb-cache/@unit", choices=("MiB",))


class Timer(xmlmodel.XMLObject):
    TAG = "timer"

    name = Text("./@name", choices=("rtc", "pit", "hpet", "kvmclock", "hypervclock"), required=True)
    track = Text("./@track", choices=("guest", "wall"))
    tickpolicy = Text("./@tickpolicy", choices=("catchup", "delay", "merge", "discard"))
    present = Flag("./@present")

    def check(self) -> None:
        if self.track is not None and self.name != "rtc":
            raise xmlmodel.XMLModelError(f"Timer: only rtc tracks guest or wall time, not {self.name}")


class Clock(xmlmodel.XMLObject):
    TAG = "clock"

    offset = Text("./@offset", choices=("utc", "timezone", "variable"), required=True)
    timezone = Text("./@timezone", pattern=r"[A-Za-z0-9_+-]{1,32}(/[A-Za-z0-9_+-]{1,32}){0,2}")
    adjustment = Int("./@adjustment", minimum=-(2**31), maximum=2**31 - 1, doc="seconds from basis")
    basis = Text("./@basis", choices=("utc",))
    timers = Children(Timer)

    def check(self) -> None:
        if (self.offset == "timezone") != (self.timezone is not None):
            raise xmlmodel.XMLModelError("Clock: a timezone goes with offset timezone, and only there")
        if (self.offset == "variable") != (self.adjustment is not None):
            raise xmlmodel.XMLModelError("Clock: an adjustment goes with offset variable, and only there")


SMBIOS_TEXT = r"[A-Za-z0-9 _.:/+-]{0,256}"


class SystemEntry(xmlmodel.XMLObject):
    TAG = "entry"

    name = Text("./@name", choices=("manufacturer", "product", "version", "serial", "uuid", "sku", "family"),
                required=True)
    value = Text(".", pattern=SMBIOS_TEXT)


class ChassisEntry(xmlmodel.XMLObject):
    TAG = "entry"

    name = Text("./@name", choices=("manufacturer", "version", "serial", "asset", "sku"), required=True)
    value = Text(".", pattern=SMBIOS_TEXT)


class Sysinfo(xmlmodel.XMLObject):
    """SMBIOS tables the guest reads (dmidecode): KubeVirt's firmware.serial/uuid and domain.chassis."""

    TAG = "sysinfo"

    type = Text("./@type", choices=("smbios",), required=True)
    system = Children(SystemEntry, "./system")
    chassis = Children(ChassisEntry, "./chassis")


_LIFECYCLE = ("destroy", "restart", "preserve", "rename-restart")


class Domain(xmlmodel.XMLObject):
    TAG = "domain"

    type = Text("./@type", choices=("qemu", "kvm"), required=True)
    name = Text("./name", pattern=DOMAIN_NAME, required=True)
    uuid = Text("./uuid", pattern=UUID, required=True)
    metadata = Child(VMIMetadata, "./metadata")
    memory = Int("./memory", minimum=1024, maximum=1 << 40, required=True)
    memory_unit = Text("./memory/@unit", choices=("KiB",), required=True)
    vcpu = Int("./vcpu", minimum=1, maximum=MAX_VCPUS, required=True)
    iothreads = Int("./iothreads", minimum=1, maximum=64)
    sysinfo = Child(Sysinfo)
    os = Child(OS)
    features = Child(Features)
    cpu = Child(CPU)
    clock = Child(Clock)
    on_poweroff = Text("./on_poweroff", choices=_LIFECYCLE)
    on_reboot = Text("./on_reboot", choices=_LIFECYCLE)
    on_crash = Text("./on_crash", choices=(*_LIFECYCLE, "coredump-destroy", "coredump-restart"))
    emulator = Text("./devices/emulator", pattern=xmlmodel.ABSOLUTE_PATH)
    disks = Children(Disk, "./devices")
    controllers = Children(Controller, "./devices")
    interfaces = Children(Interface, "./devices")
    serials = Children(Serial, "./devices")
    consoles = Children(Console, "./devices")
    inputs = Children(Input, "./devices")
    sounds = Children(Sound, "./devices")
    watchdogs = Children(Watchdog, "./devices")
    rngs = Children(Rng, "./devices")
    memballoon = Child(MemBalloon, "./devices")
    vsock = Child(Vsock, "./devices")

    def check(self) -> None:
        if self.os is None:
            raise xmlmodel.XMLModelError("Domain: <os> is required")
        cpu = self.cpu
        if (cpu is not None and None not in (cpu.sockets, cpu.cores, cpu.threads)
                and cpu.sockets * cpu.cores * cpu.threads != self.vcpu):
            raise xmlmodel.XMLModelError(f"Domain: vcpu {self.vcpu} is not sockets*cores*threads of <cpu>")
        _unique("disk target", [d.target_dev for d in self.disks])
        _unique("serial port", [s.target_port for s in self.serials])
        _unique("device alias", [d.alias for d in [*self.disks, *self.interfaces] if d.alias is not None])
        orders = [d.boot_order for d in [*self.disks, *self.interfaces] if d.boot_order is not None]
        _unique("boot order", orders)
        if orders and self.os.boot_dev is not None:
            raise xmlmodel.XMLModelError("Domain: <os><boot dev> and per-device boot order exclude each other")
        for console in self.consoles:
            if console.target_port not in {s.target_port for s in self.serials}:
                raise xmlmodel.XMLModelError(f"Domain: console on serial port {console.target_port}, which is absent")
        if any(d.target_bus == "scsi" for d in self.disks) and not any(c.type == "scsi" for c in self.controllers):
            raise xmlmodel.XMLModelError("Domain: scsi disks need a scsi controller")
        if any(i.bus == "usb" for i in self.inputs) and not any(
                c.type == "usb" and c.model != "none" for c in self.controllers):
            raise xmlmodel.XMLModelError("Domain: usb inputs need a usb controller")
        iothread = max((d.driver_iothread or 0 for d in self.disks), default=0)
        if iothread > (self.iothreads or 0):
            raise xmlmodel.XMLModelError(f"Domain: a disk uses iothread {iothread}, but there are {self.iothreads}")
        _unique("PCI address", [(a.domain, a.bus, a.slot, a.function) for a in
                                (d.address for d in [*self.disks, *self.interfaces]) if a is not None])
        features = self.features
        if self.os.firmware_features and any(f.name == "secure-boot" and f.enabled for f in self.os.firmware_features) \
                and not (features is not None and features.smm):
            raise xmlmodel.XMLModelError("Domain: secure boot needs <smm state='on'/>")


def _unique(what: str, values: list[object]) -> None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise xmlmodel.XMLModelError(f"Domain: {what} {value!r} is used twice")
        seen.add(value)
