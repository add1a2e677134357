"""One declarative class per libvirt device kind, as virtinst does (virtinst/devices/*.py)."""

from __future__ import annotations

from kvtool.domain.devices.chardev import Console, Serial
from kvtool.domain.devices.controller import Controller
from kvtool.domain.devices.disk import Disk
from kvtool.domain.devices.interface import Interface
from kvtool.domain.devices.memballoon import MemBalloon
from kvtool.domain.devices.rng import Rng

__all__ = ["Console", "Controller", "Disk", "Interface", "MemBalloon", "Rng", "Serial"]
