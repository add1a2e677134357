"""Run `kvtool launcher` as a pod would (a subprocess with the env of docs/runtime.md) and look after it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from kvtool.launchercom.client import LauncherClient
from tests.waiting import wait_for  # noqa: F401 - the launcher tests call it as lh.wait_for

LAUNCHER = [sys.executable, "-m", "kvtool.cli.main", "launcher"]


def require_tools() -> None:
    """Every tool the launcher needs; fails (never skips) with how to install it."""
    for tool, path, package in (("libvirtd", "/usr/sbin", "libvirt-daemon libvirt-daemon-driver-qemu"),
                                ("qemu-system-x86_64", None, "qemu-system-x86"), ("qemu-img", None, "qemu-utils"),
                                ("unshare", None, "util-linux")):
        if not (shutil.which(tool) or (path and shutil.which(tool, path=path))):
            raise AssertionError(f"`{tool}` is not installed; install it with: apt-get install {package}")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        raise AssertionError("libvirt-python is missing: apt-get install libvirt-dev pkg-config && "
                             ".venv/bin/pip install 'kvtool[runtime]'") from None


class Launcher:
    """One launcher process with its own sockets/state/volumes dirs; cache and images are shared."""

    def __init__(self, root: Path, sockets: Path, images: Path, cache: Path, *, name: str = "vm1",
                 namespace: str = "default", grace: int = 30, extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.namespace = namespace
        self.uid = str(uuid.uuid4())
        self.pod_uid = str(uuid.uuid4())
        self.root = root
        self.sockets = sockets
        self.state = root / "state"
        self.volumes = root / "volumes"
        self.volumes.mkdir(parents=True, exist_ok=True)
        self.stderr_path = root / "launcher.stderr"
        self.env = {**os.environ, "KVTOOL_POD_UID": self.pod_uid, "KVTOOL_POD_NAME": f"virt-launcher-{name}-x",
                    "KVTOOL_POD_NAMESPACE": namespace, "KVTOOL_NODE_NAME": "node-1",
                    "KVTOOL_GRACE_PERIOD": str(grace), "KVTOOL_SOCKETS_DIR": str(sockets),
                    "KVTOOL_STATE_DIR": str(self.state), "KVTOOL_IMAGES": str(images), "KVTOOL_CACHE_DIR": str(cache),
                    "KVTOOL_VOLUMES_DIR": str(self.volumes), **(extra_env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    @property
    def socket(self) -> Path:
        return self.sockets / f"{self.pod_uid}.sock"

    def argv(self) -> list[str]:
        return [*LAUNCHER, "--namespace", self.namespace, "--name", self.name, "--uid", self.uid]

    def start(self) -> Launcher:
        with self.stderr_path.open("wb") as err:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(self.argv(), env=self.env, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         cwd="/")
        return self

    def wait_socket(self, timeout: float = 10) -> float:
        """Seconds from start until the socket accepts connections. Its file appears at bind(), a moment before
        listen(): a connection in between is refused (CI met it once, under load), as the handler's retry knows."""
        deadline = time.monotonic() + timeout
        while not self._accepts():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"launcher exited {self.proc.returncode} before listening:\n{self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"launcher did not listen within {timeout} s:\n{self.stderr()}")
            time.sleep(0.002)
        return time.monotonic() - self.started

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except (ConnectionRefusedError, FileNotFoundError):
                return False
        return True

    def client(self, timeout: float = 10) -> LauncherClient:
        return LauncherClient(self.socket, timeout=timeout)

    def vmi(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachineInstance",
                "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}, "spec": spec}

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"launcher still runs after {timeout} s:\n{self.stderr()}") from None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stderr(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(errors="replace")
        return ""

    def console_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.state / "console.log").read_text(errors="replace").replace("\r", "")
        return ""

    def descendants(self) -> list[int]:
        assert self.proc is not None
        return descendants(self.proc.pid)

    def qemu_pid(self) -> int | None:
        for pid in self.descendants():
            if cmdline(pid).startswith("qemu-system") or "/qemu-system" in cmdline(pid).split(" ")[0]:
                return pid
        return None

    def leftovers(self) -> list[tuple[int, str]]:
        """This launcher's processes: by its dirs (libvirtd's --config, unshare, nsinit) or uid (QEMU's -uuid)."""
        return processes_mentioning(str(self.root), self.uid)

    def kill(self) -> None:
        """Test cleanup: SIGKILL the launcher and anything it left (a failing test must not leak QEMUs)."""
        if self.proc is not None and self.proc.poll() is None:
            pids = self.descendants()
            self.proc.kill()
            self.proc.wait(timeout=10)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid, _ in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                children = [int(c) for c in task.read_text().split()]
                found += children
                todo += children
    return found


def processes_mentioning(*needles: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of live (non-zombie) processes whose command line contains any needle."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        text = cmdline(int(entry.name))
        if text and any(needle in text for needle in needles):
            found.append((int(entry.name), text[:200]))
    return found


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
