"""<serial> and <console>: the guest's ttyS0, logged to a file the launcher exposes as the console log.

libvirt makes a serial-type <console> a mirror of serial port 0, so both
classes carry the same source fields; only <serial> carries <log>, which
tees a pty's output into a file.
"""

from __future__ import annotations

from kvtool.domain import xmlmodel
from kvtool.domain.xmlmodel import Flag, Int, Text


class _CharDevice(xmlmodel.XMLObject):
    type = Text("./@type", choices=("file", "pty"), required=True)
    source_path = Text("./source/@path", pattern=xmlmodel.ABSOLUTE_PATH)
    source_append = Flag("./source/@append", words=("on", "off"))

    def check(self) -> None:
        if (self.type == "file") != (self.source_path is not None):
            raise xmlmodel.XMLModelError(f"{type(self).__name__}: a source path goes with type file, and only there")


class Serial(_CharDevice):
    TAG = "serial"

    log_file = Text("./log/@file", pattern=xmlmodel.ABSOLUTE_PATH)
    log_append = Flag("./log/@append", words=("on", "off"))
    target_port = Int("./target/@port", minimum=0, maximum=3, required=True)


class Console(_CharDevice):
    TAG = "console"

    target_type = Text("./target/@type", choices=("serial",), required=True)
    target_port = Int("./target/@port", minimum=0, maximum=3, required=True)
