"""`kvtool port-forward` in embedded mode: a TCP relay from a local port to a pod IP.

Targets, as with kubectl port-forward: a VM (`NAME`, `vm/NAME`: its running launcher pod), a pod
(`pod/NAME`) or a Service (`svc/NAME`: a ready endpoint from its EndpointSlices, the service port
mapped to the endpoint's port by name, as kube-proxy does). Embedded clusters keep pod IPs inside
their own network namespace; the pod's Node says which in the annotation
kvtool.io/pod-network-namespace, and each upstream connection is opened there. Without it (a real
cluster's node that routes pod IPs) the relay connects from where it runs.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

from kvtool.api.types import POD, SERVICE, VM_LABEL, Kind
from kvtool.errors import KvtoolError
from kvtool.kube.resources import Resources
from kvtool.podnet import netcmd

log = logging.getLogger("kvtool.podnet.forward")

# On a Node: the network namespace on this machine from which the node's pod IPs are routed (an
# embedded cluster's nodes are namespaces here; kvtool.local.nodenet sets it).
NETNS_ANNOTATION = "kvtool.io/pod-network-namespace"
NODE = Kind("v1", "Node", "nodes", namespaced=False)
ENDPOINT_SLICE = Kind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices")
CONNECT_TIMEOUT = 5.0
BUFFER = 65536


@dataclass(frozen=True)
class Target:
    ip: str
    port: int
    netns: str | None  # where the pod IP is reachable (embedded mode), None: from here
    description: str

    def connect(self, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
        def dial() -> socket.socket:
            return socket.create_connection((self.ip, self.port), timeout=timeout)

        sock = netcmd.in_netns(netcmd.netns_path(self.netns), dial) if self.netns else dial()
        sock.settimeout(None)
        return sock


def _running(pod: dict[str, Any]) -> bool:
    return ((pod.get("status") or {}).get("phase") == "Running" and bool((pod.get("status") or {}).get("podIP"))
            and not pod["metadata"].get("deletionTimestamp"))


def _netns(res: Resources, node: str | None) -> str | None:
    if not node:
        return None
    obj = res.get(NODE, None, node) or {}
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(NETNS_ANNOTATION)
    return netcmd.netns_name(value) if value else None


def _pod_target(res: Resources, pod: dict[str, Any], port: int, what: str) -> Target:
    ip = str(netcmd.ipv4(pod["status"]["podIP"]))
    return Target(ip, port, _netns(res, pod["spec"].get("nodeName")), f"{what} (pod {pod['metadata']['name']})")


def resolve(res: Resources, namespace: str, target: str, port: int) -> Target:
    """Where `target` (NAME | vm/NAME | pod/NAME | svc/NAME) listens for `port`."""
    kind, _, name = target.rpartition("/")
    kind = kind.lower()
    if kind in ("svc", "service", "services"):
        return _service(res, namespace, name, port)
    if kind in ("pod", "pods", "po"):
        pod = res.get(POD, namespace, name)
        if pod is None or not _running(pod):
            raise KvtoolError(f"pod {namespace}/{name} is not running")
        return _pod_target(res, pod, port, f"pod/{name}")
    if kind not in ("", "vm", "vmi", "virtualmachine", "virtualmachineinstance"):
        raise KvtoolError(f"cannot port-forward to {target!r}", hint="NAME (a VM), vm/NAME, pod/NAME or svc/NAME")
    pods = [p for p in res.list(POD, namespace, label_selector=f"{VM_LABEL}={name}")[0] if _running(p)]
    if not pods:
        raise KvtoolError(f"VM {namespace}/{name} has no running launcher pod", hint=f"`kvtool start {name}`")
    newest = max(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))
    return _pod_target(res, newest, port, f"vm/{name}")


def _service(res: Resources, namespace: str, name: str, port: int) -> Target:
    svc = res.get(SERVICE, namespace, name)
    if svc is None:
        raise KvtoolError(f"service {namespace}/{name} not found", hint=f"`kvtool expose VM --port {port}` makes one")
    ports = (svc.get("spec") or {}).get("ports") or []
    spec_port = next((p for p in ports if p.get("port") == port), None)
    if spec_port is None:
        raise KvtoolError(f"service {namespace}/{name} has no port {port}",
                          hint="its ports: " + ", ".join(str(p.get("port")) for p in ports))
    slices = res.list(ENDPOINT_SLICE, namespace, label_selector=f"kubernetes.io/service-name={name}")[0]
    for eps in slices:
        target_port = next((p.get("port") for p in eps.get("ports") or []
                            if (p.get("name") or "") == (spec_port.get("name") or "")), None)
        for endpoint in eps.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") and endpoint.get("addresses") and target_port:
                ip = str(netcmd.ipv4(endpoint["addresses"][0]))
                pod = (endpoint.get("targetRef") or {}).get("name", "?")
                return Target(ip, int(target_port), _netns(res, endpoint.get("nodeName")),
                              f"svc/{name}:{port} (pod {pod})")
    raise KvtoolError(f"service {namespace}/{name} has no ready endpoint",
                      hint="is the VM running, and does the Service's selector match its launcher pod?")


class Relay:
    """Accepts on a local address and pipes each connection to a new connection to the target."""

    def __init__(self, target: Target, local_port: int, address: str = "127.0.0.1") -> None:
        self.target = target
        self.listener = socket.create_server((address, local_port), reuse_port=False)
        self.port = self.listener.getsockname()[1]
        self.address = address
        self._closed = threading.Event()

    def serve_forever(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                raise
            threading.Thread(target=self._handle, args=(client,), name="relay", daemon=True).start()

    def start(self) -> Relay:
        threading.Thread(target=self.serve_forever, name=f"relay-{self.port}", daemon=True).start()
        return self

    def _handle(self, client: socket.socket) -> None:
        try:
            upstream = self.target.connect()
        except OSError as exc:
            log.warning("event=forward-connect-failed target=%s:%d error=%r", self.target.ip, self.target.port,
                        str(exc))
            client.close()
            return
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join()
        client.close()
        upstream.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until EOF, then pass the EOF on (a half-close, so the other direction can finish)."""
    try:
        while data := source.recv(BUFFER):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
