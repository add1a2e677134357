"""The launcher's private libvirtd: one per VM, in its own mount and PID namespace.

The daemon runs in "system" mode as root, but sees per-VM directories from the
pod's state dir bind-mounted over /etc/libvirt, /run/libvirt, /var/lib/libvirt,
/var/cache/libvirt and /var/log/libvirt, and listens in a per-pod directory next
to the launcher's socket (so the handler could reach it too). kvtool.launcher.nsinit
(nsinit.py) is PID 1 of the namespaces: see there why that keeps QEMU from outliving us.

QEMU's capability probe costs ~4.5 s on the first domain of a fresh daemon; the
probe's result is cached per node in $KVTOOL_CACHE_DIR and copied in before the
daemon starts, which brings a start down to ~0.5 s (notes/libvirt-qemu.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kvtool.errors import KvtoolError
from kvtool.launcher import hostvirt
from kvtool.launcher.config import Config

log = logging.getLogger("kvtool.launcher.libvirtd")

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# What the daemon reads instead of the host's /etc/libvirt, /run/libvirt, ...: state subdir -> mount point.
MOUNTS = (("etc", "/etc/libvirt"), ("run", "/run/libvirt"), ("lib", "/var/lib/libvirt"),
          ("cache", "/var/cache/libvirt"), ("log", "/var/log/libvirt"))
CAPS_SUBDIR = Path("qemu/capabilities")  # under /var/cache/libvirt
NODE_CACHE_SUBDIR = "libvirt-qemu-capabilities"
CACHE_KEYS_KEPT = 8  # other key dirs kept beside the current one (other nodes sharing the cache)
# Capabilities the seeded cache leaves out on TCG nodes (tune_for_tcg says why).
TCG_SLOW_FLAGS = ("cpu-unavailable-features",)
# The driver modules libvirtd loads: their ctimes are part of the <selfctime> libvirt checks.
DRIVER_DIR = Path("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver")
NSINIT = str(Path(__file__).with_name("nsinit.py"))  # run as a script: see its docstring

QEMU_CONF = """\
# Written by the kvtool launcher: one private libvirtd per VM, root inside a private mount namespace.
# No virtlogd: QEMU's stdout/stderr go to a file under /var/log/libvirt/qemu.
stdio_handler = "file"
# No cgroups: the pod's cgroup is the VM's; libvirt would otherwise create machine.slice on the host.
cgroup_controllers = [ ]
# The pod is the sandbox: QEMU runs as the launcher's user, files keep their owners, no SELinux/AppArmor.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
# No private /dev per QEMU: it needs the host's /dev/pts for the console pty and /dev/kvm as is.
namespaces = [ ]
"""


def libvirtd_conf(socket_dir: Path) -> str:
    """libvirtd.conf: unix sockets only, in the pod's socket dir, root-only, no auth (file mode is the guard)."""
    return (
        "# Written by the kvtool launcher.\n"
        f'unix_sock_dir = "{socket_dir}"\n'
        'unix_sock_group = "root"\n'
        'unix_sock_ro_perms = "0700"\n'
        'unix_sock_rw_perms = "0700"\n'
        'unix_sock_admin_perms = "0700"\n'
        'auth_unix_ro = "none"\n'
        'auth_unix_rw = "none"\n'
        "listen_tls = 0\n"
        "listen_tcp = 0\n"
        # Warnings and errors to stderr, which is libvirtd.log in the state dir.
        'log_outputs = "3:stderr"\n'
    )


class Libvirtd:
    """Start, wait for, and stop one private daemon; seed and save the node's capability cache."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.root = config.state_dir / "libvirt"
        self.socket_dir = config.libvirt_socket_dir
        self.socket = self.socket_dir / "libvirt-sock"
        self.log_file = self.root / "libvirtd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None
        self.seeded = 0  # capability files copied in from the node cache
        self._seeded: dict[str, bytes] = {}  # file name -> the bytes written for libvirtd
        self._node_cache = _node_cache_dir(config.cache_dir)

    @property
    def uri(self) -> str:
        # Config restricted the sockets dir to characters a URI needs no escaping for.
        return f"qemu+unix:///system?socket={self.socket}"

    # ---- lifecycle

    def start(self) -> None:
        """Write the config and start the daemon; returns at once (wait_ready() waits)."""
        for sub, _ in MOUNTS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "etc" / "libvirtd.conf").write_text(libvirtd_conf(self.socket_dir))
        (self.root / "etc" / "qemu.conf").write_text(QEMU_CONF)
        if self.socket_dir.exists():
            shutil.rmtree(self.socket_dir)  # a previous run's sockets: nobody listens on them
        self.socket_dir.mkdir(mode=0o700, parents=True)
        self.seeded = self._seed_cache()
        daemon = _which("libvirtd", "/usr/sbin", "apt-get install libvirt-daemon libvirt-daemon-driver-qemu")
        unshare = _which("unshare", "/usr/bin", "apt-get install util-linux")
        read_end, write_end = os.pipe()
        os.set_inheritable(read_end, True)
        binds: list[str] = []
        for sub, mount_point in MOUNTS:
            binds += ["--bind", str(self.root / sub), mount_point]
        argv = [unshare, "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc",
                sys.executable, "-I", "-S", NSINIT, "--lifeline", str(read_end), *binds, "--",
                # --config by its state-dir path (same file as /etc/libvirt/libvirtd.conf inside): it names the
                # pod in the daemon's command line, so a leftover daemon could be told apart from its neighbours.
                daemon, "--config", str(self.root / "etc" / "libvirtd.conf"), "--pid-file", "/run/libvirt/libvirtd.pid"]
        with self.log_file.open("ab") as out:
            # Own session: a signal meant for the launcher's process group, and a SIGTERM meant for the
            # launcher must not stop libvirtd before the guest had its ACPI shutdown.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         pass_fds=(read_end,), start_new_session=True, cwd="/")
        os.close(read_end)
        self._lifeline = write_end
        log.info("event=libvirtd-starting pid=%d socket=%s seeded_capabilities=%d", self.proc.pid, self.socket,
                 self.seeded)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until the daemon's socket exists; raise with its log if it dies or takes too long."""
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc is None or self.proc.poll() is not None:
                raise KvtoolError(f"libvirtd exited ({None if self.proc is None else self.proc.returncode}) "
                                  f"before listening: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise KvtoolError(f"libvirtd did not listen on {self.socket} within {timeout} s: {self.log_tail()}")
            time.sleep(0.005)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Close the lifeline (nsinit stops libvirtd, the namespace ends), wait, remove the sockets."""
        code = None
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("event=libvirtd-kill pid=%d reason=stop-timeout", self.proc.pid)
                self.proc.kill()  # unshare --kill-child takes nsinit, and with it the namespace, along
                code = self.proc.wait(timeout=timeout)
            log.info("event=libvirtd-stopped code=%s", code)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        return code

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            text = self.log_file.read_text(errors="replace").strip().splitlines()
            return " | ".join(text[-lines:]) or "(libvirtd.log is empty)"
        return "(no libvirtd.log)"

    # ---- capability cache

    def _seed_cache(self) -> int:
        if self._node_cache is None or not self._node_cache.is_dir():
            return 0
        target = self.root / "cache" / CAPS_SUBDIR
        target.mkdir(parents=True, exist_ok=True)
        tcg = hostvirt.detect_virt_type() == "qemu"
        copied = 0
        for entry in self._node_cache.glob("*.xml"):
            with contextlib.suppress(OSError):
                data = entry.read_bytes()
                self._seeded[entry.name] = tuned = tune_for_tcg(data) if tcg else data
                (target / entry.name).write_bytes(tuned)
                copied += 1
        return copied

    def save_cache(self) -> int:
        """Publish capability files the daemon probed that the node cache lacks (or has stale); atomic."""
        if self._node_cache is None:
            return 0
        source = self.root / "cache" / CAPS_SUBDIR
        saved = 0
        for entry in sorted(source.glob("*.xml")) if source.is_dir() else []:
            target = self._node_cache / entry.name
            try:
                data = entry.read_bytes()
                if data == self._seeded.get(entry.name):
                    continue  # libvirt found the seeded file valid: nothing new (and it may be tuned)
                if target.is_file() and target.read_bytes() == data:
                    continue
                self._node_cache.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{entry.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
                saved += 1
            except OSError as exc:
                log.warning("event=capabilities-cache-save-failed file=%s error=%r", target, str(exc))
        if saved:
            pruned = prune_node_cache(self._node_cache)
            log.info("event=capabilities-cache-saved files=%d dir=%s pruned=%d", saved, self._node_cache, len(pruned))
        return saved


def tune_for_tcg(caps_xml: bytes) -> bytes:
    """libvirt's cached QEMU capabilities, minus the flags that only slow a TCG guest's start.

    With `cpu-unavailable-features`, libvirt 11.3 reads a started x86 guest's CPU with one QMP qom-get
    per CPU property: ~900 round trips, 0.5 s of a 0.8 s domain start on these machines. Without it,
    libvirt reads the CPU's feature-words and filtered-features: 2 round trips, the same live <cpu>
    for TCG's models (compared on qemu64). Not done for KVM, whose MSR-based features (vmx-*) only the
    per-property read sees.
    """
    for flag in TCG_SLOW_FLAGS:
        caps_xml = caps_xml.replace(f"  <flag name='{flag}'/>\n".encode(), b"")
    return caps_xml


def _which(name: str, sbin: str, install: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=sbin)
    if not found:
        raise KvtoolError(f"{name} is not installed", hint=install)
    return found


def _node_cache_dir(cache_dir: Path | None) -> Path | None:
    """$KVTOOL_CACHE_DIR/libvirt-qemu-capabilities/<key>: one per set of binaries as libvirt sees them.

    libvirt checks every cached file itself and re-probes (~0.7 CPU-seconds) one that is stale: its
    <qemuctime> and <selfctime> must equal the change times of QEMU, libvirtd and its QEMU driver. Each
    node unpacks the launcher image itself, so the same binaries have other ctimes on every node; the key
    holds them, or nodes sharing one cache (the embedded cluster's) re-probe in turn, each overwriting the
    file the other needs.
    """
    if cache_dir is None:
        return None
    parts = []
    for name, sbin in (("qemu-system-x86_64", "/usr/bin"), ("libvirtd", "/usr/sbin")):
        path = shutil.which(name) or shutil.which(name, path=sbin)
        if path is None:
            return None
        parts.append(_stamp(path))
    parts += [_stamp(str(module)) for module in sorted(DRIVER_DIR.glob("*.so"))]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return cache_dir / NODE_CACHE_SUBDIR / key


def _stamp(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def prune_node_cache(keep: Path, limit: int = CACHE_KEYS_KEPT) -> list[Path]:
    """Remove all but the `limit` most recently written key dirs besides `keep` (each node restart unpacks
    the image anew: new ctimes, a new key). The removed dirs."""
    parent = keep.parent
    others = [d for d in parent.iterdir() if d.is_dir() and d != keep] if parent.is_dir() else []
    others.sort(key=lambda d: d.stat().st_mtime, reverse=True)
    removed = []
    for stale in others[limit:]:
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale)
    return removed
