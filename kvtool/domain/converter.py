"""VMI spec -> libvirt Domain, as an ordered list of small configure steps (KubeVirt's converter, one concern each).

The launcher resolves everything that touches the host first - image files,
taps, MACs, kernel paths - and passes them in `DomainInputs`; this module is
pure: same inputs, same XML, no I/O. Each step reads the spec only through
kvtool.domain.spec, so every error names the offending field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from kvtool.domain import domain as domain_model
from kvtool.domain.configure import compute, devices, network, storage
from kvtool.domain.spec import ConversionError

__all__ = ["STEPS", "ConversionError", "DomainInputs", "ResolvedInterface", "ResolvedVolume", "domain_xml",
           "to_domain"]


@dataclass(frozen=True)
class ResolvedVolume:
    """What the launcher made of one spec volume: a file to attach."""

    path: Path  # a file (qcow2 overlay, raw image, ISO); must be absolute
    format: str  # "qcow2" | "raw"
    readonly: bool = False


@dataclass(frozen=True)
class ResolvedInterface:
    """What the launcher made of one spec interface."""

    tap: str | None  # pre-created tap -> <interface type='ethernet'>; None -> slirp (tests/dev only)
    mac: str  # final MAC (the launcher generates one when the spec has none)


@dataclass(frozen=True)
class DomainInputs:
    """Everything the conversion needs: the VMI spec plus what the launcher resolved on the host."""

    name: str  # libvirt domain name, e.g. "default_vm-1"
    uuid: str  # the VMI's metadata.uid
    spec: Mapping[str, Any]
    volumes: Mapping[str, ResolvedVolume] = field(default_factory=lambda: MappingProxyType({}))
    interfaces: Mapping[str, ResolvedInterface] = field(default_factory=lambda: MappingProxyType({}))
    kernel: Path | None = None
    initrd: Path | None = None
    serial_log: Path | None = None  # ttyS0 appended to this file (the console log)
    virt_type: str = "qemu"  # "qemu" (TCG) or "kvm"
    emulator: str | None = None
    tcg_tb_cache_mib: int | None = 0  # 0: sized from the guest's memory (compute.tcg_tb_cache_mib); None: QEMU's
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # With serial_log: False -> <serial type='file'> (only the log); True -> a pty whose output is also
    # appended to serial_log via <log>, so `virsh console` works too.
    console_pty: bool = False


Step = Callable[[DomainInputs, domain_model.Domain], None]

# Order matters where a step reads what an earlier one wrote (sysinfo reads identity's UUID, os reads whether
# there is a sysinfo, controllers read the disks and inputs) and for readability of the code path; element
# order in the XML comes from the model's declarations.
STEPS: tuple[tuple[str, Step], ...] = (
    ("identity", compute.configure_identity),
    ("metadata", compute.configure_metadata),
    ("sysinfo", compute.configure_sysinfo),
    ("cpu", compute.configure_cpu),
    ("memory", compute.configure_memory),
    ("os", compute.configure_os),
    ("features", compute.configure_features),
    ("clock", compute.configure_clock),
    ("lifecycle", compute.configure_lifecycle),
    ("emulator", devices.configure_emulator),
    ("disks", storage.configure_disks),
    ("inputs", devices.configure_inputs),
    ("controllers", devices.configure_controllers),
    ("interfaces", network.configure_interfaces),
    ("serial", devices.configure_serial_console),
    ("watchdog", devices.configure_watchdog),
    ("sound", devices.configure_sound),
    ("rng", devices.configure_rng),
    ("memballoon", devices.configure_memballoon),
    ("vsock", devices.configure_vsock),
)


def to_domain(inputs: DomainInputs) -> domain_model.Domain:
    """Run every configure step on an empty Domain, then check the cross-device rules."""
    domain = domain_model.Domain()
    for _name, step in STEPS:
        step(inputs, domain)
    domain.validate()
    return domain


def domain_xml(inputs: DomainInputs) -> str:
    return to_domain(inputs).to_xml()
