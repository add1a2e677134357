"""The eviction webhook: an HTTPS endpoint the API server calls for each pod eviction (KubeVirt's virt-api does
the same). Every controller replica serves it, leader or not, so drains never wait for an election.

TLS: a CA and a serving certificate for the Service's DNS name, in the Secret kvtool-webhook-tls; the
ValidatingWebhookConfiguration's caBundle is set to that CA when the replica starts.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from kvtool.api.types import CONFIG_MAP, POD, VIRTUAL_MACHINE_INSTANCE
from kvtool.controller import eviction
from kvtool.controller import migration as migration_logic
from kvtool.deploy import install, manifests
from kvtool.kube import migrationtls
from kvtool.kube.resources import KubeError, Resources

log = logging.getLogger("kvtool.controller.webhook")

FIELD_MANAGER = "kvtool-controller"
WEBHOOK_CONFIG = install.KINDS[("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration")]
MAX_BODY = 1 << 20


def review(res: Resources, namespace: str, request: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview response for one eviction request."""
    uid = request.get("uid", "")
    pod_ns, pod_name = request.get("namespace") or "", request.get("name") or ""
    try:
        pod = res.get(POD, pod_ns, pod_name) if pod_name else None
        vmi_name = ((pod or {}).get("metadata", {}).get("labels") or {}).get("kvtool.io/vmi")
        vmi = res.get(VIRTUAL_MACHINE_INSTANCE, pod_ns, vmi_name) if vmi_name else None
        cm = res.get(CONFIG_MAP, namespace, migration_logic.CONFIG_MAP) if vmi is not None else None
        decision = eviction.verdict(pod, vmi, migration_logic.Config.from_data((cm or {}).get("data")))
        if decision.evacuate and vmi is not None and not request.get("dryRun") and \
                (vmi.get("status") or {}).get("evacuationNodeName") != decision.evacuate:
            res.merge_patch(VIRTUAL_MACHINE_INSTANCE, pod_ns, vmi["metadata"]["name"],
                            {"status": {"evacuationNodeName": decision.evacuate}}, subresource="status",
                            field_manager=FIELD_MANAGER)
            log.info("vmi=%s/%s event=evacuation-requested node=%s pod=%s", pod_ns, vmi["metadata"]["name"],
                     decision.evacuate, pod_name)
    except KubeError as exc:
        # Not knowing is not a yes: the eviction is retried (429) and the drain waits.
        decision = eviction.Verdict(False, f"kvtool could not check the pod's VM: {exc.message}")
    response: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if not decision.allowed:
        response["status"] = {"code": eviction.TOO_MANY_REQUESTS, "reason": "TooManyRequests",
                              "message": decision.message}
        log.info("pod=%s/%s event=eviction-refused message=%r", pod_ns, pod_name, decision.message)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


class _Handler(BaseHTTPRequestHandler):
    res: Resources
    namespace: str

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        path = urlsplit(self.path).path  # the API server adds ?timeout=10s
        if path != "/evict" or not 0 < length <= MAX_BODY:
            self.send_error(404 if path != "/evict" else 400)
            return
        try:
            body = json.loads(self.rfile.read(length))
            request = body["request"]
        except (ValueError, KeyError, TypeError):
            self.send_error(400, "not an AdmissionReview")
            return
        data = json.dumps(review(self.res, self.namespace, request)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("event=webhook-request " + format, *args)


def serve(res: Resources, namespace: str, port: int) -> ThreadingHTTPServer:
    """Make (or read) the TLS Secret, point the webhook configuration's caBundle at its CA, serve on `port`."""
    service = f"{manifests.CONTROLLER}.{namespace}.svc"
    pems = migrationtls.ensure(res, namespace, FIELD_MANAGER, manifests.WEBHOOK_TLS_SECRET,
                               lambda: migrationtls.make_material("kvtool-webhook-ca", service,
                                                                  (service, f"{service}.cluster.local")))
    _set_ca_bundle(res, pems["ca.crt"])
    handler = type("Handler", (_Handler,), {"res": res, "namespace": namespace})
    server = ThreadingHTTPServer(("", port), handler)
    server.socket = migrationtls.server_context(pems).wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="eviction-webhook", daemon=True).start()
    log.info("event=webhook-serving port=%d service=%s", port, service)
    return server


def _set_ca_bundle(res: Resources, ca_pem: str) -> None:
    import base64

    config = res.get(WEBHOOK_CONFIG, None, manifests.EVICTION_WEBHOOK)
    if config is None:
        log.warning("event=webhook-config-missing name=%s (evictions of VMs are not intercepted)",
                    manifests.EVICTION_WEBHOOK)
        return
    bundle = base64.b64encode(ca_pem.encode()).decode()
    hooks = config.get("webhooks") or []
    if all((h.get("clientConfig") or {}).get("caBundle") == bundle for h in hooks):
        return
    patched = [{**h, "clientConfig": {**(h.get("clientConfig") or {}), "caBundle": bundle}} for h in hooks]
    res.merge_patch(WEBHOOK_CONFIG, None, manifests.EVICTION_WEBHOOK, {"webhooks": patched},
                    field_manager=FIELD_MANAGER)
