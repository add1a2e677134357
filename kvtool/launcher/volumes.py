"""VMI volumes -> files QEMU can open: the launcher's side of kvtool.domain's ResolvedVolume.

Where each kind comes from (docs/runtime.md):
- containerDisk: a "disk" image of the store ($KVTOOL_IMAGES, read-only) under a qcow2 overlay in the
  state dir, so the guest writes to the pod, never to the image.
- firmware.kernelBoot.container: the kernel and initrd of a "kernel" image of the store.
- emptyDisk: a qcow2 of the capacity in the state dir (gone with the pod).
- hostDisk: $KVTOOL_VOLUMES_DIR/<volume>/basename(path), raw; DiskOrCreate creates it sparse.
- persistentVolumeClaim: $KVTOOL_VOLUMES_DIR/<volume>/disk.img, raw, created sparse if missing, as
  KubeVirt sizes it: the claim's size (KVTOOL_CLAIM_SIZES, from the controller) less the filesystem's
  overhead (5.5%, CDI's default), or the free space if that is less. Without a claim size: on a volume
  of its own the filesystem's free space, on a plain directory of a shared filesystem 1Gi at most.
  (A hostPath claim's directory is bind-mounted, so it looks like a volume of its own while its free
  space is the whole host's: the claim's size is what keeps its disk to what was asked.)
- cloudInitNoCloud: a NoCloud ISO in the state dir; secretRef data from $KVTOOL_VOLUMES_DIR/<volume>/.
Images on guest-writable storage are always opened as raw: probing their format would let a guest
write a qcow2 header pointing at a host file. User data is never logged.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvtool.domain import ConversionError, ResolvedVolume, cloudinit
from kvtool.domain import spec as s
from kvtool.errors import KvtoolError
from kvtool.images import store as image_store
from kvtool.launcher.config import Config

log = logging.getLogger("kvtool.launcher.volumes")

MIB = 1 << 20
DEFAULT_PVC_SIZE = 1 << 30
FILESYSTEM_OVERHEAD = 0.055  # CDI's default: a filesystem claim's room for the filesystem itself
SECRET_MAX = 64 << 10
USER_DATA_KEYS = ("userdata", "userData")
NETWORK_DATA_KEYS = ("networkdata", "networkData")
_FILE_NAME = re.compile(r"[^/\x00-\x1f\x7f]{1,255}")


@dataclass
class Resolved:
    """What the domain needs from the host: files per volume, and the kernel for direct boot."""

    volumes: dict[str, ResolvedVolume] = field(default_factory=dict)
    kernel: Path | None = None
    initrd: Path | None = None
    spec: dict[str, Any] = field(default_factory=dict)  # the VMI spec, with defaults the images supply


def resolve(vmi: Mapping[str, Any], config: Config, store: image_store.ImageStore | None = None) -> Resolved:
    """Create or find every volume's file; ConversionError (naming the field) when one cannot be had."""
    store = store or image_store.ImageStore(config.images_dir)
    spec = copy.deepcopy(dict(s.mapping(vmi.get("spec"), "spec", required=True)))
    out = Resolved(spec=spec)
    workdir = config.state_dir / "volumes"
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _kernel_boot(spec, store, out, guest_hostname(vmi))
    names: set[str] = set()
    for i, entry in enumerate(s.sequence(spec.get("volumes"), "spec.volumes")):
        path = f"spec.volumes[{i}]"
        volume = s.mapping(entry, path)
        name = s.string(volume.get("name"), f"{path}.name", pattern=s.NAME)
        if name in names:
            raise ConversionError(f"{path}.name", f"{name!r} is used by two volumes")
        names.add(name)
        kinds = [key for key in volume if key != "name"]
        if len(kinds) != 1:
            raise ConversionError(path, f"needs exactly one volume source, found: {', '.join(kinds) or 'none'}")
        kind = kinds[0]
        source = s.mapping(volume[kind], f"{path}.{kind}", required=True)
        resolver = _RESOLVERS.get(kind)
        if resolver is None:
            raise ConversionError(f"{path}.{kind}", "this volume source is not supported by the kvtool launcher",
                                  hint="use containerDisk, emptyDisk, hostDisk, persistentVolumeClaim or "
                                       "cloudInitNoCloud")
        out.volumes[name] = resolver(_Context(config, store, vmi, workdir, name, f"{path}.{kind}"), source)
        log.info("event=volume-ready volume=%s kind=%s file=%s format=%s", name, kind, out.volumes[name].path,
                 out.volumes[name].format)
    return out


@dataclass(frozen=True)
class _Context:
    config: Config
    store: image_store.ImageStore
    vmi: Mapping[str, Any]
    workdir: Path
    name: str
    path: str  # spec path of the volume source, for messages


def _image(store: image_store.ImageStore, value: Any, path: str) -> image_store.Image:
    name = s.string(value, path)
    try:
        image_store.validate_name(name)
    except KvtoolError:
        raise ConversionError(path, f"{s.show(name)} is not the name of an image in the local image store",
                              hint="the embedded launcher takes images by store name, e.g. tiny-linux; "
                                   "see `kvtool image list`") from None
    image = store.find(name)
    if image is None:
        raise ConversionError(path, f"image {name!r} is not in the image store at {store.root}",
                              hint=f"`kvtool image build tiny-linux` or `kvtool image import {name} FILE`")
    return image


def guest_hostname(vmi: Mapping[str, Any]) -> str:
    """spec.hostname, else the VMI's name (as KubeVirt names the guest)."""
    name = s.string(s.mapping(vmi.get("metadata"), "metadata").get("name"), "metadata.name", pattern=s.NAME)
    return s.string(s.mapping(vmi.get("spec"), "spec").get("hostname"), "spec.hostname", default=name,
                    pattern=s.NAME)


def _kernel_boot(spec: dict[str, Any], store: image_store.ImageStore, out: Resolved, hostname: str) -> None:
    path = "spec.domain.firmware.kernelBoot"
    domain = s.mapping(spec.get("domain"), "spec.domain", required=True)
    kernel_boot = s.mapping(s.mapping(domain.get("firmware"), "spec.domain.firmware").get("kernelBoot"), path)
    if not kernel_boot:
        return
    container = s.mapping(kernel_boot.get("container"), f"{path}.container", required=True)
    image = _image(store, container.get("image"), f"{path}.container.image")
    if image.kind != "kernel" or image.kernel is None:
        raise ConversionError(f"{path}.container.image", f"image {image.name!r} is a {image.kind} image; kernel "
                              "boot needs a kernel image (kernel + initrd)",
                              hint="attach it as a containerDisk volume instead")
    _must_exist(image.kernel, f"{path}.container.image")
    out.kernel = image.kernel
    if image.initrd is not None:
        _must_exist(image.initrd, f"{path}.container.image")
        out.initrd = image.initrd
    if kernel_boot.get("kernelArgs") is None and image.cmdline:
        # The image knows its console and options; kvtool adds the guest's name, which tiny-linux's init
        # takes as its hostname before any network or cloud-init (other kernels ignore the parameter).
        # Into `spec`, resolve's copy of the VMI spec (kernel_boot is that same dict, typed read-only by s.mapping).
        spec["domain"]["firmware"]["kernelBoot"]["kernelArgs"] = f"{image.cmdline} kvtool.hostname={hostname}"


def _must_exist(file: Path, path: str) -> None:
    if not file.is_file():
        raise ConversionError(path, f"{file} is missing from the image store",
                              hint="rebuild or re-import the image")


def _container_disk(ctx: _Context, source: Mapping[str, Any]) -> ResolvedVolume:
    image = _image(ctx.store, source.get("image"), f"{ctx.path}.image")
    if image.kind != "disk" or image.disk is None:
        raise ConversionError(f"{ctx.path}.image", f"image {image.name!r} is a kernel image (kernel + initrd); "
                              "it cannot be a disk",
                              hint="boot it with spec.domain.firmware.kernelBoot.container.image instead")
    _must_exist(image.disk, f"{ctx.path}.image")
    overlay = ctx.workdir / f"{ctx.name}.qcow2"
    overlay.unlink(missing_ok=True)
    _qemu_img("create", "-q", "-f", "qcow2", "-F", str(image.format), "-b", str(image.disk), str(overlay))
    return ResolvedVolume(path=overlay, format="qcow2")


def _empty_disk(ctx: _Context, source: Mapping[str, Any]) -> ResolvedVolume:
    size = _size(source.get("capacity"), f"{ctx.path}.capacity")
    disk = ctx.workdir / f"{ctx.name}.qcow2"
    disk.unlink(missing_ok=True)
    _qemu_img("create", "-q", "-f", "qcow2", str(disk), str(size))
    return ResolvedVolume(path=disk, format="qcow2")


def _host_disk(ctx: _Context, source: Mapping[str, Any]) -> ResolvedVolume:
    host_path = s.string(source.get("path"), f"{ctx.path}.path", pattern=r"/[^\x00]*")
    kind = s.string(source.get("type"), f"{ctx.path}.type", choices=("Disk", "DiskOrCreate"))
    base = os.path.basename(host_path)
    if not _FILE_NAME.fullmatch(base) or base in (".", ".."):
        raise ConversionError(f"{ctx.path}.path", f"{s.show(host_path)} does not end in a file name")
    file = _volume_dir(ctx) / base
    if not file.exists():
        if kind == "Disk":
            raise ConversionError(f"{ctx.path}.path", f"{host_path} does not exist (looked for {file})",
                                  hint="create it, or set type: DiskOrCreate with a capacity")
        _create_sparse(file, _size(source.get("capacity"), f"{ctx.path}.capacity"))
    elif not file.is_file():
        raise ConversionError(f"{ctx.path}.path", f"{file} is not a regular file")
    return ResolvedVolume(path=file, format="raw")


def _pvc(ctx: _Context, source: Mapping[str, Any]) -> ResolvedVolume:
    s.string(source.get("claimName"), f"{ctx.path}.claimName", pattern=s.NAME)
    readonly = s.boolean(source.get("readOnly"), f"{ctx.path}.readOnly", default=False)
    directory = _volume_dir(ctx)
    file = directory / "disk.img"
    if not file.exists():
        if readonly:
            raise ConversionError(ctx.path, f"the read-only claim has no disk.img ({file})")
        # A live migration's target copies a node-local claim's disk into an image exactly the source's size.
        _create_sparse(file, recorded_size(ctx.vmi, ctx.name) or pvc_size(directory,
                                                                          ctx.config.claim_sizes.get(ctx.name)))
    elif not file.is_file():
        raise ConversionError(ctx.path, f"{file} is not a regular file")
    return ResolvedVolume(path=file, format="raw", readonly=readonly)


def pvc_size(directory: Path, claimed: int | None = None) -> int:
    """disk.img's size for a claim of `claimed` bytes mounted at directory (the module docstring), whole MiB."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if claimed:
        size = min(free, int(claimed * (1 - FILESYSTEM_OVERHEAD)))
    else:
        own_filesystem = os.stat(directory).st_dev != os.stat(directory.parent).st_dev
        size = free if own_filesystem else min(free, DEFAULT_PVC_SIZE)
    size -= size % MIB
    if size < MIB:
        raise KvtoolError(f"no room for a disk image in {directory} ({free} bytes free)")
    return size


def _cloud_init(ctx: _Context, source: Mapping[str, Any]) -> ResolvedVolume:
    secrets: dict[str, dict[str, str]] = {}
    for ref_key, keys in (("secretRef", USER_DATA_KEYS), ("networkDataSecretRef", NETWORK_DATA_KEYS)):
        ref = source.get(ref_key)
        if ref is None:
            continue
        ref_name = s.string(s.mapping(ref, f"{ctx.path}.{ref_key}").get("name"), f"{ctx.path}.{ref_key}.name",
                            pattern=s.NAME)
        secrets.setdefault(ref_name, {}).update(_secret_files(ctx, keys, f"{ctx.path}.{ref_key}"))
    payload = cloudinit.nocloud_payload(source, ctx.path, secrets=secrets)
    metadata = s.mapping(ctx.vmi.get("metadata"), "metadata")
    name = s.string(metadata.get("name"), "metadata.name", pattern=s.NAME)
    namespace = s.string(metadata.get("namespace"), "metadata.namespace", default=ctx.config.namespace)
    iso = ctx.workdir / f"{ctx.name}.iso"
    cloudinit.write_nocloud_iso(iso, instance_id=f"{name}.{namespace}", hostname=guest_hostname(ctx.vmi),
                                user_data=payload.user_data, network_data=payload.network_data,
                                public_keys=ssh_public_keys(ctx.vmi, ctx.config))
    return ResolvedVolume(path=iso, format="raw", readonly=True)


def ssh_public_keys(vmi: Mapping[str, Any], config: Config) -> dict[str, str]:
    """accessCredentials' SSH public keys (propagation noCloud), as cloud-init's meta-data public-keys.

    Each Secret is mounted at $KVTOOL_ACCESS_CREDENTIALS_DIR/<secret>; every key in it holds public keys, as in
    KubeVirt. Named <secret>-<key> so two Secrets with the same key do not collide.
    """
    keys: dict[str, str] = {}
    spec = s.mapping(vmi.get("spec"), "spec")
    for i, cred in enumerate(s.sequence(spec.get("accessCredentials"), "spec.accessCredentials")):
        path = f"spec.accessCredentials[{i}].sshPublicKey"
        ssh = s.mapping(s.mapping(cred, f"spec.accessCredentials[{i}]").get("sshPublicKey"), path)
        if not ssh:
            continue
        source = s.mapping(s.mapping(ssh.get("source"), f"{path}.source", required=True).get("secret"),
                           f"{path}.source.secret", required=True)
        secret = s.string(source.get("secretName"), f"{path}.source.secret.secretName", pattern=s.NAME)
        if config.access_credentials_dir is None:
            raise ConversionError(path, "needs the Secret mounted under KVTOOL_ACCESS_CREDENTIALS_DIR, which is "
                                  "not set")
        directory = config.access_credentials_dir / secret
        files = sorted(f for f in directory.glob("*") if f.is_file() and not f.name.startswith(".")) \
            if directory.is_dir() else []
        if not files:
            raise ConversionError(f"{path}.source.secret.secretName", f"the Secret {secret!r} mounted at {directory} "
                                  "has no keys", hint="put one or more SSH public keys in the Secret")
        for file in files:
            keys[f"{secret}-{file.name}"] = _secret_text(file, path, f"the Secret {secret!r}").strip()
    return keys


def _secret_text(file: Path, path: str, what: str) -> str:
    """One key of a mounted Secret as text, bounded and UTF-8; the contents never reach a message or a log."""
    if file.stat().st_size > SECRET_MAX:
        raise ConversionError(path, f"{file.name} in {what} is larger than {SECRET_MAX} bytes")
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConversionError(path, f"{file.name} in {what} is not UTF-8 text") from None


def _secret_files(ctx: _Context, keys: tuple[str, ...], path: str) -> dict[str, str]:
    """The secret's keys as mounted at $KVTOOL_VOLUMES_DIR/<volume>/; contents never logged."""
    directory = _volume_dir(ctx)
    found = {}
    for key in keys:
        file = directory / key
        if not file.is_file():
            continue
        found[key] = _secret_text(file, path, "the secret")
    if not found:
        raise ConversionError(path, f"the secret mounted at {directory} has no key {' or '.join(keys)}")
    return found


def _unsupported_data_volume(ctx: _Context, source: Mapping[str, Any]) -> ResolvedVolume:
    raise ConversionError(ctx.path, "dataVolume is not supported by the kvtool launcher",
                          hint="use a persistentVolumeClaim volume")


_RESOLVERS = {
    "containerDisk": _container_disk,
    "emptyDisk": _empty_disk,
    "hostDisk": _host_disk,
    "persistentVolumeClaim": _pvc,
    "cloudInitNoCloud": _cloud_init,
    "dataVolume": _unsupported_data_volume,
}


def recorded_size(vmi: Mapping[str, Any], volume: str) -> int | None:
    """The size the VMI's status says this volume's disk has (status.volumeStatus), if it says."""
    for entry in (vmi.get("status") or {}).get("volumeStatus") or []:
        if isinstance(entry, Mapping) and entry.get("name") == volume and isinstance(entry.get("size"), int):
            return int(entry["size"])
    return None


def _volume_dir(ctx: _Context) -> Path:
    if ctx.config.volumes_dir is None:
        raise ConversionError(ctx.path, "needs a mount under KVTOOL_VOLUMES_DIR, which is not set")
    directory = ctx.config.volumes_dir / ctx.name
    if not directory.is_dir():
        raise ConversionError(ctx.path, f"nothing is mounted for this volume at {directory}",
                              hint="the launcher pod mounts it at $KVTOOL_VOLUMES_DIR/<volume name>")
    return directory


def _size(value: Any, path: str) -> int:
    """A capacity as bytes, rounded up to whole 512-byte sectors (QEMU's unit for raw disks)."""
    if value is None:
        raise ConversionError(path, "is required", hint="write e.g. 1Gi")
    size = s.quantity_bytes(value, path)
    if size < 512:
        raise ConversionError(path, f"{s.show(value)} is less than one 512-byte sector")
    return size + (-size % 512)


def _create_sparse(file: Path, size: int) -> None:
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    log.info("event=disk-created file=%s bytes=%d", file, size)


def _qemu_img(*args: str) -> None:
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise KvtoolError("qemu-img is not installed", hint="apt-get install qemu-utils")
    result = subprocess.run([qemu_img, *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise KvtoolError(f"qemu-img {args[0]} failed: {result.stderr.strip() or result.returncode}")
