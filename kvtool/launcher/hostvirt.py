"""What this node can run: KVM where hardware virtualization really works, else TCG.

Kept apart from the libvirt side (domain.py) so the launcher can ask before it pays libvirt's import:
the capability cache it seeds for libvirtd depends on the answer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path


def detect_virt_type(dev_kvm: Path = Path("/dev/kvm"), cpuinfo: Path = Path("/proc/cpuinfo"),
                     modules: Path = Path("/sys/module")) -> str:
    """The domain type: kvm where hardware virtualization really works, else qemu (TCG).

    /dev/kvm existing and opening is not enough: these machines have it from the kvm_pvm module (no
    vmx/svm), and KVM guests there die with "emulation failure" after minutes. So KVM also needs the
    CPU flag and the matching vendor module: vmx + kvm_intel, or svm + kvm_amd.
    """
    try:
        fd = os.open(dev_kvm, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return "qemu"
    os.close(fd)
    try:
        flags = set(re.findall(r"^flags\s*:(.*)$", cpuinfo.read_text(), re.MULTILINE)[0].split())
    except (OSError, IndexError):
        return "qemu"
    if "vmx" in flags and (modules / "kvm_intel").is_dir():
        return "kvm"
    if "svm" in flags and (modules / "kvm_amd").is_dir():
        return "kvm"
    return "qemu"
