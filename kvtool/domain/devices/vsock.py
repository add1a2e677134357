"""<vsock>: virtio-vsock, host<->guest sockets without a network (KubeVirt's autoattachVSOCK).

QEMU backs it with the host kernel's vhost-vsock (/dev/vhost-vsock); libvirt picks a free context ID.
"""

from __future__ import annotations

from kvtool.domain import xmlmodel
from kvtool.domain.xmlmodel import Flag, Text


class Vsock(xmlmodel.XMLObject):
    TAG = "vsock"

    model = Text("./@model", choices=("virtio", "virtio-transitional"), required=True)
    cid_auto = Flag("./cid/@auto", required=True)
