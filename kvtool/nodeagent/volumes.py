"""Pod volumes and environment in embedded mode, where pods have no mount namespace.

docs/runtime.md: every volume is backed by a host directory (hostPath → a per-node directory or a
mapped one, emptyDir → <pod dir>/volumes/<name>, persistentVolumeClaim → the bound PV's hostPath,
secret → files written 0600 into <pod dir>/volumes/<name>), and every env value equal to or under
a container mountPath is rewritten to that directory. An env value that is an *ancestor* of
mountPaths (KVTOOL_VOLUMES_DIR=/var/run/kvtool/volumes with mounts at .../volumes/<name>) points
into <pod dir>/root, a tree of symlinks placed at each mountPath, so `$DIR/<name>` still works.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvtool import paths
from kvtool.api.types import CONFIG_MAP, PVC, SECRET, Kind
from kvtool.kube.resources import KubeError, Resources

PV = Kind("v1", "PersistentVolume", "persistentvolumes", namespaced=False)

SUPPORTED_VOLUMES = ("hostPath", "emptyDir", "persistentVolumeClaim", "secret", "configMap", "projected")
HOSTPATH_TYPES = ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File")
_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


class Pending(Exception):
    """Something the container needs is not there yet (kubelet: ContainerCreating); retried later."""


class Unsupported(Exception):
    """The pod needs something this node cannot provide; it is refused, never retried."""


def _relative(path: str, what: str) -> str:
    """A path that stays inside the directory it is joined to."""
    norm = os.path.normpath(path.lstrip("/")) if path else ""
    if norm in ("", ".") or norm.startswith(".."):
        raise Unsupported(f"{what} {path!r} is not a relative path inside the volume")
    return norm


@dataclass(frozen=True)
class HostPaths:
    """Where hostPath volumes live on this node: mapped prefixes, else under <root>/hostpath."""

    root: Path
    maps: tuple[tuple[str, Path], ...] = ()

    def backing(self, path: str) -> Path:
        norm = os.path.normpath(path)
        if not norm.startswith("/") or ".." in norm.split("/"):
            raise Unsupported(f"hostPath {path!r} is not an absolute path")
        for prefix, host in sorted(self.maps, key=lambda m: len(m[0]), reverse=True):
            if norm == prefix or norm.startswith(prefix.rstrip("/") + "/"):
                return host / norm[len(prefix):].lstrip("/") if norm != prefix else host
        return self.root / "hostpath" / norm.lstrip("/")


def _get(res: Resources, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
    try:
        return res.get(kind, namespace, name)
    except KubeError as exc:
        # The Node authorizer learns of a binding asynchronously: a fresh pod's secrets can be
        # forbidden for a moment. Anything else is worth retrying too, with the server's message.
        raise Pending(f"cannot read {kind.label} {namespace + '/' if namespace else ''}{name}: {exc.message}") from exc


def _write_keys(directory: Path, data: Mapping[str, bytes], items: list[dict[str, Any]] | None, mode: int,
                source: str, optional: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    wanted = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
    for key, rel in wanted:
        if key not in data:
            if optional:
                continue
            raise Pending(f"{source} has no key {key!r}")
        paths.write_atomic(directory / _relative(rel, f"{source} item path"), data[key], mode)


def _object_data(obj: dict[str, Any], secret: bool) -> dict[str, bytes]:
    if secret:
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def _claim_path(res: Resources, namespace: str, claim: str) -> Path:
    pvc = _get(res, PVC, namespace, claim)
    if pvc is None:
        raise Pending(f"PersistentVolumeClaim {namespace}/{claim} not found")
    volume = (pvc.get("spec") or {}).get("volumeName")
    phase = (pvc.get("status") or {}).get("phase", "Pending")
    if phase != "Bound" or not volume:
        raise Pending(f"waiting for PersistentVolumeClaim {namespace}/{claim} to be bound (phase {phase})")
    pv = _get(res, PV, None, volume)
    if pv is None:
        raise Pending(f"PersistentVolume {volume} (bound to {namespace}/{claim}) not found")
    spec = pv.get("spec") or {}
    path = (spec.get("hostPath") or spec.get("local") or {}).get("path")
    if not path:
        raise Unsupported(f"PersistentVolume {volume} of claim {namespace}/{claim} is neither hostPath nor local; "
                          "this node can only use those")
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def prepare(pod: dict[str, Any], pod_dir: Path, hostpaths: HostPaths, res: Resources) -> dict[str, Path]:
    """Create every volume's backing directory; volume name → host directory (or file)."""
    namespace = pod["metadata"]["namespace"]
    vdir = pod_dir / "volumes"
    backing: dict[str, Path] = {}
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        name = vol["name"]
        local = vdir / _relative(name, "volume name")
        if "hostPath" in vol:
            path, kind = vol["hostPath"]["path"], vol["hostPath"].get("type") or ""
            target = hostpaths.backing(path)
            if kind in ("", "DirectoryOrCreate"):
                target.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate":
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch(exist_ok=True)
            elif (kind == "Directory" and not target.is_dir()) or (kind == "File" and not target.is_file()):
                raise Pending(f"hostPath {path} ({target} on this node) is not a {kind.lower()}")
            backing[name] = target
        elif "emptyDir" in vol or "projected" in vol:
            # projected: the service-account token volume every pod gets; launchers never use the API,
            # so it stays an empty directory.
            local.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in vol:
                os.chmod(local, 0o777)  # what kubelet gives an emptyDir
            backing[name] = local
        elif "secret" in vol or "configMap" in vol:
            secret = "secret" in vol
            src = vol["secret" if secret else "configMap"]
            obj_name = src.get("secretName" if secret else "name", "")
            obj = _get(res, SECRET if secret else CONFIG_MAP, namespace, obj_name)
            source = f"{'secret' if secret else 'configmap'} {namespace}/{obj_name}"
            if obj is None and not src.get("optional"):
                raise Pending(f"{source} not found")
            _write_keys(local, _object_data(obj or {}, secret), src.get("items"), 0o600 if secret else 0o644,
                        source, bool(src.get("optional")))
            backing[name] = local
        elif "persistentVolumeClaim" in vol:
            backing[name] = _claim_path(res, namespace, vol["persistentVolumeClaim"]["claimName"])
        else:
            raise Unsupported(f"volume {name!r} is of a type this node does not provide")
    return backing


def mounts(container: dict[str, Any], backing: dict[str, Path]) -> list[tuple[str, Path]]:
    """(mountPath, host path) for each of the container's volumeMounts, longest mountPath first."""
    result = []
    for m in container.get("volumeMounts") or []:
        if m["name"] not in backing:
            raise Unsupported(f"volumeMount {m['mountPath']} names volume {m['name']!r}, which the pod lacks")
        host = backing[m["name"]]
        if m.get("subPath"):
            host = host / _relative(m["subPath"], "subPath")
            host.mkdir(parents=True, exist_ok=True)
        result.append((os.path.normpath(m["mountPath"]), host))
    return sorted(result, key=lambda m: len(m[0]), reverse=True)


def build_view(pod_dir: Path, mount_list: list[tuple[str, Path]]) -> Path:
    """<pod dir>/root: a symlink at each mountPath, for env values naming a directory above mounts."""
    view = pod_dir / "root"
    shutil.rmtree(view, ignore_errors=True)
    for mount_path, host in mount_list:
        link = view / mount_path.lstrip("/")
        if link.is_symlink() or not mount_path.strip("/"):
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(host)
    return view


def translate(value: str, mount_list: list[tuple[str, Path]], view: Path) -> str:
    """An env value with its container path rewritten to the host path backing it."""
    if not value.startswith("/"):
        return value
    norm = os.path.normpath(value)
    for mount_path, host in mount_list:
        if norm == mount_path:
            return str(host)
        if norm.startswith(mount_path.rstrip("/") + "/"):
            return str(host / norm[len(mount_path):].lstrip("/"))
    if any(m.startswith(norm.rstrip("/") + "/") for m, _ in mount_list):
        return str(view / norm.lstrip("/"))
    return value


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ is a literal $, the rest stays."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return _REF.sub(sub, text)


def field_ref(pod: dict[str, Any], path: str, host_ip: str, pod_ip: str) -> str:
    meta, spec = pod["metadata"], pod.get("spec") or {}
    simple = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta["uid"],
              "spec.nodeName": spec.get("nodeName", ""), "spec.serviceAccountName": spec.get("serviceAccountName", ""),
              "status.podIP": pod_ip, "status.hostIP": host_ip, "status.podIPs": pod_ip, "status.hostIPs": host_ip}
    if path in simple:
        return simple[path]
    m = _LABEL_REF.match(path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    raise Unsupported(f"env fieldRef {path!r} is not supported")


def _key_ref(res: Resources, namespace: str, ref: dict[str, Any], secret: bool) -> str | None:
    kind = SECRET if secret else CONFIG_MAP
    obj = _get(res, kind, namespace, ref.get("name", ""))
    data = _object_data(obj or {}, secret)
    if ref["key"] in data:
        return data[ref["key"]].decode()
    if ref.get("optional"):
        return None
    raise Pending(f"{kind.label} {namespace}/{ref.get('name')} has no key {ref['key']!r}" if obj
                  else f"{kind.label} {namespace}/{ref.get('name')} not found")


def environment(pod: dict[str, Any], container: dict[str, Any], res: Resources, mount_list: list[tuple[str, Path]],
                view: Path, base: Mapping[str, str], host_ip: str, pod_ip: str) -> dict[str, str]:
    """The container's env: base variables, then the pod's (expanded, fieldRefs resolved), paths translated."""
    env = dict(base)
    declared: dict[str, str] = {}
    for var in container.get("env") or []:
        source = var.get("valueFrom")
        if source is None:
            value: str | None = expand(var.get("value", ""), declared)
        elif "fieldRef" in source:
            value = field_ref(pod, source["fieldRef"]["fieldPath"], host_ip, pod_ip)
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            secret = "secretKeyRef" in source
            value = _key_ref(res, pod["metadata"]["namespace"], source["secretKeyRef" if secret else "configMapKeyRef"],
                             secret)
        else:
            raise Unsupported(f"env {var['name']} uses {', '.join(source)}, which this node does not support")
        if value is not None:
            declared[var["name"]] = value
    env.update({k: translate(v, mount_list, view) for k, v in declared.items()})
    return env
