"""VMI spec -> domain XML: one test per configure step, golden files, bad input, and libvirt as the judge.

Every XML this file generates (goldens and hypothesis samples) is defined,
started, stopped and undefined on libvirt's test:///default driver and checked
against libvirt's RelaxNG schema (virt-xml-validate / xmllint). Regenerate the
goldens with KVTOOL_UPDATE_GOLDEN=1 after an intended change and review the diff.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import libvirt
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvtool import domain
from kvtool.domain import converter, devices, spec, xmlmodel
from kvtool.domain import domain as domain_model
from kvtool.domain.configure import compute, network, storage
from kvtool.domain.configure import devices as fixed_devices

GOLDEN = Path(__file__).parent / "golden" / "domain"
SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")
TOOLS_HINT = "virt-xml-validate and xmllint come from the Debian packages libvirt-clients and libxml2-utils"


# --- helpers -----------------------------------------------------------------------------------------------------
def load_inputs(data: Mapping[str, Any]) -> domain.DomainInputs:
    """A DomainInputs from its YAML form (the golden *.yaml files)."""
    data = dict(data)
    data["volumes"] = {k: domain.ResolvedVolume(Path(v["path"]), v["format"], v.get("readonly", False))
                       for k, v in (data.get("volumes") or {}).items()}
    data["interfaces"] = {k: domain.ResolvedInterface(v["tap"], v["mac"])
                          for k, v in (data.get("interfaces") or {}).items()}
    for key in ("kernel", "initrd", "serial_log"):
        if data.get(key) is not None:
            data[key] = Path(data[key])
    return domain.DomainInputs(**data)


def base_inputs(**changes: Any) -> domain.DomainInputs:
    """The smallest valid inputs; tests change one thing at a time."""
    values: dict[str, Any] = {
        "name": "vm", "uuid": "00000000-0000-4000-8000-000000000001",
        "spec": {"domain": {"memory": {"guest": "128Mi"}, "devices": {}}},
    }
    values.update(changes)
    return domain.DomainInputs(**values)


def with_spec(**domain_fields: Any) -> dict[str, Any]:
    return {"domain": {"memory": {"guest": "128Mi"}, **domain_fields}}


def run_step(step: Any, inputs: domain.DomainInputs) -> domain_model.Domain:
    dom = domain_model.Domain()
    step(inputs, dom)
    return dom


def xml_of(obj: xmlmodel.XMLObject) -> str:
    return ET.tostring(obj._element, encoding="unicode")


@pytest.fixture(scope="module")
def conn() -> Iterator[libvirt.virConnect]:
    libvirt.registerErrorHandler(lambda *a: None, None)
    connection = libvirt.open("test:///default")
    yield connection
    connection.close()


def libvirt_roundtrip(conn: libvirt.virConnect, xml: str) -> str:
    """Define, start, stop and undefine on the test driver; returns libvirt's XML of the running domain.

    libvirt adds defaults (addresses, controllers) but must keep what we said about identity and devices.
    """
    ours = domain.Domain.parse(xml)
    dom = conn.defineXML(xml)
    try:
        dom.create()
        live = dom.XMLDesc()
        dom.destroy()
    finally:
        dom.undefine()
    theirs = domain.Domain.parse(live)
    # libvirt sorts disks by bus and target, and names a running slirp NIC's host side itself.
    for get in (lambda d: (d.name, d.uuid, d.vcpu, d.memory, d.os.kernel, d.os.cmdline),
                lambda d: sorted((x.target_dev, x.source_file, x.device, x.readonly, x.boot_order) for x in d.disks),
                lambda d: [(x.type, x.mac, x.model, x.type == "user" or x.target_dev) for x in d.interfaces],
                lambda d: [(x.type, x.target_port) for x in d.serials]):
        assert get(theirs) == get(ours)
    return live


def require(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is not installed: {TOOLS_HINT}"
    return path


def schema_validate(paths: list[Path]) -> None:
    """libvirt's RelaxNG schema via xmllint, many files per call (virt-xml-validate does one per call)."""
    result = subprocess.run([require("xmllint"), "--noout", "--relaxng", str(SCHEMA), *map(str, paths)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"schema rejects the XML ({TOOLS_HINT}):\n{result.stderr[-3000:]}"


# --- the model ---------------------------------------------------------------------------------------------------
def test_model_orders_elements_and_attributes_by_declaration_not_by_assignment() -> None:
    a = devices.Disk(alias="ua-x", boot_order=1, target_bus="virtio", target_dev="vda", source_file="/a",
                     device="disk", type="file", driver_type="raw", driver_name="qemu")
    b = devices.Disk(type="file", device="disk", driver_name="qemu", driver_type="raw", source_file="/a",
                     target_dev="vda", target_bus="virtio", boot_order=1, alias="ua-x")
    assert a.to_xml() == b.to_xml()
    assert re.search(r"<disk type=\"file\" device=\"disk\">\s*<driver name=\"qemu\" type=\"raw\" />\s*<source",
                     a.to_xml())


def test_model_parse_keeps_unknown_xml_and_edits_in_place() -> None:
    xml = ("<disk type='file' device='disk' snapshot='no'><driver name='qemu' type='raw' io='native'/>"
           "<source file='/a'><seclabel model='dac' relabel='no'/></source><target dev='vda' bus='virtio'/>"
           "<iotune><total_bytes_sec>1000</total_bytes_sec></iotune></disk>")
    disk = devices.Disk.parse(xml)
    assert (disk.source_file, disk.driver_type, disk.readonly) == ("/a", "raw", None)
    disk.driver_cache = "none"
    disk.readonly = True
    out = disk.to_xml()
    for kept in ('snapshot="no"', 'io="native"', "<seclabel", "<total_bytes_sec>1000</total_bytes_sec>"):
        assert kept in out
    assert 'cache="none"' in out and "<readonly />" in out


def test_model_clearing_a_field_prunes_empty_elements() -> None:
    iface = devices.Interface(type="user", mac="02:00:00:00:00:01", boot_order=2)
    iface.boot_order = None
    assert "<boot" not in xml_of(iface)
    features = domain_model.Features(acpi=True, tcg_tb_cache=8, tcg_tb_cache_unit="MiB")
    features.tcg_tb_cache = None
    features.tcg_tb_cache_unit = None
    features.acpi = False
    assert xml_of(features) == "<features />"


@pytest.mark.parametrize(("make", "message"), [
    (lambda: devices.Disk(target_bus="ide"), "Disk.target_bus: 'ide' is not one of"),
    (lambda: devices.Disk(source_file="relative/path"), "Disk.source_file: 'relative/path' does not match"),
    (lambda: devices.Serial(target_port="0"), "Serial.target_port: expected an integer"),
    (lambda: domain_model.OS(cmdline="a\x00b"), "contains characters XML cannot carry"),
    (lambda: devices.Interface(target_dev="tap/0"), "does not match"),
    (lambda: domain_model.Domain(vcpu=0), "Domain.vcpu: 0 is below 1"),
    (lambda: devices.Disk(nonsense=1), "has no field 'nonsense'"),
])
def test_model_rejects_bad_values_when_set(make: Any, message: str) -> None:
    with pytest.raises((xmlmodel.XMLModelError, TypeError), match=re.escape(message)):
        make()


@pytest.mark.parametrize(("obj", "message"), [
    (devices.Disk(type="file", device="cdrom", source_file="/a", target_dev="sda", target_bus="sata"),
     "a cdrom must be readonly"),
    (devices.Disk(type="file", device="disk", source_file="/a", target_dev="sda", target_bus="virtio"),
     "does not fit bus"),
    (devices.Interface(type="ethernet", mac="02:00:00:00:00:01"), "needs an unmanaged target tap"),
    (devices.Serial(type="file", target_port=0), "source path goes with type file"),
    (devices.Controller(type="usb", index=0, model="virtio-scsi"), "does not fit type"),
    (domain_model.Clock(offset="timezone"), "timezone goes with offset timezone"),
    (domain_model.OS(type="hvm", initrd="/i"), "need a kernel"),
    (devices.Rng(model="virtio"), "Rng.backend_model is required"),
])
def test_model_validate_checks_each_class_rules(obj: xmlmodel.XMLObject, message: str) -> None:
    with pytest.raises(xmlmodel.XMLModelError, match=re.escape(message)):
        obj.validate()


def test_domain_validate_checks_cross_device_rules() -> None:
    dom = domain.to_domain(load_inputs(yaml.safe_load((GOLDEN / "storage.yaml").read_text())))
    dom.interfaces[0].boot_order = 1  # disks[4] already boots first
    with pytest.raises(xmlmodel.XMLModelError, match=r"boot order 1 is used twice"):
        dom.validate()
    dom.interfaces[0].boot_order = None
    dom.os.boot_dev = "hd"
    with pytest.raises(xmlmodel.XMLModelError, match=r"exclude each other"):
        dom.validate()
    dom.os.boot_dev = None
    dom.remove(dom.controllers[0])  # the virtio-scsi one
    with pytest.raises(xmlmodel.XMLModelError, match=r"scsi disks need a scsi controller"):
        dom.validate()


# --- one test per configure step ---------------------------------------------------------------------------------
def test_step_identity() -> None:
    inputs = base_inputs(name="ns_vm-1.x", uuid="4DEA22B3-1D52-D8F3-2516-782E98AB3FA0", virt_type="kvm")
    dom = run_step(compute.configure_identity, inputs)
    assert (dom.type, dom.name, dom.uuid) == ("kvm", "ns_vm-1.x", "4dea22b3-1d52-d8f3-2516-782e98ab3fa0")
    with pytest.raises(domain.ConversionError, match=r"^inputs.name: 'a/b' is not valid"):
        run_step(compute.configure_identity, base_inputs(name="a/b"))
    with pytest.raises(domain.ConversionError, match=r"^inputs.name: '..' is not a usable name"):
        run_step(compute.configure_identity, base_inputs(name=".."))
    with pytest.raises(domain.ConversionError, match=r"^inputs.uuid: 'nope' is not a UUID"):
        run_step(compute.configure_identity, base_inputs(uuid="nope"))


def test_step_metadata() -> None:
    dom = run_step(compute.configure_metadata, base_inputs(metadata={"uid": "u-1", "namespace": "ns", "name": 'a"<b'}))
    assert (dom.metadata.namespace, dom.metadata.name, dom.metadata.uid) == ("ns", 'a"<b', "u-1")
    assert 'name="a&quot;&lt;b"' in xml_of(dom)
    assert run_step(compute.configure_metadata, base_inputs()).metadata is None
    with pytest.raises(domain.ConversionError, match=r"inputs.metadata\['node'\]: unknown key"):
        run_step(compute.configure_metadata, base_inputs(metadata={"node": "x"}))


def test_step_cpu() -> None:
    dom = run_step(compute.configure_cpu, base_inputs(spec=with_spec(cpu={"sockets": 2, "cores": 3, "threads": 2})))
    assert (dom.vcpu, dom.cpu.sockets, dom.cpu.cores, dom.cpu.threads, dom.cpu.mode) == (12, 2, 3, 2, None)
    assert run_step(compute.configure_cpu, base_inputs()).vcpu == 1
    named = run_step(compute.configure_cpu, base_inputs(spec=with_spec(cpu={"model": "Nehalem"})))
    assert (named.cpu.mode, named.cpu.model, named.cpu.model_fallback) == ("custom", "Nehalem", "allow")
    with pytest.raises(domain.ConversionError, match=r"spec.domain.cpu.model: host-passthrough needs KVM"):
        run_step(compute.configure_cpu, base_inputs(spec=with_spec(cpu={"model": "host-passthrough"})))
    with pytest.raises(domain.ConversionError, match=r"spec.domain.cpu.cores: 0 is below the minimum 1"):
        run_step(compute.configure_cpu, base_inputs(spec=with_spec(cpu={"cores": 0})))
    with pytest.raises(domain.ConversionError, match=r"spec.domain.cpu: sockets\*cores\*threads = 512"):
        run_step(compute.configure_cpu, base_inputs(spec=with_spec(cpu={"sockets": 8, "cores": 8, "threads": 8})))


@pytest.mark.parametrize(("memory", "kib"), [
    ({"memory": {"guest": "1Gi"}}, 1 << 20), ({"memory": {"guest": "512M"}}, 500000),
    ({"memory": {"guest": "134217728"}}, 131072), ({"memory": {"guest": 134217728}}, 131072),
    ({"memory": {"guest": "1.5Gi"}}, 1572864), ({"memory": {"guest": "1e9"}}, 976563),
    ({"memory": {"guest": "1Mi"}}, 1024), ({"memory": {"guest": "2k"}, "resources": {}}, None),
    ({"resources": {"requests": {"memory": "256Mi"}}}, 262144),
    ({"memory": {"guest": "64Mi"}, "resources": {"requests": {"memory": "256Mi"}}}, 65536),
    ({"resources": {"limits": {"memory": "96Mi"}}}, 98304),
])
def test_step_memory(memory: dict[str, Any], kib: int | None) -> None:
    inputs = base_inputs(spec={"domain": memory})
    if kib is None:
        with pytest.raises(domain.ConversionError, match=r"^spec.domain.memory.guest: '2k' is less than 1Mi"):
            run_step(compute.configure_memory, inputs)
        return
    dom = run_step(compute.configure_memory, inputs)
    assert (dom.memory, dom.memory_unit) == (kib, "KiB")


def test_step_os() -> None:
    kernel_boot = {"kernelBoot": {"kernelArgs": "console=ttyS0 a=<b>&c", "container": {"image": "k"}}}
    dom = run_step(compute.configure_os, base_inputs(spec=with_spec(firmware=kernel_boot), kernel=Path("/k/vmlinuz")))
    assert (dom.os.kernel, dom.os.initrd, dom.os.cmdline, dom.os.boot_dev) == (
        "/k/vmlinuz", None, "console=ttyS0 a=<b>&c", None)
    assert "<cmdline>console=ttyS0 a=&lt;b&gt;&amp;c</cmdline>" in xml_of(dom)
    plain = run_step(compute.configure_os, base_inputs())
    assert (plain.os.type, plain.os.arch, plain.os.machine, plain.os.boot_dev) == ("hvm", "x86_64", "q35", "hd")
    ordered = base_inputs(spec=with_spec(devices={"disks": [{"name": "a", "bootOrder": 1}]}))
    assert run_step(compute.configure_os, ordered).os.boot_dev is None
    with pytest.raises(domain.ConversionError, match=r"^inputs.kernel: spec.domain.firmware.kernelBoot asks"):
        run_step(compute.configure_os, base_inputs(spec=with_spec(firmware=kernel_boot)))
    with pytest.raises(domain.ConversionError, match=r"^inputs.kernel: set, but the spec has no"):
        run_step(compute.configure_os, base_inputs(kernel=Path("/k")))
    with pytest.raises(domain.ConversionError, match=r"kernelArgs: .* is not valid"):
        bad_args = {"kernelBoot": {"kernelArgs": "a\nb", "container": {}}}
        run_step(compute.configure_os, base_inputs(spec=with_spec(firmware=bad_args), kernel=Path("/k")))
    def efi_spec(efi: dict[str, Any], memory: str = "256Mi") -> dict[str, Any]:
        return {"domain": {"memory": {"guest": memory}, "firmware": {"bootloader": {"efi": efi}}}}

    efi = run_step(compute.configure_os, base_inputs(spec=efi_spec({})))
    assert (efi.os.firmware, [(f.name, f.enabled) for f in efi.os.firmware_features]) == (
        "efi", [("secure-boot", True), ("enrolled-keys", True)])
    insecure = run_step(compute.configure_os, base_inputs(spec=efi_spec({"secureBoot": False})))
    assert [f.enabled for f in insecure.os.firmware_features] == [False, False]
    bios = run_step(compute.configure_os, base_inputs(spec=with_spec(
        firmware={"bootloader": {"bios": {"useSerial": True}}})))
    assert (bios.os.firmware, bios.os.bios_useserial) == (None, True)
    with pytest.raises(domain.ConversionError, match=r"efi.persistent: persistent EFI variables are not supported"):
        run_step(compute.configure_os, base_inputs(spec=efi_spec({"persistent": True})))
    with pytest.raises(domain.ConversionError, match=r"^spec.domain.memory.guest: EFI firmware \(OVMF\) needs"):
        run_step(compute.configure_os, base_inputs(spec=efi_spec({}, memory="128Mi")))
    with pytest.raises(domain.ConversionError, match=r"^spec.domain.firmware.bootloader: set bios or efi, not both"):
        run_step(compute.configure_os, base_inputs(spec=with_spec(firmware={"bootloader": {"efi": {}, "bios": {}}})))


def test_step_sysinfo() -> None:
    assert run_step(compute.configure_sysinfo, base_inputs()).sysinfo is None
    firmware = {"serial": "abc-123", "uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223"}
    inputs = base_inputs(spec=with_spec(firmware=firmware, chassis={"asset": "lab 42"}))
    dom = domain_model.Domain()
    compute.configure_identity(inputs, dom)
    compute.configure_sysinfo(inputs, dom)
    assert dom.uuid == firmware["uuid"], "firmware.uuid is the machine's UUID"
    assert [(e.name, e.value) for e in dom.sysinfo.system] == [("serial", "abc-123"), ("uuid", firmware["uuid"])]
    assert [(e.name, e.value) for e in dom.sysinfo.chassis] == [("asset", "lab 42")]
    compute.configure_os(inputs, dom)
    assert dom.os.smbios_mode == "sysinfo"
    with pytest.raises(domain.ConversionError, match=r"^spec.domain.chassis.sku: .* is not valid"):
        run_step(compute.configure_sysinfo, base_inputs(spec=with_spec(chassis={"sku": "<x>"})))


def test_step_features() -> None:
    dom = run_step(compute.configure_features, base_inputs())
    assert (dom.features.acpi, dom.features.apic, dom.features.tcg_tb_cache) == (True, True, 16)
    kvm = run_step(compute.configure_features, base_inputs(virt_type="kvm", spec=with_spec(
        features={"apic": {"enabled": False}})))
    assert (kvm.features.acpi, kvm.features.apic, kvm.features.tcg_tb_cache) == (True, None, None)
    assert run_step(compute.configure_features, base_inputs(tcg_tb_cache_mib=None)).features.tcg_tb_cache is None
    # By default TCG's translation cache grows with the guest (a distribution thrashes a busybox guest's 16 MiB).
    for memory, mib in (("1Gi", 128), ("16Gi", 256), ("64Mi", 16)):
        sized = run_step(compute.configure_features, base_inputs(spec=with_spec(memory={"guest": memory})))
        assert sized.features.tcg_tb_cache == mib, memory
    assert run_step(compute.configure_features, base_inputs(tcg_tb_cache_mib=64)).features.tcg_tb_cache == 64
    rich = run_step(compute.configure_features, base_inputs(spec=with_spec(features={
        "smm": {}, "pvspinlock": {"enabled": False}, "kvm": {"hidden": True}, "apic": {"endOfInterrupt": True},
        "hyperv": {"relaxed": {}, "spinlocks": {}, "synictimer": {"direct": {}}, "vendorid": {"vendorid": "abc"}}})))
    features = rich.features
    assert (features.smm, features.pvspinlock, features.kvm_hidden, features.apic_eoi) == (True, False, True, True)
    hyperv = features.hyperv
    assert (hyperv.relaxed, hyperv.spinlocks_retries, hyperv.stimer, hyperv.stimer_direct, hyperv.vendor_id_value,
            hyperv.vapic) == (True, 4096, True, True, "abc", None)
    with pytest.raises(domain.ConversionError, match=r"^spec.domain.features.smm: EFI Secure Boot needs SMM"):
        run_step(compute.configure_features, base_inputs(spec=with_spec(firmware={"bootloader": {"efi": {}}})))


def test_step_clock() -> None:
    dom = run_step(compute.configure_clock, base_inputs())
    assert dom.clock.offset == "utc"
    assert [(t.name, t.tickpolicy, t.present) for t in dom.clock.timers] == [
        ("rtc", "catchup", None), ("pit", "delay", None), ("hpet", None, False)]
    tz = run_step(compute.configure_clock, base_inputs(spec=with_spec(clock={"timezone": "America/New_York"})))
    assert (tz.clock.offset, tz.clock.timezone) == ("timezone", "America/New_York")
    with pytest.raises(domain.ConversionError, match=r"spec.domain.clock.timezone: '../etc' is not valid"):
        run_step(compute.configure_clock, base_inputs(spec=with_spec(clock={"timezone": "../etc"})))
    offset = run_step(compute.configure_clock, base_inputs(spec=with_spec(clock={
        "utc": {"offsetSeconds": -60}, "timer": {"kvm": {}, "rtc": {"track": "wall"}, "hpet": {"present": False}}})))
    assert (offset.clock.offset, offset.clock.adjustment, offset.clock.basis) == ("variable", -60, "utc")
    assert [(t.name, t.track, t.present) for t in offset.clock.timers] == [
        ("hpet", None, False), ("rtc", "wall", True), ("kvmclock", None, True)], "the spec's timers, no defaults"
    with pytest.raises(domain.ConversionError, match=r"timer.pit.tickPolicy: 'merge' is not one of"):
        pit = {"timer": {"pit": {"tickPolicy": "merge"}}}
        run_step(compute.configure_clock, base_inputs(spec=with_spec(clock=pit)))


def test_step_lifecycle() -> None:
    dom = run_step(compute.configure_lifecycle, base_inputs())
    assert (dom.on_poweroff, dom.on_reboot, dom.on_crash) == ("destroy", "restart", "destroy")
    terminate = run_step(compute.configure_lifecycle, base_inputs(spec=with_spec(rebootPolicy="Terminate")))
    assert terminate.on_reboot == "destroy"


def test_step_emulator() -> None:
    assert run_step(fixed_devices.configure_emulator, base_inputs()).emulator is None
    dom = run_step(fixed_devices.configure_emulator, base_inputs(emulator="/usr/bin/qemu-system-x86_64"))
    assert dom.emulator == "/usr/bin/qemu-system-x86_64"
    with pytest.raises(domain.ConversionError, match=r"^inputs.emulator"):
        run_step(fixed_devices.configure_emulator, base_inputs(emulator="qemu"))


def _disk_inputs(disks: list[dict[str, Any]], **changes: Any) -> domain.DomainInputs:
    names = [d["name"] for d in disks]
    values: dict[str, Any] = {
        "spec": {**with_spec(devices={"disks": disks}), "volumes": [{"name": n, "emptyDisk": {}} for n in names]},
        "volumes": {n: domain.ResolvedVolume(Path(f"/v/{n}.qcow2"), "qcow2") for n in names}}
    return base_inputs(**{**values, **changes})


def test_step_disks() -> None:
    dom = run_step(storage.configure_disks, _disk_inputs([
        {"name": "a"}, {"name": "b", "disk": {"bus": "sata"}}, {"name": "c", "cdrom": {"bus": "scsi"}},
        {"name": "d", "disk": {"bus": "virtio"}, "bootOrder": 4, "serial": "S1", "cache": "none"}]))
    got = [(d.device, d.target_dev, d.target_bus, d.readonly, d.driver_discard, d.alias) for d in dom.disks]
    assert got == [("disk", "vda", "virtio", None, "unmap", "ua-disk-a"),
                   ("disk", "sda", "sata", None, "unmap", "ua-disk-b"),
                   ("cdrom", "sdb", "scsi", True, None, "ua-disk-c"),
                   ("disk", "vdb", "virtio", None, "unmap", "ua-disk-d")]
    assert (dom.disks[3].boot_order, dom.disks[3].serial, dom.disks[3].driver_cache) == (4, "S1", "none")
    assert dom.disks[0].driver_cache == "writeback"
    assert [(c.type, c.model) for c in dom.controllers] == [("scsi", "virtio-scsi")]
    assert storage.disk_target("vd", 25) == "vdz" and storage.disk_target("vd", 26) == "vdaa"
    assert storage.disk_target("sd", 701) == "sdzz" and storage.disk_target("sd", 702) == "sdaaa"
    many = run_step(storage.configure_disks, _disk_inputs([{"name": f"d{i}"} for i in range(28)]))
    assert [d.target_dev for d in many.disks][-3:] == ["vdz", "vdaa", "vdab"]
    assert not many.controllers


def test_step_controllers() -> None:
    dom = run_step(fixed_devices.configure_controllers, base_inputs())
    assert [(c.type, c.index, c.model) for c in dom.controllers] == [("usb", 0, "none")]


def test_step_interfaces() -> None:
    spec_ = {**with_spec(devices={"interfaces": [
        {"name": "a", "masquerade": {}, "macAddress": "02:00:00:00:00:0A"},
        {"name": "b", "bridge": {}, "model": "e1000", "bootOrder": 2}]}),
        "networks": [{"name": "a", "pod": {}}, {"name": "b", "pod": {}}]}
    dom = run_step(network.configure_interfaces, base_inputs(spec=spec_, interfaces={
        "a": domain.ResolvedInterface("tap-a", "02:00:00:00:00:0a"),
        "b": domain.ResolvedInterface(None, "02:00:00:00:00:0b")}))
    got = [(i.type, i.mac, i.target_dev, i.target_managed, i.model, i.boot_order, i.alias) for i in dom.interfaces]
    assert got == [("ethernet", "02:00:00:00:00:0a", "tap-a", False, "virtio", None, "ua-net-a"),
                   ("user", "02:00:00:00:00:0b", None, None, "e1000", 2, "ua-net-b")]
    with pytest.raises(domain.ConversionError, match=r"^inputs.interfaces\['a'\].mac: '02:00:00:00:00:0b' differs"):
        run_step(network.configure_interfaces, base_inputs(spec=spec_, interfaces={
            "a": domain.ResolvedInterface("t", "02:00:00:00:00:0b"),
            "b": domain.ResolvedInterface(None, "02:00:00:00:00:0b")}))


def test_step_serial() -> None:
    log = Path("/var/log/c.log")
    dom = run_step(fixed_devices.configure_serial_console, base_inputs(serial_log=log))
    assert [(s.type, s.source_path, s.source_append, s.target_port) for s in dom.serials] == [
        ("file", "/var/log/c.log", True, 0)]
    assert [(c.type, c.source_path, c.target_type, c.target_port) for c in dom.consoles] == [
        ("file", "/var/log/c.log", "serial", 0)]
    pty = run_step(fixed_devices.configure_serial_console, base_inputs(serial_log=log, console_pty=True))
    assert [(s.type, s.log_file, s.log_append) for s in pty.serials] == [("pty", "/var/log/c.log", True)]
    assert [c.type for c in pty.consoles] == ["pty"]
    assert [s.type for s in run_step(fixed_devices.configure_serial_console, base_inputs()).serials] == ["pty"]
    off = base_inputs(serial_log=log, spec=with_spec(devices={"autoattachSerialConsole": False}))
    dom = run_step(fixed_devices.configure_serial_console, off)
    assert (dom.serials, dom.consoles) == ([], [])


def test_step_rng() -> None:
    dom = run_step(fixed_devices.configure_rng, base_inputs())
    assert [(r.model, r.backend_model, r.backend) for r in dom.rngs] == [("virtio", "random", "/dev/urandom")]


def test_step_memballoon() -> None:
    assert run_step(fixed_devices.configure_memballoon, base_inputs()).memballoon.model == "none"
    asked = base_inputs(spec=with_spec(devices={"autoattachMemBalloon": True, "useVirtioTransitional": True}))
    assert run_step(fixed_devices.configure_memballoon, asked).memballoon.model == "virtio-transitional"


def test_step_inputs() -> None:
    assert run_step(fixed_devices.configure_inputs, base_inputs()).inputs == []
    listed = base_inputs(spec=with_spec(devices={"inputs": [{"name": "t", "type": "tablet"}],
                                                 "autoattachInputDevice": True}))
    dom = run_step(fixed_devices.configure_inputs, listed)
    assert [(i.type, i.bus, i.alias) for i in dom.inputs] == [("tablet", "usb", "ua-input-t")]
    fixed_devices.configure_controllers(listed, dom)
    assert [(c.type, c.model) for c in dom.controllers] == [("usb", "qemu-xhci")], "a USB tablet needs USB"
    auto_inputs = base_inputs(spec=with_spec(devices={"autoattachInputDevice": True}))
    auto = run_step(fixed_devices.configure_inputs, auto_inputs)
    assert [(i.type, i.bus) for i in auto.inputs] == [("tablet", "virtio")]
    with pytest.raises(domain.ConversionError, match=r"inputs\[0\].bus: 'ps2' is not one of"):
        run_step(fixed_devices.configure_inputs, base_inputs(spec=with_spec(
            devices={"inputs": [{"name": "t", "type": "tablet", "bus": "ps2"}]})))


def test_step_watchdog() -> None:
    assert run_step(fixed_devices.configure_watchdog, base_inputs()).watchdogs == []
    dom = run_step(fixed_devices.configure_watchdog, base_inputs(spec=with_spec(
        devices={"watchdog": {"name": "w", "i6300esb": {}}})))
    assert [(w.model, w.action) for w in dom.watchdogs] == [("i6300esb", "reset")], "KubeVirt's default action"
    with pytest.raises(domain.ConversionError, match=r"watchdog.diag288: this watchdog model is not supported"):
        run_step(fixed_devices.configure_watchdog, base_inputs(spec=with_spec(
            devices={"watchdog": {"name": "w", "diag288": {}}})))


def test_step_sound() -> None:
    dom = run_step(fixed_devices.configure_sound, base_inputs(spec=with_spec(devices={"sound": {"name": "s"}})))
    assert [s.model for s in dom.sounds] == ["ich9"]
    assert run_step(fixed_devices.configure_sound, base_inputs()).sounds == []


def test_step_vsock() -> None:
    assert run_step(fixed_devices.configure_vsock, base_inputs()).vsock is None
    dom = run_step(fixed_devices.configure_vsock, base_inputs(spec=with_spec(devices={"autoattachVSOCK": True})))
    assert (dom.vsock.model, dom.vsock.cid_auto) == ("virtio", True)


def test_every_step_has_a_unit_test() -> None:
    names = {name for name, _ in converter.STEPS}
    tested = {name.removeprefix("test_step_") for name in globals() if name.startswith("test_step_")}
    assert names == tested, f"steps without a test_step_<name>: {sorted(names - tested)}"


# --- bad input: ConversionError with the field path --------------------------------------------------------------
def _iface_inputs(iface: dict[str, Any], resolved: domain.ResolvedInterface | None = None) -> domain.DomainInputs:
    return base_inputs(spec={**with_spec(devices={"interfaces": [iface]}), "networks": [{"name": "n", "pod": {}}]},
                       interfaces={"n": resolved or domain.ResolvedInterface("tap0", "02:00:00:00:00:01")})


@pytest.mark.parametrize(("inputs", "message"), [
    (base_inputs(spec={"domain": {"cpu": {"cores": 1}}}), "spec.domain.memory.guest: no guest memory given"),
    (base_inputs(spec={"domain": {"memory": {"guest": "12Xi"}}}), "spec.domain.memory.guest: '12Xi' is not a quantity"),
    (base_inputs(spec={"domain": {"resources": {"requests": {"memory": "-1Gi"}}}}),
     "spec.domain.resources.requests.memory: '-1Gi' is negative"),
    (base_inputs(spec={"domain": {"memory": {"guest": 0.5}}}), "spec.domain.memory.guest: 0.5 is not a quantity"),
    (base_inputs(spec={"domain": {"memory": {"guest": "2Ei"}}}), "spec.domain.memory.guest: '2Ei' is more than 1Pi"),
    (base_inputs(spec={"domain": []}), "spec.domain: expected an object, got list"),
    (dataclasses.replace(_disk_inputs([{"name": "a"}]), spec=with_spec(devices={"disks": [{"name": "a"}]})),
     "spec.domain.devices.disks[0].name: no volume named 'a' in spec.volumes"),
    (_disk_inputs([{"name": "a"}], volumes={}), "inputs.volumes['a']: the launcher resolved no file"),
    (_disk_inputs([{"name": "a"}], volumes={"a": domain.ResolvedVolume(Path("rel.img"), "raw")}),
     "inputs.volumes['a'].path: 'rel.img' is not an absolute path"),
    (_disk_inputs([{"name": "a"}], volumes={"a": domain.ResolvedVolume(Path("/a"), "vmdk")}),
     "inputs.volumes['a'].format: 'vmdk' is not one of qcow2, raw"),
    (_disk_inputs([{"name": "a", "disk": {}, "cdrom": {}}]),
     "spec.domain.devices.disks[0]: needs exactly one disk type"),
    (_disk_inputs([{"name": "a", "lun": {}}]), "spec.domain.devices.disks[0].lun: this disk type is not supported"),
    (_disk_inputs([{"name": "a", "cdrom": {"bus": "virtio"}}]),
     "disks[0].cdrom.bus: 'virtio' is not one of sata, scsi"),
    (_disk_inputs([{"name": "a", "cdrom": {"readonly": False}}]), "disks[0].cdrom.readonly: a cdrom is always"),
    (_disk_inputs([{"name": "a", "disk": {"bus": "ide"}}]), "disks[0].disk.bus: 'ide' is not one of virtio, sata"),
    (_disk_inputs([{"name": "a", "bootOrder": 1}, {"name": "b", "bootOrder": 1}]),
     "disks[1].bootOrder: 1 is already used by spec.domain.devices.disks[0]"),
    (_disk_inputs([{"name": "a", "bootOrder": 0}]), "disks[0].bootOrder: 0 is below the minimum 1"),
    (_disk_inputs([{"name": "a", "serial": "x y"}]), "disks[0].serial: 'x y' is not valid"),
    (_disk_inputs([{"name": "A_b"}]), "spec.volumes[0].name: 'A_b' is not valid"),
    (_disk_inputs([{"name": "a"}, {"name": "a"}]), "spec.volumes[1].name: 'a' is already used by spec.volumes[0]"),
    (dataclasses.replace(_disk_inputs([{"name": "a"}]), spec={
        **with_spec(devices={"disks": [{"name": "a"}, {"name": "a"}]}), "volumes": [{"name": "a", "emptyDisk": {}}]}),
     "spec.domain.devices.disks[1].name: 'a' is already used by spec.domain.devices.disks[0]"),
    (dataclasses.replace(_iface_inputs({"name": "n", "bridge": {}}), spec={
        **with_spec(devices={"interfaces": [{"name": "n", "bridge": {}}] * 2}),
        "networks": [{"name": "n", "pod": {}}]}),
     "spec.domain.devices.interfaces[1].name: 'n' is already used by spec.domain.devices.interfaces[0]"),
    (base_inputs(spec={**with_spec(devices={"interfaces": [{"name": "n", "bridge": {}}]}),
                       "networks": [{"name": "n", "pod": {}}] * 2}),
     "spec.networks[1].name: 'n' is already used by spec.networks[0]"),
    (_iface_inputs({"name": "n", "masquerade": {}, "bridge": {}}),
     "interfaces[0]: needs exactly one binding (masquerade, bridge), found: masquerade, bridge"),
    (_iface_inputs({"name": "n"}), "interfaces[0]: needs exactly one binding (masquerade, bridge), found: none"),
    (_iface_inputs({"name": "n", "sriov": {}}), "interfaces[0].sriov: this binding is not supported"),
    (_iface_inputs({"name": "n", "bridge": {}, "macAddress": "02:00:00:00:00"}), "interfaces[0].macAddress: "
     "'02:00:00:00:00' is not valid"),
    (_iface_inputs({"name": "n", "bridge": {}, "macAddress": "01:00:5e:00:00:01"}), "interfaces[0].macAddress: "
     "'01:00:5e:00:00:01' is a multicast address"),
    (_iface_inputs({"name": "n", "bridge": {}}, domain.ResolvedInterface("tap/0", "02:00:00:00:00:01")),
     "inputs.interfaces['n'].tap: 'tap/0' is not valid"),
    (_iface_inputs({"name": "n", "bridge": {}}, domain.ResolvedInterface("a-tap-name-too-long", "02:00:00:00:00:01")),
     "inputs.interfaces['n'].tap: 'a-tap-name-too-long' is not valid"),
    (_iface_inputs({"name": "n", "bridge": {}}, domain.ResolvedInterface("t", "ff:ff:ff:ff:ff:ff")),
     "inputs.interfaces['n'].mac: 'ff:ff:ff:ff:ff:ff' is a multicast address"),
    (_iface_inputs({"name": "x", "bridge": {}}), "interfaces[0].name: no network named 'x' in spec.networks"),
    (_iface_inputs({"name": "n", "bridge": {}, "model": "ne2k"}), "interfaces[0].model: 'ne2k' is not one of"),
    (base_inputs(serial_log=Path("log.txt")), "inputs.serial_log: 'log.txt' is not valid"),
    (base_inputs(spec={**with_spec(), "volumes": [{"name": "v", "emptyDisk": {}, "hostDisk": {}}]}),
     "spec.volumes[0]: needs exactly one volume source"),
    (base_inputs(spec={**with_spec(), "networks": [{"name": "n", "multus": {}}]}),
     "spec.networks[0].multus: this network source is not supported"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_names_the_field(inputs: domain.DomainInputs, message: str) -> None:
    with pytest.raises(domain.ConversionError) as caught:
        domain.to_domain(inputs)
    assert message in str(caught.value)
    assert str(caught.value).split(":")[0] == caught.value.path


# --- goldens, checked by libvirt --------------------------------------------------------------------------------
GOLDEN_INPUTS = sorted(GOLDEN.glob("*.yaml"))


def assert_golden(expected: Path, xml: str) -> None:
    """Compare with the golden file; KVTOOL_UPDATE_GOLDEN=1 rewrites it instead (review the git diff)."""
    if os.environ.get("KVTOOL_UPDATE_GOLDEN") == "1":
        assert not os.environ.get("CI"), "KVTOOL_UPDATE_GOLDEN is refused under CI: goldens are reviewed, not rewritten"
        expected.write_text(xml)
    assert expected.exists(), f"no golden {expected.name}; run with KVTOOL_UPDATE_GOLDEN=1 and review it"
    assert xml == expected.read_text(), f"output differs from {expected.name} (KVTOOL_UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("source", GOLDEN_INPUTS, ids=lambda p: p.stem)
def test_golden(source: Path, conn: libvirt.virConnect) -> None:
    xml = domain.domain_xml(load_inputs(yaml.safe_load(source.read_text())))
    expected = source.with_suffix(".xml")
    assert_golden(expected, xml)
    libvirt_roundtrip(conn, xml)
    result = subprocess.run([require("virt-xml-validate"), str(expected), "domain"], capture_output=True, text=True)
    assert result.returncode == 0, f"{result.stdout}{result.stderr} ({TOOLS_HINT})"
    assert domain.Domain.parse(xml).to_xml() == xml  # parse + write back is lossless


def test_goldens_cover_every_declared_field() -> None:
    """Like virtinst's property check: a declared field nothing ever sets is dead or untested code."""
    seen: dict[type, set[str]] = {}
    for source in GOLDEN_INPUTS:
        for obj in domain.to_domain(load_inputs(yaml.safe_load(source.read_text()))).walk():
            seen.setdefault(type(obj), set()).update(obj.set_fields())
    for cls in xmlmodel.all_classes():
        if cls.__module__.startswith("kvtool.domain"):
            missing = set(cls._FIELDS) - seen.get(cls, set())
            assert not missing, f"{cls.__name__} fields no golden sets: {sorted(missing)}"


def test_golden_typical_spec_keeps_secrets_and_ignored_fields_out() -> None:
    xml = (GOLDEN / "kernel-boot.xml").read_text()
    for absent in ("not-in-the-xml", "node-1", "<graphics", "<video"):
        assert absent not in xml


# --- hypothesis: any valid spec gives XML libvirt accepts --------------------------------------------------------
_names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)


@st.composite
def valid_inputs(draw: st.DrawFn) -> domain.DomainInputs:
    disk_names = draw(st.lists(_names, max_size=7, unique=True))
    iface_names = draw(st.lists(_names, max_size=3, unique=True))
    orders = iter(draw(st.permutations(range(1, 1 + len(disk_names) + len(iface_names)))))
    disks, volumes, resolved = [], [], {}
    for name in disk_names:
        kind = draw(st.sampled_from(["disk", "cdrom", None]))
        entry: dict[str, Any] = {"name": name}
        if kind == "disk":
            entry["disk"] = {"bus": draw(st.sampled_from(["virtio", "sata", "scsi"])),
                             "readonly": draw(st.booleans())}
        elif kind == "cdrom":
            entry["cdrom"] = {"bus": draw(st.sampled_from(["sata", "scsi"]))}
        if draw(st.booleans()):
            entry["bootOrder"] = next(orders)
        disks.append(entry)
        volumes.append({"name": name, draw(st.sampled_from(storage.VOLUME_SOURCES)): {}})
        resolved[name] = domain.ResolvedVolume(Path("/v") / name, draw(st.sampled_from(["qcow2", "raw"])),
                                               draw(st.booleans()))
    interfaces, taps = [], {}
    for i, name in enumerate(iface_names):
        iface = {"name": name, draw(st.sampled_from(["masquerade", "bridge"])): {},
                 "model": draw(st.sampled_from(["virtio", "e1000", "rtl8139"]))}
        if draw(st.booleans()):
            iface["bootOrder"] = next(orders)
        interfaces.append(iface)
        taps[name] = domain.ResolvedInterface(draw(st.sampled_from([f"tap{i}", None])), f"02:00:00:00:00:{i:02x}")
    kernel = draw(st.booleans())
    memory = draw(st.sampled_from(["Mi", "Gi", "M", ""]))
    amount = draw(st.integers(1, 4)) * (1 if memory in ("Gi",) else 64 if memory != "" else 1 << 26)
    args = draw(st.text(st.characters(max_codepoint=0x2FF, exclude_categories=["Cc"]), max_size=40))
    spec_ = {"domain": {
        "cpu": {k: draw(st.integers(1, 3)) for k in draw(st.sets(st.sampled_from(["sockets", "cores", "threads"])))},
        "memory": {"guest": f"{amount}{memory}"},
        "firmware": {"kernelBoot": {"kernelArgs": args, "container": {}}} if kernel else {},
        "devices": {"disks": disks, "interfaces": interfaces,
                    "autoattachSerialConsole": draw(st.booleans())}},
        "volumes": volumes, "networks": [{"name": n, "pod": {}} for n in iface_names]}
    return domain.DomainInputs(
        name=draw(st.from_regex(domain_model.DOMAIN_NAME, fullmatch=True).filter(lambda n: n not in (".", ".."))),
        uuid=str(draw(st.uuids())),
        spec=spec_, volumes=resolved, interfaces=taps, kernel=Path("/k/vmlinuz") if kernel else None,
        serial_log=draw(st.sampled_from([None, Path("/log/console.log")])), console_pty=draw(st.booleans()),
        virt_type=draw(st.sampled_from(["qemu", "kvm"])), tcg_tb_cache_mib=draw(st.sampled_from([None, 1, 16])),
        metadata=draw(st.dictionaries(st.sampled_from(compute.METADATA_KEYS), st.text(max_size=10).filter(
            lambda t: not re.search(r"[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]", t)))))


def test_generated_specs_are_accepted_by_libvirt(conn: libvirt.virConnect, tmp_path: Path) -> None:
    written: list[Path] = []

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow],
              database=None, derandomize=True)
    @given(valid_inputs())
    def check(inputs: domain.DomainInputs) -> None:
        xml = domain.domain_xml(inputs)
        live = libvirt_roundtrip(conn, xml)
        assert live.count("<disk ") == len(inputs.spec["domain"]["devices"]["disks"])
        assert domain.Domain.parse(xml).to_xml() == xml
        path = tmp_path / f"{len(written)}.xml"
        path.write_text(xml)
        written.append(path)

    check()
    assert len(written) >= 50
    schema_validate(written)


QUANTITY_SUFFIXES = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60,
                     "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "": 1}


@given(st.integers(0, 1 << 40), st.sampled_from(sorted(QUANTITY_SUFFIXES)))
def test_quantity_suffixes(number: int, suffix: str) -> None:
    assert spec.quantity_bytes(f"{number}{suffix}", "q") == number * QUANTITY_SUFFIXES[suffix]


def test_quantities_are_read_as_kubernetes_reads_them() -> None:
    """One parser (kvtool.api.quantity) for plan and domain: `K` is not a suffix, `m` is milli (rounded up)."""
    assert spec.quantity_bytes("1500m", "q") == 2 and spec.quantity_bytes("1.5Gi", "q") == 3 << 29
    for bad in ("1K", "-1Mi", "1 Mi", True, 1.5):
        with pytest.raises(spec.ConversionError):
            spec.quantity_bytes(bad, "q")
