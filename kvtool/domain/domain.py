"""<domain> and its non-device parts (os, cpu, features, clock, metadata).

The Domain class also holds the rules that span devices - unique target
names, unique boot orders, <os><boot dev> versus per-device <boot order> -
because only the whole document can check them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from kvtool.domain import xmlmodel
from kvtool.domain.devices import Console, Controller, Disk, Interface, MemBalloon, Rng, Serial
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


class OS(xmlmodel.XMLObject):
    TAG = "os"

    type = Text("./type", choices=("hvm",), required=True)
    arch = Text("./type/@arch", choices=("x86_64",))
    machine = Text("./type/@machine", pattern=r"[A-Za-z0-9_.-]{1,64}")
    kernel = Text("./kernel", pattern=xmlmodel.ABSOLUTE_PATH)
    initrd = Text("./initrd", pattern=xmlmodel.ABSOLUTE_PATH)
    cmdline = Text("./cmdline")
    boot_dev = Text("./boot/@dev", choices=("hd", "cdrom", "network"))

    def check(self) -> None:
        if self.kernel is None and (self.initrd is not None or self.cmdline is not None):
            raise xmlmodel.XMLModelError("OS: initrd and cmdline need a kernel")


class CPU(xmlmodel.XMLObject):
    TAG = "cpu"

    mode = Text("./@mode", choices=("custom", "host-model", "host-passthrough"))
    model = Text("./model", pattern=r"[A-Za-z0-9_.+-]{1,64}")
    model_fallback = Text("./model/@fallback", choices=("allow", "forbid"))
    sockets = Int("./topology/@sockets", minimum=1, maximum=MAX_VCPUS)
    cores = Int("./topology/@cores", minimum=1, maximum=MAX_VCPUS)
    threads = Int("./topology/@threads", minimum=1, maximum=MAX_VCPUS)

    def check(self) -> None:
        if self.model is not None and self.mode != "custom":
            raise xmlmodel.XMLModelError("CPU: a named model needs mode custom")


class Features(xmlmodel.XMLObject):
    TAG = "features"

    acpi = Presence("./acpi")
    apic = Presence("./apic")
    tcg_tb_cache = Int("./tcg/tb-cache", minimum=1, maximum=1 << 20, doc="TCG translation cache; QEMU's 1 GiB "
                       "default costs ~30 MB RSS per idle VM")
    tcg_tb_cache_unit = Text("./tcg/tb-cache/@unit", choices=("MiB",))


class Timer(xmlmodel.XMLObject):
    TAG = "timer"

    name = Text("./@name", choices=("rtc", "pit", "hpet"), required=True)
    tickpolicy = Text("./@tickpolicy", choices=("catchup", "delay"))
    present = Flag("./@present")


class Clock(xmlmodel.XMLObject):
    TAG = "clock"

    offset = Text("./@offset", choices=("utc", "timezone"), required=True)
    timezone = Text("./@timezone", pattern=r"[A-Za-z0-9_+-]{1,32}(/[A-Za-z0-9_+-]{1,32}){0,2}")
    timers = Children(Timer)

    def check(self) -> None:
        if (self.offset == "timezone") != (self.timezone is not None):
            raise xmlmodel.XMLModelError("Clock: a timezone goes with offset timezone, and only there")


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
    rngs = Children(Rng, "./devices")
    memballoon = Child(MemBalloon, "./devices")

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


def _unique(what: str, values: list[object]) -> None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise xmlmodel.XMLModelError(f"Domain: {what} {value!r} is used twice")
        seen.add(value)
