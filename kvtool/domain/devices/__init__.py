"""One declarative class per libvirt device kind, as virtinst does (virtinst/devices/*.py)."""

from __future__ import annotations

from kvtool.domain.devices.address import PCIAddress
from kvtool.domain.devices.chardev import Console, Serial
from kvtool.domain.devices.controller import Controller
from kvtool.domain.devices.disk import Disk
from kvtool.domain.devices.input import Input
from kvtool.domain.devices.interface import Interface
from kvtool.domain.devices.memballoon import MemBalloon
from kvtool.domain.devices.rng import Rng
from kvtool.domain.devices.sound import Sound
from kvtool.domain.devices.vsock import Vsock
from kvtool.domain.devices.watchdog import Watchdog

__all__ = ["Console", "Controller", "Disk", "Input", "Interface", "MemBalloon", "PCIAddress", "Rng", "Serial", "Sound",
           "Vsock", "Watchdog"]
