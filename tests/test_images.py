"""The image store and the tiny-linux guest, with real tools only: qemu-img, apt, dpkg, busybox, QEMU (TCG).

The store lives in a temporary $KVTOOL_IMAGES for the session; the kernel .deb
is shared through kvtool's normal cache, so only the first run downloads it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvtool.errors import KvtoolError
from kvtool.images import guest_scripts, store, tiny_linux, usage
from tests import guest_helpers
from tests.conftest import kvtool

READY = r"^KVTOOL-GUEST-READY hostname=(\S+) uptime=([0-9.]+)$"
IP_LINE = r"^KVTOOL-GUEST-IP (.*)$"
BOOT_TIMEOUT = 60


@pytest.fixture(scope="session")
def image_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="kvt-images-"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KVTOOL_IMAGES", str(root))
        yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def images(image_root: Path) -> store.ImageStore:
    return store.ImageStore()


@pytest.fixture(scope="session")
def tiny(image_root: Path) -> store.Image:
    for tool, package in (("apt-get", "apt"), ("dpkg", "dpkg"), ("busybox", "busybox-static")):
        guest_helpers.require_tool(tool, package)
    messages: list[str] = []
    image = tiny_linux.build(store.ImageStore(image_root), progress=messages.append)
    assert messages and messages[-1].startswith("built image tiny-linux"), messages
    return image


def qcow2(directory: Path, name: str = "disk.qcow2", size: str = "64M", *extra: str) -> Path:
    path = directory / name
    qemu_img = guest_helpers.require_tool("qemu-img", "qemu-utils")
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", *extra, str(path), size], check=True, timeout=30)
    return path


# ---- store


def test_import_qcow2_get_list_remove(images: store.ImageStore, tmp_path: Path) -> None:
    source = qcow2(tmp_path)
    image = images.import_disk("disk-a", source)
    assert (image.name, image.kind, image.format, image.virtual_size) == ("disk-a", "disk", "qcow2", 64 << 20)
    assert image.disk is not None and image.disk.is_file() and image.disk.parent == images.root / "disk-a"
    assert image.size == image.disk.stat().st_size
    assert image.digest == store.files_digest([image.disk])
    assert images.get("disk-a") == image
    assert "disk-a" in [i.name for i in images.list()]

    with pytest.raises(store.ImageExistsError, match="already exists") as exc:
        images.import_disk("disk-a", source)
    assert "--force" in (exc.value.hint or "")
    assert images.import_disk("disk-a", qcow2(tmp_path, "bigger.qcow2", "128M"), force=True).virtual_size == 128 << 20

    images.remove("disk-a")
    assert images.find("disk-a") is None
    assert not [p.name for p in images.root.iterdir() if p.name.startswith((".staging-", ".trash-"))]


def test_usage_check_names_a_disk_booted_as_kernel_and_reads_each_image_once(
        images: store.ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images.import_disk("disk-a", qcow2(tmp_path))
    reads: list[str] = []
    find = images.find
    monkeypatch.setattr(images, "find", lambda name: reads.append(name) or find(name))
    check = usage.checker(images)
    vm = {"kind": "VirtualMachine", "spec": {"template": {"spec": {"domain": {"firmware": {"kernelBoot": {
        "container": {"image": "disk-a"}}}}, "volumes": [{"name": "root", "containerDisk": {"image": "disk-a"}}]}}}}
    for _ in range(3):
        assert check(vm) == [("spec.template.spec.domain.firmware.kernelBoot.container.image",
                              "image 'disk-a' is a disk image, not a kernel: attach it as a containerDisk volume "
                              "instead")]
    assert reads == ["disk-a"], "one read of the store per image name, however many VMs name it"


def test_import_raw(images: store.ImageStore, tmp_path: Path) -> None:
    raw = tmp_path / "disk.img"
    with raw.open("wb") as f:
        f.truncate(8 << 20)
        f.write(b"\xeb\x63\x90")  # not all zeros: the copy keeps data and holes
    image = images.import_disk("raw-disk", raw)
    assert (image.format, image.virtual_size) == ("raw", 8 << 20)
    assert image.disk is not None and image.disk.read_bytes() == raw.read_bytes()
    images.remove("raw-disk")


@pytest.mark.parametrize("name", ["../x", "Bad_Name", "", "-x", "x-", "a/b", ".", "x" * 64, "tiny.linux"])
def test_invalid_names_are_refused(images: store.ImageStore, tmp_path: Path, name: str) -> None:
    source = qcow2(tmp_path)
    for call in (lambda: images.import_disk(name, source), lambda: images.get(name), lambda: images.remove(name)):
        with pytest.raises(KvtoolError, match="invalid image name") as exc:
            call()
        assert "DNS-1123" in (exc.value.hint or "")
    assert not (tmp_path / "x").exists() and not (images.root.parent / "x").exists()


def test_invalid_name_message_says_why(images: store.ImageStore) -> None:
    with pytest.raises(KvtoolError) as exc:
        images.get("Bad_Name")
    assert exc.value.message == ("invalid image name 'Bad_Name': it must be lowercase letters, digits and '-', "
                                 "starting and ending with a letter or digit")


def test_missing_image_error(images: store.ImageStore) -> None:
    with pytest.raises(KvtoolError) as exc:
        images.get("nope")
    assert exc.value.message == f"image 'nope' is not in the image store at {images.root}"
    assert exc.value.hint == "run `kvtool image build tiny-linux` or `kvtool image import nope FILE.qcow2`"


def test_import_refuses_what_is_not_a_self_contained_disk(images: store.ImageStore, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a disk\n")
    with pytest.raises(KvtoolError, match="does not look like a disk image"):
        images.import_disk("text", text)
    base = qcow2(tmp_path, "base.qcow2")
    overlay = qcow2(tmp_path, "overlay.qcow2", "64M", "-b", str(base), "-F", "qcow2")
    with pytest.raises(KvtoolError, match="has a backing file"):
        images.import_disk("overlay", overlay)
    with pytest.raises(KvtoolError, match="is not a file"):
        images.import_disk("missing", tmp_path / "missing.qcow2")
    assert images.find("text") is None and images.find("overlay") is None


def test_concurrent_forced_imports_leave_one_whole_image(image_root: Path, tmp_path: Path) -> None:
    sources = [qcow2(tmp_path, f"d{i}.qcow2", f"{16 * (i + 1)}M") for i in range(4)]
    procs = [subprocess.Popen([*guest_helpers.KVTOOL_CLI, "image", "import", "racy", str(s), "--force"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in sources]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    image = store.ImageStore(image_root).get("racy")
    assert image.virtual_size in {16 << 20, 32 << 20, 48 << 20, 64 << 20}
    assert image.disk is not None and image.digest == store.files_digest([image.disk])
    assert not [p.name for p in image_root.iterdir() if p.name.startswith((".staging-", ".trash-"))]
    store.ImageStore(image_root).remove("racy")


def test_cli_import_list_rm(image_root: Path, tmp_path: Path) -> None:
    source = qcow2(tmp_path)
    result = kvtool("image", "import", "cli-disk", str(source), check=True)
    assert result.stdout.startswith("cli-disk: qcow2 disk")
    listing = kvtool("image", "list", check=True).stdout.splitlines()
    assert listing[0].split() == ["NAME", "KIND", "SIZE", "CREATED"]
    assert any(line.split()[:2] == ["cli-disk", "disk"] for line in listing[1:])
    kvtool("image", "rm", "cli-disk", check=True)
    for args, expected in ((("image", "rm", "cli-disk"), "Error: image 'cli-disk' is not in the image store"),
                           (("image", "import", "Bad_Name", str(source)), "Error: invalid image name 'Bad_Name'")):
        result = kvtool(*args)
        assert result.returncode == 1
        assert result.stderr.startswith(expected) and "hint:" in result.stderr
        assert "Traceback" not in result.stderr


# ---- tiny-linux


def test_build_tiny_linux(tiny: store.Image, image_root: Path) -> None:
    assert (tiny.name, tiny.kind) == ("tiny-linux", "kernel")
    assert tiny.kernel is not None and tiny.initrd is not None
    assert tiny.kernel.stat().st_size > 1 << 20 and tiny.initrd.stat().st_size > 1 << 20
    assert tiny.cmdline is not None and "console=ttyS0" in tiny.cmdline
    assert tiny.digest == store.files_digest([tiny.kernel, tiny.initrd])
    assert tiny.source is not None and tiny.source.endswith(f"recipe {tiny_linux.recipe()}")
    again = tiny_linux.build(store.ImageStore(image_root))  # idempotent: the stored image, not a rebuild
    assert again == tiny and again.created == tiny.created
    result = kvtool("image", "build", "tiny-linux", check=True)
    assert result.stdout.strip().startswith("tiny-linux: kernel image")
    assert "already in the image store" in result.stderr


def test_tiny_linux_made_by_another_recipe_is_rebuilt(tiny: store.Image, tmp_path: Path) -> None:
    """A cached image from an older kvtool (other guest scripts or command line) must not reach new VMs."""
    shutil.copytree(tiny.directory, tmp_path / "tiny-linux")
    meta = tmp_path / "tiny-linux" / "image.json"
    doc = json.loads(meta.read_text())
    meta.write_text(json.dumps({**doc, "source": doc["source"].rsplit(" ", 1)[0] + " 0123456789abcdef",
                                  "cmdline": "old"}))
    messages: list[str] = []
    rebuilt = tiny_linux.build(store.ImageStore(tmp_path), progress=messages.append)
    assert any("made by another version of kvtool; rebuilding" in m for m in messages), messages
    assert rebuilt.cmdline == tiny_linux.DEFAULT_CMDLINE and rebuilt.source == tiny.source
    assert rebuilt.digest == tiny.digest  # same packages, same recipe: the same bytes


def test_boot_ready_dhcp_and_http(tiny: store.Image, tmp_path: Path) -> None:
    port = guest_helpers.free_port()
    with guest_helpers.booted(tiny, tmp_path, http_port=port, append="kvtool.hostname=web1") as guest:
        ready = guest.wait_for(READY, BOOT_TIMEOUT)
        assert ready.group(1) == "web1" and float(ready.group(2)) > 0
        assert guest.wait_for(IP_LINE, BOOT_TIMEOUT).group(1) == "eth0 10.0.2.15/24 gw=10.0.2.2"
        guest.wait_for(f"^{guest_scripts.MARKER_HTTP} port=80$", BOOT_TIMEOUT)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as response:
            assert response.read().decode().strip() == "kvtool guest web1"
        assert guest.console().count(guest_scripts.MARKER_READY) == 1
        assert "Kernel panic" not in guest.console()


def test_boot_without_nic_says_so_and_carries_on(tiny: store.Image, tmp_path: Path) -> None:
    with guest_helpers.booted(tiny, tmp_path, nic=False) as guest:
        assert guest.wait_for(IP_LINE, BOOT_TIMEOUT).group(1) == "none"
        guest.wait_for(f"^{guest_scripts.MARKER_HTTP} port=80$", 30)


@pytest.mark.parametrize("bus", ["virtio", "scsi-cdrom", "ide-cdrom"])
def test_cloud_init_seed(tiny: store.Image, tmp_path: Path, bus: str) -> None:
    token = f"user-data-ran-{os.getpid()}-{bus}"
    iso = guest_helpers.make_seed_iso(tmp_path, "instance-id: abc\nlocal-hostname: vm1\n",
                                      f"#!/bin/sh\necho {token} as $(hostname)\n")
    port = guest_helpers.free_port()
    with guest_helpers.booted(tiny, tmp_path, seed_iso=iso, seed_bus=bus, http_port=port) as guest:
        guest.wait_for("^KVTOOL-GUEST-CLOUDINIT instance-id=abc local-hostname=vm1$", BOOT_TIMEOUT)
        guest.wait_for(f"^{token} as vm1$", 30)
        guest.wait_for("^KVTOOL-GUEST-USERDATA-DONE exit=0$", 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as response:
            assert response.read().decode().strip() == "kvtool guest vm1"


def test_acpi_powerdown_through_qmp(tiny: store.Image, tmp_path: Path) -> None:
    with guest_helpers.booted(tiny, tmp_path) as guest:
        guest.wait_for(IP_LINE, BOOT_TIMEOUT)  # acpid runs before DHCP starts
        guest.qmp("system_powerdown")
        guest.wait_for(f"^{guest_scripts.MARKER_POWEROFF}$", 30)
        assert guest.wait_exit(30) == 0
