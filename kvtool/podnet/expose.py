"""`kvtool expose`: a Service in front of a VM (virtctl expose, for the default pod network).

The Service selects the VM's launcher pod by its label kvtool.io/vm=NAME (every launcher pod of
the VM carries it, whichever VMI it runs); the controller-manager's EndpointSlice controller then
fills its endpoints from the pod's IP and readiness, as for any pod. Applied server-side with its
own field manager, so running it again with other ports updates the Service in place.
"""

from __future__ import annotations

import re
from typing import Any

from kvtool.api.types import SERVICE, VIRTUAL_MACHINE, VM_LABEL
from kvtool.errors import KvtoolError
from kvtool.kube.resources import Resources

FIELD_MANAGER = "kvtool-expose"
TYPES = ("ClusterIP", "NodePort")
PROTOCOLS = ("TCP", "UDP")
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def _port(value: int, what: str) -> int:
    if not 1 <= value <= 65535:
        raise KvtoolError(f"{what} {value} is not between 1 and 65535")
    return value


def service_manifest(vm: str, namespace: str, port: int, target_port: int | None = None, *,
                     name: str | None = None, protocol: str = "TCP", service_type: str = "ClusterIP") -> dict[str, Any]:
    """The Service (pure): NAME:PORT -> the VM's pod on TARGET_PORT (default PORT)."""
    service = name or vm
    if not DNS_LABEL.fullmatch(service):
        raise KvtoolError(f"{service!r} is not a valid Service name (a DNS-1035 label)",
                          hint="pass --name with lower-case letters, digits and '-', starting with a letter")
    if protocol not in PROTOCOLS or service_type not in TYPES:
        raise KvtoolError(f"unsupported protocol {protocol!r} or type {service_type!r}")
    spec_port = {"name": f"{protocol.lower()}-{port}", "protocol": protocol, "port": _port(port, "--port"),
                 "targetPort": _port(target_port or port, "--target-port")}
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service, "namespace": namespace, "labels": {VM_LABEL: vm}},
            "spec": {"type": service_type, "selector": {VM_LABEL: vm}, "ports": [spec_port]}}


def expose(res: Resources, vm: str, namespace: str, port: int, target_port: int | None = None, *,
           name: str | None = None, protocol: str = "TCP", service_type: str = "ClusterIP") -> dict[str, Any]:
    """Create or update the Service; the VM must exist (as with virtctl expose)."""
    if res.get(VIRTUAL_MACHINE, namespace, vm) is None:
        raise KvtoolError(f"virtualmachine {namespace}/{vm} not found", hint="`kvtool status` lists the VMs")
    manifest = service_manifest(vm, namespace, port, target_port, name=name, protocol=protocol,
                                service_type=service_type)
    result = res.apply(SERVICE, manifest, field_manager=FIELD_MANAGER, force=True)
    assert result is not None
    return result
