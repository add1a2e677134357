"""The embedded cluster's power switch: what a fence agent talks to, like a node's BMC or a PDU.

A real cluster's fence agent powers a node off out of band (IPMI, a switched PDU, a cloud API),
never through the node itself, so it works on a node that is hung or cut off from the network.
Embedded nodes are cgroups and namespaces on this machine, and the supervisor is what can switch
them off; this HTTPS endpoint on the cluster bridge is its out-of-band interface. kvtool's
controller (a pod) reaches it with the bearer token install puts in a Secret, and checks the
server against the cluster CA. Requests go through the supervisor's control socket, so its main
loop stays the only thing that touches the node processes.

    GET  /v1/nodes/<name>            -> {"node", "power": "on"|"off", "network": ...}
    POST /v1/nodes/<name>/power-off  -> {"node", "power": "off", "killed": N}
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import socket
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kvtool import paths

log = logging.getLogger("kvtool.supervisor.power")

ROUTE = re.compile(r"^/v1/nodes/(?P<node>[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?)(?P<action>/power-off)?$")


def ensure_token(path: Path) -> str:
    """The switch's bearer token (created once, 0600): what install copies into the fence Secret."""
    if not path.exists():
        paths.write_atomic(path, secrets.token_urlsafe(32).encode(), 0o600)
    return path.read_text().strip()


def _control(control_socket: Path, request: dict[str, str]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(control_socket))
        s.sendall((json.dumps(request) + "\n").encode())
        return json.loads(s.makefile().readline())


def serve(address: str, port: int, cert: Path, key: Path, token: str, control_socket: Path) -> ThreadingHTTPServer:
    """Start the switch on a daemon thread; the server (shut it down with .shutdown())."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:  # the default writes to stderr unstructured
            log.debug("client=%s request=%r", self.client_address[0], fmt % args)

        def _reply(self, status: HTTPStatus, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            given = self.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), token.encode()):
                log.warning("client=%s event=refused reason=bad-token", self.client_address[0])
                self._reply(HTTPStatus.UNAUTHORIZED, {"error": "a valid bearer token is required"})
                return
            match = ROUTE.match(self.path)
            if match is None or (method == "POST") != bool(match["action"]):
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {method} {self.path}"})
                return
            node = match["node"]
            cmd = "node-stop" if method == "POST" else "node-status"
            try:
                reply = _control(control_socket, {"cmd": cmd, "node": node})
            except (OSError, ValueError) as exc:
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"the supervisor did not answer: {exc}"})
                return
            if not reply.pop("ok", False):
                self._reply(HTTPStatus.NOT_FOUND, {"error": str(reply.get("error"))})
                return
            if method == "POST":
                log.warning("node=%s event=fenced client=%s killed=%s", node, self.client_address[0],
                            reply.get("killed"))
            self._reply(HTTPStatus.OK, reply)

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

    server = ThreadingHTTPServer((address, port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="power-switch", daemon=True).start()
    log.info("event=power-switch-listening address=%s port=%d", address, port)
    return server
