"""Build "debian-12": a bootable Debian 12 cloud disk (qcow2) from Debian packages, usable as a containerDisk.

What Debian's own cloud images hold, made without loop devices or mounts:
  1. mmdebstrap installs the packages (the cloud kernel, systemd, cloud-init, OpenSSH, GRUB's BIOS
     modules) into a directory, then this module writes fstab, GRUB's config and cloud-init's.
  2. mke2fs -d writes that directory as the ext4 root partition, 1 MiB into a raw disk file.
  3. GRUB's BIOS boot code, from the guest's own grub-pc-bin, goes where grub-install puts it:
     boot.img in the MBR (beside a one-partition table written here) and a core.img made by
     grub-mkimage in the gap before the partition, with every module it needs built in.
  4. qemu-img converts the raw disk to qcow2.
The guest then boots by itself (SeaBIOS → GRUB → kernel → systemd) from any disk bus, finds its root by
UUID, has a login prompt on the serial console, and runs cloud-init's NoCloud datasource: userData,
networkData, and the SSH keys of accessCredentials. SSH host keys are made on each VM's first boot.

Cached like tiny-linux: a stored image made by the same recipe (this file's digest) is reused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
import uuid
from pathlib import Path

from kvtool import paths
from kvtool.errors import BuildError
from kvtool.images import debian, store

log = logging.getLogger(__name__)

NAME = "debian-12"
SUITE = "bookworm"
# A cloud image's packages on minbase: the cloud kernel (virtio built for VMs), systemd as init, cloud-init with
# ifupdown + a DHCP client (its ENI renderer), OpenSSH, growpart/resize2fs for disks bigger than the image,
# GRUB's i386-pc modules (for grub-mkimage only: nothing installs GRUB on the disk at boot), and a few tools a
# lab's user expects at a shell.
PACKAGES = (
    "linux-image-cloud-amd64", "grub-pc-bin", "systemd-sysv", "udev", "dbus", "cloud-init", "openssh-server",
    "ifupdown", "isc-dhcp-client", "netbase", "iproute2", "iputils-ping", "cloud-guest-utils", "e2fsprogs",
    "sudo", "procps", "less", "nano", "ca-certificates",
)
DISK_SIZE = 3 << 30  # the guest-visible size; the qcow2 file holds only what is written
SECTOR = 512
PARTITION_START = 2048  # sectors: 1 MiB, where every partitioning tool starts the first partition
BLOCK = 4096
# ttyS0 is the console `kvtool console` attaches to; systemd starts a login prompt there by itself.
# no_timer_check: under TCG, with ten guests booting on two cores, the kernel's check that the IO-APIC timer
# ticks can run out of time and panic ("IO-APIC + timer doesn't work!"; seen in bench/roster.py --students 10),
# the reason tiny-linux's command line has it too.
CMDLINE = "console=tty0 console=ttyS0,115200n8 no_timer_check"
# GRUB finds its config on the disk it booted from, partition 1; everything it runs is built into core.img.
GRUB_PREFIX = "(,msdos1)/boot/grub"
GRUB_MODULES = ("biosdisk", "part_msdos", "ext2", "normal", "linux", "serial", "terminal", "echo", "test")
# NoCloud (the ISO kvtool attaches, label cidata) only: without a list cloud-init probes for a dozen clouds.
CLOUD_CFG = "datasource_list: [ NoCloud, None ]\n"

Progress = debian.Progress


def recipe() -> str:
    """This builder's digest: a stored image made by another recipe is rebuilt."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def build(image_store: store.ImageStore, force: bool = False, progress: Progress | None = None) -> store.Image:
    """Return the debian-12 image, building it first if the store lacks it, holds another recipe's, or `force`."""
    say = progress or log.info
    existing, force = image_store.reusable(NAME, recipe(), force, say)
    if existing is not None:
        return existing
    if os.geteuid() != 0:
        raise BuildError(f"building {NAME} needs root: mmdebstrap installs packages into a chroot and mke2fs must "
                         "copy files owned by other users", hint=f"sudo kvtool image build {NAME}")
    tools = {name: debian.tool(name, package) for name, package in
             (("mmdebstrap", "mmdebstrap"), ("mke2fs", "e2fsprogs"), ("qemu-img", "qemu-utils"))}
    work_parent = paths.cache_dir() / "build"
    work_parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{NAME}-", dir=work_parent))
    try:
        rootfs, raw = work / "rootfs", work / "disk.raw"
        say(f"{NAME}: mmdebstrap {SUITE} with {len(PACKAGES)} packages (downloads from Debian's mirror; minutes)")
        debian.run_logged([tools["mmdebstrap"], "--mode=root", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                           '--aptopt=Acquire::Languages "none"', SUITE, str(rootfs)],
                          "mmdebstrap", say, env=dict(os.environ), forward=lambda line: line.startswith("I: "),
                          timeout=3600, hint="Debian's mirror must be reachable")
        fs_uuid = str(uuid.uuid4())
        kernel = configure_rootfs(rootfs, fs_uuid)
        core = _grub_core(rootfs)
        boot = (rootfs / "usr/lib/grub/i386-pc/boot.img").read_bytes()
        say(f"{NAME}: writing the root filesystem (ext4, {DISK_SIZE >> 30} GiB disk)")
        write_disk(raw, boot, core)
        blocks = (DISK_SIZE - PARTITION_START * SECTOR) // BLOCK
        debian.run([tools["mke2fs"], "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-L", "root", "-U", fs_uuid,
                    "-E", f"offset={PARTITION_START * SECTOR}", "-d", str(rootfs), str(raw), str(blocks)],
                   "mke2fs -d", timeout=1800, hint=None)
        debian.remove_tree(rootfs)
        with image_store.staging() as staged:
            say(f"{NAME}: converting to qcow2")
            debian.run([tools["qemu-img"], "convert", "-f", "raw", "-O", "qcow2", str(raw), str(staged / "disk.qcow2")],
                       "qemu-img convert", timeout=1800, hint=None)
            source = f"mmdebstrap {SUITE} + {kernel}; recipe {recipe()}"
            image = image_store.add_built(NAME, staged, say, kind="disk", disk="disk.qcow2", format="qcow2",
                                          virtual_size=DISK_SIZE, source=source, force=force)
    finally:
        debian.remove_tree(work)
    say(f"built image {image.name} ({image.size} bytes) in {image.directory}")
    return image


def configure_rootfs(rootfs: Path, fs_uuid: str) -> str:
    """Make an installed tree a cloud image: fstab, GRUB's config, cloud-init's; nothing one VM must not share.

    Returns the kernel's file name. Removed: SSH host keys (cloud-init makes each VM its own), the machine id
    (systemd makes one at first boot), the builder's hostname and resolv.conf, apt's package lists.
    """
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(f"expected one kernel in the image's /boot, found {[k.name for k in kernels]}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    if not (rootfs / "boot" / f"initrd.img-{release}").is_file():
        raise BuildError(f"the image has no initrd.img-{release}: initramfs-tools did not run in the chroot")
    (rootfs / "etc/fstab").write_text(f"UUID={fs_uuid} / ext4 defaults,errors=remount-ro 0 1\n")
    grub = rootfs / "boot/grub"
    grub.mkdir(parents=True, exist_ok=True)
    (grub / "grub.cfg").write_text(grub_config(release, fs_uuid))
    (rootfs / "etc/cloud/cloud.cfg.d/90-kvtool.cfg").write_text(CLOUD_CFG)
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc/machine-id").write_text("")
    for stale in ("var/lib/dbus/machine-id", "etc/hostname", "etc/resolv.conf"):
        (rootfs / stale).unlink(missing_ok=True)
    for cached in (rootfs / "var/lib/apt/lists").glob("*_*"):
        cached.unlink()
    return kernels[0].name


def grub_config(release: str, fs_uuid: str) -> str:
    """GRUB's menu: straight to the kernel, on the serial console as well as the screen."""
    return (
        "serial --unit=0 --speed=115200\n"
        "terminal_input serial console\n"
        "terminal_output serial console\n"
        "set timeout=0\n"
        'menuentry "Debian GNU/Linux 12" {\n'
        f"  linux /boot/vmlinuz-{release} root=UUID={fs_uuid} ro {CMDLINE}\n"
        f"  initrd /boot/initrd.img-{release}\n"
        "}\n"
    )


def _grub_core(rootfs: Path) -> bytes:
    """core.img from the guest's grub-mkimage (run in its chroot: its GRUB, its modules)."""
    out = "/boot/grub/core.img"
    debian.run(["chroot", str(rootfs), "grub-mkimage", "-O", "i386-pc", "-o", out, "-p", GRUB_PREFIX,
                *GRUB_MODULES], "grub-mkimage", hint=None)
    core = (rootfs / out.lstrip("/")).read_bytes()
    (rootfs / out.lstrip("/")).unlink()
    if len(core) > (PARTITION_START - 1) * SECTOR:
        raise BuildError(f"GRUB's core.img is {len(core)} bytes, more than the gap before the partition")
    return core


def write_disk(raw: Path, boot: bytes, core: bytes) -> None:
    """A sparse raw disk: GRUB's boot.img with a one-partition MBR, core.img from sector 1; the partition is empty.

    boot.img loads sector 1 (its default) and core.img's first sector loads the rest (grub-mkimage wrote its
    length), so neither needs grub-install's patching.
    """
    if len(boot) != SECTOR:
        raise BuildError(f"GRUB's boot.img is {len(boot)} bytes, expected {SECTOR}")
    mbr = bytearray(boot)
    mbr[440:446] = struct.pack("<IH", int.from_bytes(os.urandom(4), "little"), 0)  # disk signature
    sectors = DISK_SIZE // SECTOR - PARTITION_START
    # Active, Linux (0x83), LBA start and length; the CHS fields say "use LBA" (0xFE, 0xFFFF) as tools do.
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff", PARTITION_START, sectors)
    mbr[446:510] = entry + bytes(48)
    mbr[510:512] = b"\x55\xaa"
    with raw.open("wb") as fh:
        fh.write(mbr)
        fh.write(core)
        fh.truncate(DISK_SIZE)

