"""<sound>: an emulated sound card (KubeVirt's devices.sound); with no audio backend it plays into nothing."""

from __future__ import annotations

from kvtool.domain import xmlmodel
from kvtool.domain.xmlmodel import Text


class Sound(xmlmodel.XMLObject):
    TAG = "sound"

    model = Text("./@model", choices=("ich9", "ac97"), required=True)
    alias = Text("./alias/@name", pattern=xmlmodel.USER_ALIAS)
