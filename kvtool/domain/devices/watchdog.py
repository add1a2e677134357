"""<watchdog>: an emulated i6300esb the guest must keep petting, else the action happens."""

from __future__ import annotations

from kvtool.domain import xmlmodel
from kvtool.domain.xmlmodel import Text


class Watchdog(xmlmodel.XMLObject):
    TAG = "watchdog"

    model = Text("./@model", choices=("i6300esb",), required=True)
    # KubeVirt's actions; libvirt also has pause/dump/inject-nmi, which KubeVirt does not offer.
    action = Text("./@action", choices=("poweroff", "reset", "shutdown"), required=True)
    alias = Text("./alias/@name", pattern=xmlmodel.USER_ALIAS)
