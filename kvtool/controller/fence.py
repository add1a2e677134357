"""Fence agents: make sure a lost node runs nothing any more, out of band, before its VMs move.

An agent is `fence(node) -> message` raising FenceError when it cannot prove the node is off.
`embedded` switches the node off through the embedded cluster's power switch (an HTTPS endpoint
of its supervisor, kvtool.local.powerapi), like fence_ipmilan talks to a BMC; its address, bearer
token and CA come from the Secret kvtool-system/kvtool-fence-embedded that `kvtool cluster up`
writes. The token is never logged.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from kvtool.controller import failover

TIMEOUT = 30.0


class FenceError(Exception):
    """The node could not be fenced (yet): nothing may start elsewhere; try again later."""


def _field(secret: dict[str, Any], key: str) -> str:
    value = (secret.get("data") or {}).get(key)
    if not value:
        raise FenceError(f"Secret {failover.EMBEDDED_SECRET} has no {key!r}")
    return base64.b64decode(value).decode()


def embedded(node: str, secret: dict[str, Any] | None) -> str:
    """Power `node` off through the embedded cluster's switch; what it reported."""
    if secret is None:
        raise FenceError(f"Secret kvtool-system/{failover.EMBEDDED_SECRET} is missing: the embedded power switch "
                         "is only there in `kvtool cluster up` clusters")
    endpoint, token, ca = _field(secret, "endpoint"), _field(secret, "token"), _field(secret, "ca.crt")
    if not endpoint.startswith("https://"):
        raise FenceError(f"Secret {failover.EMBEDDED_SECRET}: endpoint must be an https:// URL, got {endpoint!r}")
    context = ssl.create_default_context(cadata=ca)
    request = urllib.request.Request(f"{endpoint.rstrip('/')}/v1/nodes/{node}/power-off", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:
            reply = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        raise FenceError(f"power switch {endpoint} refused: HTTP {exc.code} {detail}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FenceError(f"power switch {endpoint} unreachable: {exc}") from exc
    if reply.get("power") != "off":
        raise FenceError(f"power switch {endpoint} did not confirm power off: {reply}")
    return f"powered off by the embedded power switch ({reply.get('killed', 0)} processes stopped)"
