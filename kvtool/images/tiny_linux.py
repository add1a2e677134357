"""Build "tiny-linux": Debian's cloud kernel plus a busybox initramfs, for direct kernel boot.

Every VM test boots this guest, so it is made only from Debian packages already
reachable here (no image downloads) and boots to userspace in a few seconds
under TCG. What the guest does and prints is in guest_scripts.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from kvtool.errors import BuildError
from kvtool.images import cpio, debian, guest_scripts, kmod, store

log = logging.getLogger(__name__)

NAME = "tiny-linux"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
# `quiet`: every console byte is an emulated UART write under TCG. panic=-1: reboot at once on a panic.
# The rest skips boot work this guest never uses, measured with initcall_debug under TCG: crypto
# self-tests (cryptomgr.notests, the kdf108 test) and the encrypted-keys and kprobe-trace setup, ~0.8 s.
DEFAULT_CMDLINE = ("console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check cryptomgr.notests "
                   "initcall_blacklist=crypto_kdf108_init,init_encrypted,init_kprobe_trace")
# /init loads these groups at different points (see guest_scripts.INIT), each after its dependencies.
# virtio_pci is the transport every virtio driver needs; virtio_blk/virtio_scsi/ata_piix + sr_mod + isofs
# read a NoCloud seed on a virtio disk or a cdrom; button + evdev deliver the ACPI power button to acpid.
# The cloud kernel has no AHCI driver: a seed on a q35 SATA cdrom is not seen (use virtio or scsi).
MODULE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("net", ("virtio_pci", "virtio_net")),
    ("acpi", ("button", "evdev")),
    ("storage", ("virtio_blk", "virtio_scsi", "ata_piix", "sr_mod", "isofs")),
)
# Scan SCSI buses synchronously so the cdrom exists when /init looks for the seed.
MODULE_PARAMS = {"scsi_mod": "scan=sync"}

Progress = Callable[[str], None]


def recipe() -> str:
    """A digest of everything but the downloaded packages that shapes the image: this builder, the guest's
    scripts, the cpio and module code. A stored image made by another recipe is rebuilt, so a changed
    guest script or command line reaches the VMs instead of a stale cached copy."""
    digest = hashlib.sha256()
    for module in (sys.modules[__name__], guest_scripts, cpio, kmod):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:16]


def build(image_store: store.ImageStore, force: bool = False, progress: Progress | None = None) -> store.Image:
    """Return the tiny-linux image, building it first if the store lacks it, holds one made by another
    recipe, or `force`."""
    say = progress or log.info
    existing, force = image_store.reusable(NAME, recipe(), force, say)
    if existing is not None:
        return existing
    busybox = _static_busybox()
    package = debian.dependency(KERNEL_META_PACKAGE, "linux-image-")
    version, arch = debian.candidate(package)
    say(f"kernel package: {package} {version}")
    deb = debian.download(package, version, arch)
    say(f"unpacking {deb.name}")
    with tempfile.TemporaryDirectory(prefix="kvtool-kernel-") as tmp:
        root = Path(tmp)
        debian.extract(deb, root)
        vmlinuz = _one(root.glob("boot/vmlinuz-*"), f"boot/vmlinuz-* in {deb.name}")
        kernel_release = vmlinuz.name.removeprefix("vmlinuz-")
        modules = grouped_modules(kmod.ModuleTree(root / "lib/modules" / kernel_release))
        say(f"modules: {' '.join(m.name for _, m in modules)}")
        initramfs = build_initramfs(busybox, modules)
        say(f"initramfs: {len(initramfs)} bytes (gzip)")
        with image_store.staging() as staged:
            shutil.copyfile(vmlinuz, staged / "vmlinuz")
            (staged / "initrd.img").write_bytes(initramfs)
            source = f"{package} {version}; {_busybox_version(busybox)}; recipe {recipe()}"
            image = image_store.add_built(NAME, staged, say, kind="kernel", kernel="vmlinuz", initrd="initrd.img",
                                          cmdline=DEFAULT_CMDLINE, source=source, force=force)
    say(f"built image {image.name} ({image.size} bytes) in {image.directory}")
    return image


def grouped_modules(tree: kmod.ModuleTree) -> list[tuple[str, kmod.Module]]:
    """(group, module) in load order; a module shared by groups is loaded with the first that needs it."""
    seen: set[str] = set()
    result = []
    for group, names in MODULE_GROUPS:
        for module in tree.load_order(list(names)):
            if module.name not in seen:
                seen.add(module.name)
                result.append((group, module))
    return result


def build_initramfs(busybox: Path, modules: list[tuple[str, kmod.Module]]) -> bytes:
    """The gzip'd cpio archive: busybox and its applet links, the scripts, the modules. Same inputs, same bytes."""
    gs = guest_scripts
    dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "etc/kvtool", "etc/acpi", "etc/acpi/PWRF",
            "lib", gs.MODULES_DIR, "dev", "proc", "sys", "run", "var", "var/log", "mnt", "root", "www"]
    entries = [cpio.Entry.dir(d) for d in dirs]
    entries += [
        cpio.Entry.dir("tmp", 0o1777),
        cpio.Entry.chardev("dev/console", 5, 1),
        cpio.Entry.chardev("dev/null", 1, 3, 0o666),
        cpio.Entry.file("bin/busybox", busybox.read_bytes(), 0o755),
        cpio.Entry.file("init", gs.render(gs.INIT).encode(), 0o755),
        cpio.Entry.file(gs.UDHCPC_SCRIPT, gs.render(gs.UDHCPC).encode(), 0o755),
        cpio.Entry.file(gs.POWEROFF_SCRIPT, gs.render(gs.POWEROFF).encode(), 0o755),
        cpio.Entry.symlink(gs.ACPI_POWER_HANDLER, "/" + gs.POWEROFF_SCRIPT),
        cpio.Entry.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        cpio.Entry.file("etc/group", b"root:x:0:\n"),
        cpio.Entry.file(gs.MODULES_LIST, "".join(
            f"{group} {m.name} {MODULE_PARAMS.get(m.name, '')}".rstrip() + "\n" for group, m in modules).encode()),
    ]
    entries += [cpio.Entry.file(f"{gs.MODULES_DIR}/{m.name}.ko", m.path.read_bytes()) for _, m in modules]
    taken = {e.path for e in entries}
    for applet in _applets(busybox):
        if applet not in taken and applet != "linuxrc" and applet.rsplit("/", 1)[0] in taken:
            entries.append(cpio.Entry.symlink(applet, "/bin/busybox"))
            taken.add(applet)
    raw = io.BytesIO()
    cpio.write(raw, entries)
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)  # -9: 6x slower, 0.5% smaller


def _static_busybox() -> Path:
    """busybox-static's binary: the initramfs has no libc, so a dynamic busybox would not start."""
    found = shutil.which("busybox")
    hint = "apt-get install busybox-static"
    if not found:
        raise BuildError("busybox is not installed", hint=hint)
    path = Path(found).resolve()
    if _elf_interpreter(path.read_bytes()):
        raise BuildError(f"{path} is dynamically linked; the initramfs needs a static busybox", hint=hint)
    return path


def _elf_interpreter(data: bytes) -> bool:
    """True if a 64-bit ELF has a PT_INTERP program header (i.e. needs a dynamic loader)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise BuildError("busybox is not a 64-bit ELF executable")
    e_phoff, = struct.unpack_from("<Q", data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)
    return any(struct.unpack_from("<I", data, e_phoff + i * e_phentsize)[0] == 3 for i in range(e_phnum))


def _applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True, timeout=30)
    return sorted(line.strip() for line in out.stdout.splitlines() if line.strip())


def _busybox_version(busybox: Path) -> str:
    out = subprocess.run([str(busybox)], capture_output=True, text=True, timeout=30)
    first = (out.stdout or out.stderr).splitlines()[:1]
    return first[0].split(" multi-call")[0] if first else "busybox"


def _one(paths: Iterable[Path], what: str) -> Path:
    found = sorted(paths)
    if len(found) != 1:
        raise BuildError(f"expected exactly one {what}, found {len(found)}")
    return found[0]
