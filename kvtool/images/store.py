"""The local image store: one directory per image, <root>/<name>/image.json + files.

Images are published by renaming a fully written staging directory into place
under a short file lock, so a reader never sees half an image and two
concurrent builds cannot interleave their files. Names become path components,
so they are validated as DNS-1123 labels before anything touches the disk.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvtool import paths
from kvtool.errors import KvtoolError

log = logging.getLogger(__name__)

METADATA = "image.json"
METADATA_VERSION = 1
KINDS = ("kernel", "disk")
DISK_FORMATS = ("qcow2", "raw")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAME_MAX = 63
_CHUNK = 1 << 20
_FILE_FIELDS = ("kernel", "initrd", "disk")


class ImageExistsError(KvtoolError):
    """The name is taken and the caller did not ask to replace it."""


def default_root() -> Path:
    """$KVTOOL_IMAGES, else the images/ dir of kvtool's cache (shared by every $KVTOOL_HOME)."""
    env = os.environ.get("KVTOOL_IMAGES")
    return Path(env).expanduser().absolute() if env else paths.cache_dir() / "images"


def validate_name(name: str) -> str:
    """Return `name` if it is a DNS-1123 label (it becomes a directory name and a Kubernetes name)."""
    if not isinstance(name, str) or len(name) > _NAME_MAX or not _NAME_RE.match(name):
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]}..."
        reason = (f"longer than {_NAME_MAX} characters" if isinstance(name, str) and len(name) > _NAME_MAX
                  else "it must be lowercase letters, digits and '-', starting and ending with a letter or digit")
        raise KvtoolError(f"invalid image name {shown!r}: {reason}",
                          hint="use a DNS-1123 label such as 'tiny-linux' or 'debian-12'")
    return name


@dataclass(frozen=True)
class Image:
    """One stored image. Paths are absolute; image.json stores them relative to the image dir."""

    name: str
    kind: str  # "kernel": kernel + initrd for direct kernel boot; "disk": a bootable disk image
    kernel: Path | None
    initrd: Path | None
    cmdline: str | None  # default kernel arguments (kind "kernel")
    disk: Path | None
    format: str | None  # "qcow2" / "raw" (kind "disk")
    size: int  # bytes of the image's files
    created: str  # ISO 8601, UTC
    digest: str  # sha256 of the sha256sum-style manifest of the files, see files_digest()
    virtual_size: int | None = None  # guest-visible disk size (kind "disk")
    source: str | None = None  # where it came from, e.g. the kernel package and version

    @property
    def directory(self) -> Path:
        return next(p for p in (self.kernel, self.disk, self.initrd) if p is not None).parent

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"version": METADATA_VERSION}
        for field, value in self.__dict__.items():
            doc[field] = value.name if isinstance(value, Path) else value
        return doc

    @classmethod
    def from_json(cls, directory: Path, doc: dict[str, object]) -> Image:
        if doc.get("version") != METADATA_VERSION:
            raise KvtoolError(f"{directory / METADATA} has unsupported version {doc.get('version')!r}",
                              hint=f"remove it with `kvtool image rm {directory.name}` and build or import it again")
        values = {k: v for k, v in doc.items() if k != "version"}
        for field in _FILE_FIELDS:
            if values.get(field) is not None:
                values[field] = directory / _plain_file_name(str(values[field]))
        return cls(**values)  # type: ignore[arg-type]


def files_digest(files: list[Path]) -> str:
    """sha256 over "<sha256>  <file name>\\n" lines sorted by name: `sha256sum * | sha256sum` minus image.json."""
    lines = []
    for f in sorted(files, key=lambda p: p.name):
        h = hashlib.sha256()
        with f.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        lines.append(f"{h.hexdigest()}  {f.name}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


class ImageStore:
    """Images under one root directory. Safe to use from several processes at once."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root).absolute() if root is not None else default_root()

    # ---- reading

    def list(self) -> list[Image]:
        images: list[Image] = []
        if not self.root.is_dir():
            return images
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not (entry / METADATA).is_file():
                continue
            try:
                images.append(self._load(entry))
            except (KvtoolError, ValueError, TypeError) as exc:
                log.warning("skipping unreadable image %s: %s", entry, exc)
        return images

    def find(self, name: str) -> Image | None:
        """The image, or None if the store does not have it."""
        directory = self.root / validate_name(name)
        return self._load(directory) if (directory / METADATA).is_file() else None

    def get(self, name: str) -> Image:
        image = self.find(name)
        if image is None:
            raise KvtoolError(f"image {name!r} is not in the image store at {self.root}",
                              hint=f"run `kvtool image build tiny-linux` or `kvtool image import {name} FILE.qcow2`")
        return image

    def _load(self, directory: Path) -> Image:
        try:
            doc = json.loads((directory / METADATA).read_text())
        except (OSError, ValueError) as exc:
            raise KvtoolError(f"cannot read {directory / METADATA}: {exc}") from exc
        try:
            return Image.from_json(directory, doc)
        except TypeError as exc:
            raise KvtoolError(f"{directory / METADATA} does not describe an image: {exc}") from exc

    # ---- writing

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A private dir inside the store (same filesystem, so publishing is a rename); removed if unused."""
        self.root.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            yield staged
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def add(self, name: str, staged: Path, *, kind: str, kernel: str | None = None, initrd: str | None = None,
            cmdline: str | None = None, disk: str | None = None, format: str | None = None,
            virtual_size: int | None = None, source: str | None = None, force: bool = False) -> Image:
        """Publish the files already written into `staged` (from staging()) as image `name`.

        File arguments are names inside `staged`. Raises ImageExistsError if the name is
        taken and not `force`; with `force` the old image is replaced in one rename.
        """
        validate_name(name)
        if kind not in KINDS:
            raise KvtoolError(f"unknown image kind {kind!r}; expected one of {', '.join(KINDS)}")
        if kind == "kernel" and not (kernel and initrd):
            raise KvtoolError("a 'kernel' image needs a kernel and an initrd")
        if kind == "disk" and not (disk and format in DISK_FORMATS):
            raise KvtoolError(f"a 'disk' image needs a disk file and a format in {DISK_FORMATS}")
        files = [staged / _plain_file_name(f) for f in (kernel, initrd, disk) if f]
        for f in files:
            if not f.is_file():
                raise KvtoolError(f"{f} is missing from the staged image")
        image = Image(
            name=name, kind=kind,
            kernel=self.root / name / kernel if kernel else None,
            initrd=self.root / name / initrd if initrd else None,
            cmdline=cmdline,
            disk=self.root / name / disk if disk else None,
            format=format,
            size=sum(f.stat().st_size for f in files),
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            digest=files_digest(files),
            virtual_size=virtual_size,
            source=source,
        )
        meta = staged / METADATA
        meta.write_text(json.dumps(image.to_json(), indent=2) + "\n")
        for f in [*files, meta]:
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        staged.chmod(0o755)
        self._publish(name, staged, force)
        log.info("image %s published in %s (%d bytes)", name, self.root / name, image.size)
        return image

    def _publish(self, name: str, staged: Path, force: bool) -> None:
        target = self.root / name
        trash = None
        with self._lock():
            if target.exists():
                if not force:
                    raise self._exists_error(name)
                trash = Path(tempfile.mkdtemp(prefix=f".trash-{name}-", dir=self.root))
                os.rename(target, trash / name)
            os.rename(staged, target)
            fsync_dir(self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def reusable(self, name: str, recipe: str, force: bool, say: Callable[[str], None]) -> tuple[Image | None, bool]:
        """For a builder: (the stored image to use as it is, or None to build) and whether the build replaces one.

        Builders end an image's `source` with `recipe <digest of their code>`; another recipe's image is rebuilt.
        """
        existing = self.find(name)
        if existing is None:
            return None, force
        if not force and (existing.source or "").endswith(f"recipe {recipe}"):
            say(f"{name} is already in the image store at {self.root} (--force rebuilds it)")
            return existing, False
        if not force:
            say(f"{name} in the image store was made by another version of kvtool; rebuilding it")
        return None, True

    def add_built(self, name: str, staged: Path, say: Callable[[str], None], **fields: Any) -> Image:
        """add(), for a builder: when another process published the same image first, that one is used."""
        try:
            return self.add(name, staged, **fields)
        except ImageExistsError:
            say(f"{name} was built concurrently by another process; using that one")
            return self.get(name)

    def remove(self, name: str) -> None:
        validate_name(name)
        target = self.root / name
        with self._lock():
            if not target.exists():
                self.get(name)  # raises the not-found error
            trash = Path(tempfile.mkdtemp(prefix=f".trash-{name}-", dir=self.root))
            os.rename(target, trash / name)
            fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def import_disk(self, name: str, file: Path, force: bool = False) -> Image:
        """Copy a qcow2 or raw disk image into the store (checked with `qemu-img info` first)."""
        validate_name(name)
        if not force and (self.root / name).exists():
            raise self._exists_error(name)
        source = Path(file).expanduser().absolute()
        if not source.is_file():
            raise KvtoolError(f"{source} is not a file", hint="pass the path of a .qcow2 or raw disk image")
        info = _qemu_img_info(source)
        fmt, virtual_size = _check_disk_info(source, info)
        with self.staging() as staged:
            disk_name = f"disk.{'img' if fmt == 'raw' else fmt}"
            _sparse_copy(source, staged / disk_name)
            copied = _qemu_img_info(staged / disk_name, fmt)
            if copied.get("virtual-size") != info.get("virtual-size"):
                raise KvtoolError(f"copy of {source} differs from the original (did it change while copying?)")
            return self.add(name, staged, kind="disk", disk=disk_name, format=fmt,
                            virtual_size=virtual_size, source=str(source), force=force)

    def _exists_error(self, name: str) -> ImageExistsError:
        return ImageExistsError(f"image {name!r} already exists in the image store at {self.root}",
                                hint="pass --force to replace it, or `kvtool image rm` it first")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _plain_file_name(name: str) -> str:
    """Refuse file names that would leave the image dir (image.json is user-editable)."""
    if not name or "/" in name or name in (".", "..", METADATA):
        raise KvtoolError(f"bad file name {name!r} in image metadata")
    return name


def _qemu_img_info(path: Path, fmt: str | None = None) -> dict[str, object]:
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        raise KvtoolError("qemu-img is not installed", hint="apt-get install qemu-utils")
    cmd = [qemu_img, "info", "--output=json", *(["-f", fmt] if fmt else []), str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise KvtoolError(f"qemu-img cannot read {path}: {result.stderr.strip()}",
                          hint="is it a disk image, and not in use by a running VM?")
    return json.loads(result.stdout)


def _check_disk_info(path: Path, info: dict[str, object]) -> tuple[str, int]:
    """The disk's format and virtual size, once qemu-img's report shows the store can take it."""
    fmt = str(info.get("format"))
    if fmt not in DISK_FORMATS:
        raise KvtoolError(f"{path} is a {fmt} image; the store takes {' or '.join(DISK_FORMATS)}",
                          hint=f"convert it: qemu-img convert -O qcow2 {path} {path.with_suffix('.qcow2')}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise KvtoolError(f"{path} has a backing file ({info.get('backing-filename')}); the store keeps "
                          "self-contained images",
                          hint=f"flatten it: qemu-img convert -O qcow2 {path} flat.qcow2")
    if info.get("encrypted"):
        raise KvtoolError(f"{path} is encrypted; the store takes unencrypted images")
    specific = info.get("format-specific")
    if isinstance(specific, dict) and isinstance(specific.get("data"), dict) and specific["data"].get("data-file"):
        raise KvtoolError(f"{path} keeps its data in an external data file; the store keeps self-contained images")
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise KvtoolError(f"{path} is empty (virtual size {size})")
    # qemu-img calls any file it does not recognise "raw" (rounding its size up to a sector);
    # a real raw disk is a whole number of 512-byte sectors.
    file_size = path.stat().st_size
    if fmt == "raw" and file_size % 512:
        raise KvtoolError(f"{path} does not look like a disk image: it is not a qcow2 file, and its size "
                          f"({file_size} bytes) is not a whole number of 512-byte sectors",
                          hint="pass a .qcow2 file or a raw disk image")
    return fmt, size


def _sparse_copy(src: Path, dst: Path) -> None:
    """Copy, leaving holes where the source has zero blocks (raw images are often mostly empty)."""
    zero = bytes(_CHUNK)
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(_CHUNK):
            if chunk == zero[:len(chunk)]:
                fout.seek(len(chunk), os.SEEK_CUR)
            else:
                fout.write(chunk)
        fout.truncate()


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
