"""Boot the tiny-linux guest with plain QEMU (no libvirt) and watch its serial console.

Used by the image tests and handy for any test that needs a real guest: start
it, wait for a marker line, talk to it over QMP, and always kill it.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from kvtool.images import store

KVTOOL_CLI = [sys.executable, "-m", "kvtool.cli.main"]


def require_tool(name: str, package: str) -> str:
    """The tool's path; fails the test (never skips) with how to install it."""
    found = shutil.which(name)
    if not found:
        raise AssertionError(f"`{name}` is not installed; install it with: apt-get install {package}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Guest:
    """One QEMU process booting a kernel image; serial console in a file, QMP on a unix socket."""

    def __init__(self, image: store.Image, workdir: Path, *, append: str = "", http_port: int | None = None,
                 seed_iso: Path | None = None, seed_bus: str = "virtio", memory_mib: int = 128,
                 nic: bool = True, qemu: str | None = None, accel: str = "tcg", extra: Sequence[str] = ()) -> None:
        """qemu: another QEMU binary than the installed one; extra: more of its arguments, last."""
        self.workdir = workdir
        self.serial = workdir / "serial.log"
        self.qmp_path = workdir / "qmp.sock"
        self.log = workdir / "qemu.log"
        hostfwd = f",hostfwd=tcp:127.0.0.1:{http_port}-:80" if http_port else ""
        self.argv = [
            qemu or require_tool("qemu-system-x86_64", "qemu-system-x86"),
            "-accel", accel, "-m", str(memory_mib), "-nodefaults", "-nographic", "-no-reboot",
            "-serial", f"file:{self.serial}", "-monitor", "none",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", f"{image.cmdline} {append}".strip(),
        ]
        if nic:
            # romfile= skips loading iPXE: we boot the kernel directly, never from the network.
            self.argv += ["-netdev", f"user,id=net0{hostfwd}", "-device", "virtio-net-pci,netdev=net0,romfile="]
        if seed_iso is not None:
            self.argv += _seed_args(seed_iso, seed_bus)
        self.argv += extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> Guest:
        self.serial.write_bytes(b"")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        return self

    def console(self) -> str:
        return self.serial.read_text(errors="replace").replace("\r", "")

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """First match of a regex on the console; fails with the console so far if it does not come."""
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = rx.search(self.console())
            if match:
                return match
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited ({self.proc.returncode}) before {pattern!r}.\n"
                                     f"console:\n{self.console()}\nqemu:\n{self.log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on the console within {timeout} s.\nconsole:\n{self.console()}")
            time.sleep(0.02)

    def qmp(self, command: str, arguments: dict[str, object] | None = None, timeout: float = 10) -> object:
        """Run one QMP command on a fresh connection and return its result."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.qmp_path))
            reader = sock.makefile("rb")
            json.loads(reader.readline())  # greeting
            for msg in ({"execute": "qmp_capabilities"}, {"execute": command, **({"arguments": arguments}
                                                                                 if arguments else {})}):
                sock.sendall(json.dumps(msg).encode() + b"\n")
                while True:
                    reply = json.loads(reader.readline())
                    if "event" in reply:
                        continue
                    if "error" in reply:
                        raise AssertionError(f"QMP {msg['execute']} failed: {reply['error']}")
                    break
            return reply.get("return")

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _seed_args(iso: Path, bus: str) -> list[str]:
    drive = f"file={iso},format=raw,if=none,id=seed,readonly=on"
    if bus == "virtio":
        return ["-drive", drive, "-device", "virtio-blk-pci,drive=seed"]
    if bus == "ide-cdrom":
        return ["-drive", f"{drive},media=cdrom", "-device", "ide-cd,drive=seed,bus=ide.1"]
    if bus == "scsi-cdrom":
        return ["-drive", f"{drive},media=cdrom", "-device", "virtio-scsi-pci,id=scsi0",
                "-device", "scsi-cd,drive=seed,bus=scsi0.0"]
    raise ValueError(f"unknown seed bus {bus!r}")


@contextlib.contextmanager
def booted(image: store.Image, workdir: Path, **kwargs: object) -> Iterator[Guest]:
    """A started guest that is killed on the way out, whatever happened."""
    guest = Guest(image, workdir, **kwargs)  # type: ignore[arg-type]
    try:
        yield guest.start()
    finally:
        guest.kill()


def make_seed_iso(directory: Path, meta_data: str, user_data: str) -> Path:
    """A NoCloud seed: ISO9660 volume 'cidata' holding meta-data and user-data."""
    xorriso = require_tool("xorriso", "xorriso")
    content = directory / "seed"
    content.mkdir()
    (content / "meta-data").write_text(meta_data)
    (content / "user-data").write_text(user_data)
    iso = directory / "seed.iso"
    subprocess.run([xorriso, "-as", "mkisofs", "-quiet", "-V", "cidata", "-J", "-r", "-o", str(iso), str(content)],
                   check=True, capture_output=True, timeout=60)
    return iso
