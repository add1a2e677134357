"""Kubernetes Events, as client-go's EventRecorder posts them: best effort, never failing the caller.

kopf.event() only works inside kopf's own handler context; kvtool's work queue and node monitor
run outside it, so they post through here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from kvtool.api import timeutil
from kvtool.api.types import Kind
from kvtool.kube.resources import KubeError, Resources

log = logging.getLogger("kvtool.events")

EVENT = Kind("v1", "Event", "events")


def event_for(obj: Mapping[str, Any], etype: str, reason: str, message: str, component: str) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    now = timeutil.stamp()
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": meta.get("namespace") or "default"},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
                           "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "type": etype, "reason": reason, "message": message[:1024], "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": component}, "reportingComponent": component,
    }


async def post(res: Resources, obj: Mapping[str, Any], etype: str, reason: str, message: str,
               component: str) -> None:
    try:
        await asyncio.to_thread(res.create, EVENT, event_for(obj, etype, reason, message, component), component)
    except (KubeError, OSError) as exc:
        log.warning("event=event-not-posted reason=%s error=%r", reason, str(exc))
