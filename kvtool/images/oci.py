"""OCI image-layout archives written locally, for nodes that have containerd but no registry to pull from.

An archive is a tar holding `oci-layout`, `index.json` and `blobs/sha256/<hex>`
(config, manifest, layers): what `ctr -n k8s.io images import ARCHIVE` reads. The
image's name comes from the `io.containerd.image.name` annotation on index.json's
manifest descriptor. Layers stay uncompressed (`application/vnd.oci.image.layer.v1.tar`):
the archive never leaves the machine, and gzip would cost more time than the copy.

Everything is deterministic: the same layers and config give the same bytes (JSON
with sorted keys, tar entries sorted, fixed owners, modes and mtimes where this
module makes the tar), so the manifest digest can name the image.

Hand-written with the standard library's tarfile: the PyPI packages for OCI images
(oras, containerimage-py, ...) push to and pull from registries; none found writes an
image layout from layer tars, and this is small.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from kvtool.errors import BuildError

MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"  # the tag (OCI image-layout convention)
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"  # the full reference `ctr images import` names it by
LAYOUT_VERSION = "1.0.0"
_CHUNK = 1 << 20

# Called with each path (relative to the tree's root, '/'-separated); True leaves it and what is under it out.
Exclude = Callable[[str], bool]


@dataclass(frozen=True)
class Layer:
    """An uncompressed layer tarball; its digest is also its diff_id."""

    path: Path
    digest: str  # "sha256:<hex>"
    size: int
    comment: str = ""  # the history entry's created_by: what made the layer

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": MEDIA_LAYER, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config a runtime uses. No creation time unless given: it would break determinism."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    architecture: str = "amd64"
    os: str = "linux"
    created: str | None = None  # RFC 3339, e.g. "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class Manifest:
    """The config and manifest blobs of an image, computed before anything is written (the digest names the tag)."""

    config: bytes
    manifest: bytes
    layers: tuple[Layer, ...]
    platform: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    @property
    def short_digest(self) -> str:
        """12 hex digits of the manifest digest: enough to tell builds apart in a tag."""
        return self.digest.removeprefix("sha256:")[:12]


@dataclass(frozen=True)
class Image:
    """An archive on disk and the reference `ctr images import` gives it."""

    reference: str
    archive: Path
    digest: str  # the manifest's
    size: int  # bytes of the archive


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(doc: object) -> bytes:
    """Sorted keys and no whitespace: the same document always has the same digest."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def split_reference(reference: str) -> tuple[str, str]:
    """("kvtool.io/launcher", "0.1.0-abc") from "kvtool.io/launcher:0.1.0-abc" (a port's ':' is not a tag's)."""
    name, sep, tag = reference.rpartition(":")
    if not sep or not name or not tag or "/" in tag:
        raise ValueError(f"image reference {reference!r} has no tag")
    return name, tag


# ---- layers


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through, so a layer is hashed while it is written."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._out.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def describe_layer(path: Path, comment: str = "") -> Layer:
    """A Layer for an existing uncompressed tarball (hashes the file)."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return Layer(path=path, digest="sha256:" + h.hexdigest(), size=size, comment=comment)


def layer_from_tree(root: Path, out: Path, *, mtime: int | None = None, owner: tuple[int, int] | None = None,
                    normalize_modes: bool = False, exclude: Exclude | None = None, comment: str = "") -> Layer:
    """Write the tree under `root` as a layer tarball at `out` (root itself is not an entry).

    Entries come in sorted order with numeric owners only (user names would be looked
    up on this host, whose names are not the image's). Hard links stay hard links;
    device nodes and sockets are skipped (the runtime makes /dev). `mtime` replaces
    every file's time, `owner` every (uid, gid), and `normalize_modes` makes directories
    and executables 0755, other files 0644 (whatever the umask was): for trees made just
    for the layer, so the same inputs give the same bytes. Keep real mtimes for a Debian
    rootfs: Python's timestamp-checked .pyc files there must match their sources' mtimes.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as raw:
        hashing = _HashingWriter(raw)
        with tarfile.open(fileobj=hashing, mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                          copybufsize=_CHUNK) as tar:
            for path, arcname in _walk(root, exclude):
                info = tar.gettarinfo(str(path), arcname)
                if info is None or info.ischr() or info.isblk():
                    continue
                info.uname = info.gname = ""
                info.mtime = int(info.mtime) if mtime is None else mtime
                if owner is not None:
                    info.uid, info.gid = owner
                if normalize_modes and (info.isdir() or info.isreg()):
                    info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
                if info.isreg():
                    with path.open("rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
    return Layer(path=out, digest="sha256:" + hashing.hash.hexdigest(), size=hashing.size, comment=comment)


def _walk(root: Path, exclude: Exclude | None, prefix: str = "") -> Iterable[tuple[Path, str]]:
    """(path, archive name) depth-first, each directory before its contents, names sorted bytewise."""
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: os.fsencode(e.name))
    for entry in entries:
        arcname = prefix + entry.name
        if exclude is not None and exclude(arcname):
            continue
        path = Path(entry.path)
        yield path, arcname
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(path, exclude, arcname + "/")


# ---- images


def build_manifest(layers: Sequence[Layer], config: ImageConfig) -> Manifest:
    """The config and manifest JSON for `layers` (bottom first) and `config`."""
    image_config: dict[str, object] = {}
    for key, value in (("Entrypoint", list(config.entrypoint)), ("Cmd", list(config.cmd)),
                       ("Env", list(config.env)), ("WorkingDir", config.working_dir), ("User", config.user),
                       ("Labels", dict(config.labels))):
        if value:
            image_config[key] = value
    doc: dict[str, object] = {
        "architecture": config.architecture,
        "os": config.os,
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        "history": [{"created_by": layer.comment} if layer.comment else {} for layer in layers],
    }
    if config.created:
        doc["created"] = config.created
    config_blob = canonical_json(doc)
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": sha256_digest(config_blob), "size": len(config_blob)},
        "layers": [layer.descriptor() for layer in layers],
    })
    return Manifest(config=config_blob, manifest=manifest, layers=tuple(layers),
                    platform={"architecture": config.architecture, "os": config.os})


def index_json(manifest: Manifest, reference: str) -> bytes:
    """index.json: one manifest, named by `reference` for containerd and by its tag for OCI tools."""
    _, tag = split_reference(reference)
    return canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest.digest,
            "size": len(manifest.manifest),
            "platform": manifest.platform,
            "annotations": {ANNOTATION_REF_NAME: tag, ANNOTATION_CONTAINERD_NAME: reference},
        }],
    })


def write_archive(out: Path, manifest: Manifest, reference: str) -> Image:
    """Write the OCI image-layout tar for `manifest` as `out`, atomically (a temporary file renamed into place).

    Each layer is re-hashed as it is copied: a damaged cached layer fails here, not in containerd on every node.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    small = {manifest.config_digest: manifest.config, manifest.digest: manifest.manifest}
    layers = {layer.digest: layer for layer in manifest.layers}
    index = index_json(manifest, reference)
    layout = canonical_json({"imageLayoutVersion": LAYOUT_VERSION})
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        # TarFile itself, which is what tarfile.open(mode="w") returns: its stubs list copybufsize, open's do not.
        with tmp.open("wb") as raw, tarfile.TarFile(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT,
                                                    copybufsize=_CHUNK) as tar:
            tar.addfile(_entry("blobs", tarfile.DIRTYPE))
            tar.addfile(_entry("blobs/sha256", tarfile.DIRTYPE))
            for digest in sorted({*small, *layers}):
                name = "blobs/sha256/" + digest.removeprefix("sha256:")
                if digest in small:
                    tar.addfile(_entry(name, size=len(small[digest])), io.BytesIO(small[digest]))
                    continue
                layer = layers[digest]
                with layer.path.open("rb") as fh:
                    reader = _VerifyingReader(fh, layer)
                    tar.addfile(_entry(name, size=layer.size), reader)
                    reader.check()
            tar.addfile(_entry("index.json", size=len(index)), io.BytesIO(index))
            tar.addfile(_entry("oci-layout", size=len(layout)), io.BytesIO(layout))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Image(reference=reference, archive=out, digest=manifest.digest, size=out.stat().st_size)


class _VerifyingReader(io.RawIOBase):
    """Reads a layer file while hashing it, to compare with the digest the manifest promises."""

    def __init__(self, fh: BinaryIO, layer: Layer) -> None:
        self._fh = fh
        self._layer = layer
        self._hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._hash.update(data)
        return data

    def check(self) -> None:
        self._hash.update(self._fh.read())  # the copy stops at the recorded size; bytes past it are damage too
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self._layer.digest:
            raise BuildError(f"layer {self._layer.path} has digest {actual}, expected {self._layer.digest}: "
                             "the cached file changed or is damaged",
                             hint=f"delete {self._layer.path} (and its .json) and build again")


def _entry(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind == tarfile.REGTYPE else 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info
