"""Generic, dict-based access to any resource kind: list, get, server-side apply, delete, watch.

A transport-thin layer over the `kubernetes` client's ApiClient (its
call_api), returning plain dicts parsed once from the wire — the typed
model classes are far too slow for thousands of VMs. Errors become
KubeError carrying the server's Status (reason, message, causes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from kubernetes import client
from kubernetes.client.rest import ApiException

from kvtool.api.types import API_VERSION, FIELD_MANAGER, KUBEVIRT, KUBEVIRT_API_VERSION, KVTOOL, TARGETS, Kind, Target
from kvtool.errors import KvtoolError

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"


@dataclass
class KubeError(KvtoolError):
    """A request the API server refused; `status` is its HTTP status."""

    status: int = 0
    reason: str = ""
    causes: list[dict[str, str]] = field(default_factory=list)

    def __init__(self, message: str, status: int = 0, reason: str = "",
                 causes: list[dict[str, str]] | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status, self.reason, self.causes = status, reason, causes or []

    @classmethod
    def from_api(cls, exc: ApiException, what: str) -> KubeError:
        try:
            body = json.loads(exc.body or "{}")
        except ValueError:
            body = {}
        message = body.get("message") or exc.reason or str(exc)
        return cls(f"{what}: {message}", status=exc.status or 0, reason=body.get("reason", ""),
                   causes=(body.get("details") or {}).get("causes", []))


def ref(kind: Kind, namespace: str | None, name: str) -> str:
    """`virtualmachine default/vm-1` — how messages name an object."""
    return f"{kind.label} {namespace}/{name}" if kind.namespaced and namespace else f"{kind.label} {name}"


class Resources:
    """Dict-in, dict-out access to the API for kinds described by kvtool.api.types.Kind."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def path(self, kind: Kind, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        base = f"/apis/{kind.api_version}" if kind.group else f"/api/{kind.version}"
        if kind.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{kind.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base

    def _send(self, method: str, path: str, query: Mapping[str, Any] | None, body: Any, content_type: str,
              timeout: float | None) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        # Serialise here: the client's own pass walks every value of the body first, which costs as
        # much CPU as the request itself when applying thousands of VMs.
        raw = body if body is None or isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        method, url, headers, _, _ = self.api.param_serialize(
            method, path, query_params=list((query or {}).items()), header_params=headers,
            auth_settings=["BearerToken"])
        if raw is not None and content_type != APPLY_PATCH:
            # The REST layer re-encodes JSON bodies; hand it the object for those content types.
            return self.api.call_api(method, url, header_params=headers, body=json.loads(raw),
                                     _request_timeout=timeout)
        return self.api.call_api(method, url, header_params=headers, body=raw, _request_timeout=timeout)

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str = "application/json", what: str = "", timeout: float | None = 60,
                parse: bool = True) -> Any:
        """One API call; the parsed JSON reply (or None when parse=False), or KubeError with the server's Status."""
        try:
            resp = self._send(method, path, query, body, content_type, timeout)
        except ApiException as exc:
            raise KubeError.from_api(exc, what or f"{method} {path}") from exc
        data = resp.read()
        if resp.status >= 400:
            raise KubeError.from_api(ApiException(status=resp.status, reason=resp.reason, http_resp=resp.response),
                                     what or f"{method} {path}")
        return json.loads(data) if data and parse else None

    def serves(self, api_version: str) -> bool:
        """Does the API server serve this group/version (e.g. kubevirt.io/v1)?"""
        try:
            self.request("GET", f"/apis/{api_version}", what=f"discover {api_version}", timeout=15)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def list(self, kind: Kind, namespace: str | None = None, label_selector: str | None = None,
             page: int = 500, field_selector: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """All items (following continue tokens) and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        query: dict[str, Any] = {"limit": page}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        while True:
            result = self.request("GET", self.path(kind, namespace), query=query,
                                  what=f"list {kind.plural}")
            for item in result.get("items", []):
                # A LIST of built-in kinds leaves apiVersion and kind out of its items; make each self-describing,
                # as a GET returns it (a plan compares them with the desired manifest).
                item.setdefault("apiVersion", kind.api_version)
                item.setdefault("kind", kind.kind)
                items.append(item)
            token = result.get("metadata", {}).get("continue")
            if not token:
                return items, result.get("metadata", {}).get("resourceVersion", "")
            query["continue"] = token

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", self.path(kind, namespace, name), what=f"get {ref(kind, namespace, name)}")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def apply(self, kind: Kind, manifest: Mapping[str, Any], *, force: bool = False, dry_run: bool = False,
              field_manager: str = FIELD_MANAGER, subresource: str | None = None,
              validated: bool = False, parse: bool = True, timeout: float | None = 60) -> dict[str, Any] | None:
        """Server-side apply. `validated`: the client already checked the manifest against the same
        schema (kvtool's own kinds), so the server need not look for unknown fields again."""
        meta = manifest["metadata"]
        query: dict[str, Any] = {"fieldManager": field_manager,
                                 "fieldValidation": "Ignore" if validated else "Strict"}
        if force:
            query["force"] = "true"
        if dry_run:
            query["dryRun"] = "All"
        return self.request("PATCH", self.path(kind, meta.get("namespace"), meta["name"], subresource),
                            query=query, body=manifest, content_type=APPLY_PATCH, parse=parse, timeout=timeout,
                            what=f"apply {ref(kind, meta.get('namespace'), meta['name'])}")

    def merge_patch(self, kind: Kind, namespace: str | None, name: str, patch: Mapping[str, Any],
                    subresource: str | None = None, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        return self.request("PATCH", self.path(kind, namespace, name, subresource),
                            query={"fieldManager": field_manager}, body=patch,
                            content_type=MERGE_PATCH, what=f"patch {ref(kind, namespace, name)}")

    def create(self, kind: Kind, manifest: Mapping[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        meta = manifest["metadata"]
        return self.request("POST", self.path(kind, meta.get("namespace")), query={"fieldManager": field_manager},
                            body=manifest,
                            what=f"create {ref(kind, meta.get('namespace'), meta.get('name') or meta['generateName'])}")

    def delete(self, kind: Kind, namespace: str | None, name: str, *, propagation: str = "Background",
               resource_version: str | None = None, uid: str | None = None,
               grace_period: int | None = None) -> bool:
        """Delete; False if it was already gone."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        pre = {k: v for k, v in (("resourceVersion", resource_version), ("uid", uid)) if v}
        if pre:
            body["preconditions"] = pre
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        try:
            self.request("DELETE", self.path(kind, namespace, name), body=body,
                         what=f"delete {ref(kind, namespace, name)}")
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def watch(self, kind: Kind, namespace: str | None = None, label_selector: str | None = None,
              resource_version: str | None = None, timeout: int = 300) -> Iterator[dict[str, Any]]:
        """Stream watch events ({type, object}) until the server closes the watch."""
        query: dict[str, Any] = {"watch": "true", "timeoutSeconds": timeout, "allowWatchBookmarks": "true"}
        if label_selector:
            query["labelSelector"] = label_selector
        if resource_version:
            query["resourceVersion"] = resource_version
        try:
            resp = self._send("GET", self.path(kind, namespace), query, None, "application/json", timeout + 10)
        except ApiException as exc:
            raise KubeError.from_api(exc, f"watch {kind.plural}") from exc
        if resp.status >= 400:
            resp.read()
            raise KubeError.from_api(ApiException(status=resp.status, reason=resp.reason, http_resp=resp.response),
                                     f"watch {kind.plural}")
        stream = resp.response
        try:
            buf = b""
            for chunk in stream.stream(65536, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            stream.release_conn()


def target_for(res: Resources, choice: str) -> Target:
    """"kvtool" / "kubevirt" as a Target; "auto": kvtool's VM API where the cluster serves it, else KubeVirt's
    where that is served, else kvtool's (whose CRDs `kvtool install-crds` adds)."""
    if choice == KUBEVIRT.name and not res.serves(KUBEVIRT_API_VERSION):
        raise KvtoolError(f"--api kubevirt: this cluster does not serve {KUBEVIRT_API_VERSION} (KubeVirt's VM API)",
                          hint="install KubeVirt, or only its CRDs with `kvtool install-crds --kubevirt`; "
                               "or drop --api to use kvtool's own")
    if choice != "auto":
        return TARGETS[choice]
    if res.serves(API_VERSION) or not res.serves(KUBEVIRT_API_VERSION):
        return KVTOOL
    return KUBEVIRT


def list_watch(res: Resources, kind: Kind, namespace: str | None = None, label_selector: str | None = None, *,
               watch_seconds: Callable[[], int] = lambda: 300) -> Iterator[tuple[str, Any]]:
    """An informer's loop, in one place: ("SYNC", [objects]) after every LIST, then (type, object) for each
    ADDED/MODIFIED/DELETED event, and ("IDLE", None) whenever a watch request ends (so a caller can check
    its deadline). A watch that ends is resumed from the last resourceVersion seen; an expired one
    (410 Gone, or an ERROR event) lists again. Other errors reach the caller, who decides whether to
    back off and call again."""
    rv: str | None = None
    while True:
        if rv is None:
            items, rv = res.list(kind, namespace, label_selector=label_selector)
            yield "SYNC", items
        try:
            for event in res.watch(kind, namespace, label_selector, resource_version=rv,
                                   timeout=max(1, watch_seconds())):
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    rv = None
                    break
                rv = obj.get("metadata", {}).get("resourceVersion") or rv
                if event.get("type") != "BOOKMARK":
                    yield event.get("type", ""), obj
        except KubeError as exc:
            if exc.status != 410:
                raise
            rv = None
        yield "IDLE", None
