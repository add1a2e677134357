"""The debian-12 builder's pure steps: the disk's boot sectors and partition table, GRUB's menu, the rootfs
made shareable. (Booting the built image is tests/test_debian_guest.py's, on the cluster.)"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvtool.errors import BuildError
from kvtool.images import debian_cloud as dc


def test_the_disk_has_grubs_boot_code_one_linux_partition_and_core_img_before_it(tmp_path: Path) -> None:
    boot = bytes(range(256)) * 2
    core = b"CORE" * 10000
    raw = tmp_path / "disk.raw"
    dc.write_disk(raw, boot, core)
    assert raw.stat().st_size == dc.DISK_SIZE and raw.stat().st_blocks * 512 < 1 << 20  # sparse
    with raw.open("rb") as fh:
        data = fh.read(dc.PARTITION_START * dc.SECTOR)
    assert data[:440] == boot[:440], "boot.img's code, as grub-install leaves it"
    assert data[510:512] == b"\x55\xaa"
    status, ptype, start, sectors = struct.unpack_from("<B3xB3xII", data, 446)
    assert (status, ptype, start) == (0x80, 0x83, dc.PARTITION_START)
    assert (start + sectors) * dc.SECTOR == dc.DISK_SIZE
    assert data[462:510] == bytes(48), "one partition only"
    assert data[512:512 + len(core)] == core, "core.img from sector 1, where boot.img looks"
    assert not any(data[512 + len(core):dc.PARTITION_START * dc.SECTOR])


def test_a_boot_img_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"boot\.img is 100 bytes"):
        dc.write_disk(tmp_path / "d", b"x" * 100, b"")


def test_grubs_menu_boots_the_kernel_by_uuid_with_a_serial_console() -> None:
    cfg = dc.grub_config("6.1.0-41-cloud-amd64", "0b3f7c1e-0000-4000-8000-000000000001")
    assert "linux /boot/vmlinuz-6.1.0-41-cloud-amd64 root=UUID=0b3f7c1e-0000-4000-8000-000000000001 ro" in cfg
    assert "console=ttyS0,115200n8 no_timer_check" in cfg and "initrd /boot/initrd.img-6.1.0-41-cloud-amd64" in cfg
    assert "terminal_output serial" in cfg and "set timeout=0" in cfg


def _tree(root: Path) -> Path:
    for d in ("boot", "etc/ssh", "etc/cloud/cloud.cfg.d", "var/lib/apt/lists", "var/lib/dbus"):
        (root / d).mkdir(parents=True)
    (root / "boot/vmlinuz-6.1.0-41-cloud-amd64").write_bytes(b"k")
    (root / "boot/initrd.img-6.1.0-41-cloud-amd64").write_bytes(b"i")
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key"):
        (root / "etc/ssh" / name).write_text("secret")
    (root / "etc/ssh/sshd_config").write_text("# kept\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "var/lib/dbus/machine-id").write_text("x")
    (root / "etc/hostname").write_text("builder\n")
    (root / "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease").write_text("x")
    (root / "var/lib/apt/lists/lock").write_text("")
    return root


def test_the_rootfs_keeps_nothing_one_vm_must_not_share(tmp_path: Path) -> None:
    root = _tree(tmp_path / "rootfs")
    fs_uuid = "0b3f7c1e-0000-4000-8000-000000000001"
    assert dc.configure_rootfs(root, fs_uuid) == "vmlinuz-6.1.0-41-cloud-amd64"
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == ["sshd_config"]
    assert (root / "etc/machine-id").read_text() == ""  # empty: systemd makes one at first boot
    assert not (root / "var/lib/dbus/machine-id").exists() and not (root / "etc/hostname").exists()
    assert [p.name for p in (root / "var/lib/apt/lists").iterdir()] == ["lock"]
    assert (root / "etc/fstab").read_text().startswith(f"UUID={fs_uuid} / ext4 ")
    assert fs_uuid in (root / "boot/grub/grub.cfg").read_text()
    assert "NoCloud" in (root / "etc/cloud/cloud.cfg.d/90-kvtool.cfg").read_text()


def test_a_rootfs_without_its_initrd_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "rootfs")
    (root / "boot/initrd.img-6.1.0-41-cloud-amd64").unlink()
    with pytest.raises(BuildError, match=r"no initrd\.img-6\.1\.0-41-cloud-amd64"):
        dc.configure_rootfs(root, "u")
