"""<memballoon>: model none - guest memory is fixed by the pod's request, nobody inflates a balloon."""

from __future__ import annotations

from kvtool.domain import xmlmodel
from kvtool.domain.xmlmodel import Text


class MemBalloon(xmlmodel.XMLObject):
    TAG = "memballoon"

    model = Text("./@model", choices=("none", "virtio", "virtio-transitional"), required=True)
