"""<rng>: virtio-rng fed from the host's /dev/urandom, so guests do not stall at boot waiting for entropy."""

from __future__ import annotations

from kvtool.domain import xmlmodel
from kvtool.domain.xmlmodel import Text


class Rng(xmlmodel.XMLObject):
    TAG = "rng"

    model = Text("./@model", choices=("virtio", "virtio-transitional"), required=True)
    backend_model = Text("./backend/@model", choices=("random",), required=True)
    backend = Text("./backend", choices=("/dev/urandom", "/dev/random", "/dev/hwrng"), required=True)
