"""The launcher, run as a pod runs it: a `kvtool launcher` subprocess with its own libvirtd and a real QEMU (TCG).

Driven only through LauncherClient, like the handler. Guests boot as few times
as the behaviours allow: one full boot covers sync, watch, guest info, pause,
console and SIGTERM; one more the guest's own poweroff; three short ones the
ways a domain ends badly. Measurements are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvtool.images import guest_scripts, store, tiny_linux
from kvtool.launchercom import protocol
from kvtool.launchercom.client import LauncherClient, LauncherError, LauncherUnavailable
from kvtool.launchercom.protocol import Reason
from tests import launcher_helpers as lh

BOOT_TIMEOUT = 60
MEASURED: dict[str, str] = {}

ECHO_SCRIPT = """#!/bin/sh
echo KVTOOL-TEST-ECHO-READY
while read -r line; do echo "KVTOOL-TEST-ECHO $line"; done </dev/console
"""
POWEROFF_SCRIPT = "#!/bin/sh\npoweroff\n"


# ---- fixtures


@pytest.fixture(scope="session")
def launcher_env() -> Iterator[dict[str, Path]]:
    """Short sockets dir under /run, a session image store with tiny-linux, an initially empty node cache."""
    lh.require_tools()
    root = Path(tempfile.mkdtemp(prefix="kvt-launcher-"))
    sockets = Path(f"/run/kvtool-test-{secrets.token_hex(4)}")
    sockets.mkdir(mode=0o700)
    images = root / "images"
    tiny_linux.build(store.ImageStore(images), progress=lambda _msg: None)
    yield {"root": root, "sockets": sockets, "images": images, "cache": root / "cache"}
    shutil.rmtree(sockets, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    if MEASURED:
        print("\nlauncher measurements:\n" + "\n".join(f"  {k}: {v}" for k, v in MEASURED.items()))


@pytest.fixture
def make_launcher(launcher_env: dict[str, Path], tmp_path: Path) -> Iterator[Any]:
    made: list[lh.Launcher] = []

    def make(**kwargs: Any) -> lh.Launcher:
        directory = tmp_path / f"pod{len(made)}"
        directory.mkdir()
        launcher = lh.Launcher(directory, launcher_env["sockets"], launcher_env["images"], launcher_env["cache"],
                               **kwargs)
        made.append(launcher)
        return launcher

    yield make
    for launcher in made:
        launcher.kill()


def kernel_boot_spec(user_data: str | None = None, **domain: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "domain": {"memory": {"guest": "128Mi"},
                   "firmware": {"kernelBoot": {"container": {"image": "tiny-linux"}}},
                   "devices": {"disks": [], "interfaces": [{"name": "default", "masquerade": {}}]}, **domain},
        "networks": [{"name": "default", "pod": {}}],
        "volumes": [],
    }
    if user_data is not None:
        spec["domain"]["devices"]["disks"].append({"name": "cloudinit", "disk": {"bus": "virtio"}})
        spec["volumes"].append({"name": "cloudinit", "cloudInitNoCloud": {"userData": user_data}})
    return spec


class Watcher:
    """Collects a `watch` stream in a thread."""

    def __init__(self, client: LauncherClient) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.ended = threading.Event()
        self.error: BaseException | None = None
        threading.Thread(target=self._run, args=(client,), daemon=True).start()

    def _run(self, client: LauncherClient) -> None:
        try:
            for status in client.watch():
                self.statuses.append(status)
        except BaseException as exc:
            self.error = exc
        finally:
            self.ended.set()

    def seen(self, **fields: Any) -> bool:
        return any(all(s.get(k) == v for k, v in fields.items()) for s in self.statuses)


def describe_cache(env: dict[str, Path]) -> str:
    return "capability cache seeded" if any(env["cache"].rglob("*.xml")) else "empty capability cache"


def read_until(sock: socket.socket, needle: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no {needle!r} on the console within {timeout} s; got:\n{data[-2000:]!r}") from None
        if not chunk:
            raise AssertionError(f"console closed before {needle!r}; got:\n{data[-2000:]!r}")
        data += chunk
    return data


# ---- protocol (no processes)


def test_protocol_round_trip_and_framing() -> None:
    message = protocol.request(7, "sync", vmi={"metadata": {"name": "a\nb"}, "note": "ünïcode"})
    line = protocol.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # newlines inside strings are escaped
    assert protocol.decode(line[:-1]) == message
    assert protocol.parse_request(message) == (7, "sync")
    status = protocol.domain_status(phase="Running", name="default_vm1", uuid="u")
    assert protocol.decode(protocol.encode(protocol.ok(7, status))[:-1])["result"] == status
    assert protocol.result_of(protocol.ok(1, {"x": 1})) == {"x": 1}
    event = protocol.decode(protocol.encode(protocol.status_event(status)))
    assert event["event"] == "status" and protocol.check_status(event["status"]) == status


def test_protocol_rejects_bad_messages() -> None:
    cases = [(b"not json", Reason.BAD_REQUEST), (b"[1]", Reason.BAD_REQUEST),
             (b'{"v": 2, "id": 1, "cmd": "ping"}', Reason.UNSUPPORTED_VERSION),
             (b'{"id": 1, "cmd": "ping"}', Reason.UNSUPPORTED_VERSION)]
    for line, reason in cases:
        with pytest.raises(LauncherError) as info:
            protocol.decode(line)
        assert info.value.reason == reason, line
    for message, reason in (({"v": 1, "id": -1, "cmd": "ping"}, Reason.BAD_REQUEST),
                            ({"v": 1, "id": True, "cmd": "ping"}, Reason.BAD_REQUEST),
                            ({"v": 1, "id": 1, "cmd": "reboot"}, Reason.UNKNOWN_COMMAND)):
        with pytest.raises(LauncherError) as info:
            protocol.parse_request(message)
        assert info.value.reason == reason
    with pytest.raises(LauncherError) as info:
        protocol.result_of(protocol.error(3, "no such image", Reason.INVALID_VMI))
    assert (info.value.reason, info.value.message) == (Reason.INVALID_VMI, "no such image")
    for broken in ({}, {**protocol.domain_status(), "phase": "Exploded"},
                   {**protocol.domain_status(), "interfaces": [{"name": "x"}]},
                   {**protocol.domain_status(), "guestReady": "yes"},
                   {**protocol.domain_status(), "guestKernelError": "x" * 300}):
        with pytest.raises(LauncherError):
            protocol.check_status(broken)
    earlier = protocol.domain_status()
    del earlier["guestKernelError"]
    assert protocol.check_status(earlier) is earlier  # a launcher of the version before: its status still reads


def test_line_reader_keeps_what_follows_a_line() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b'{"a":1}\n{"b":2}\nRAW')
        reader = protocol.LineReader(right)
        assert reader.readline() == b'{"a":1}'
        assert reader.readline() == b'{"b":2}'
        assert reader.take_buffer() == b"RAW"
        left.close()
        assert reader.readline() is None


def test_client_without_launcher_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(LauncherUnavailable) as info:
        LauncherClient(tmp_path / "none.sock").ping()
    assert info.value.reason == Reason.UNAVAILABLE


# ---- pieces of the launcher that need no guest


def test_launcher_never_imports_kubernetes() -> None:
    """It never talks to the API; kubernetes + kopf would add ~1 s to every VM start."""
    code = ("import sys, kvtool.cli.main, kvtool.cli.launcher, kvtool.launcher.main, kvtool.launcher.runner, "
            "kvtool.launcher.server, kvtool.launcher.volumes; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'kopf', 'urllib3', 'pandas'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


def test_guest_markers_are_parsed_strictly() -> None:
    from kvtool.launcher import guestinfo

    assert guestinfo.parse_line("\x1b[0mKVTOOL-GUEST-READY hostname=tiny uptime=2.51\r") == ("ready", "tiny")
    kind, ip = guestinfo.parse_line("KVTOOL-GUEST-IP eth0 10.0.2.15/24 gw=10.0.2.2")
    assert kind == "ip" and ip == guestinfo.GuestIP("eth0", "10.0.2.15", 24, "10.0.2.2")
    assert guestinfo.parse_line("KVTOOL-GUEST-IP eth0 10.0.2.15/24 gw=none")[1].gateway is None
    for line in ("KVTOOL-GUEST-IP none", "KVTOOL-GUEST-IP eth0 999.0.2.15/24", "KVTOOL-GUEST-IP eth0 10.0.2.15/33",
                 "KVTOOL-GUEST-READY hostname=", "a user typed: hello", ""):
        assert guestinfo.parse_line(line) is None, line


def test_the_guest_kernels_reports_of_trouble_are_picked_from_its_console() -> None:
    from kvtool.launcher import guestinfo

    seen = [guestinfo.parse_line(line) for line in (
        "[   43.350077] list_del corruption. next->prev should be fffff9cc00470008, but was fffff9cc00468008.\r",
        "[   40.449840] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [user-data.sh:141]",
        "[    2.000000] Kernel panic - not syncing: VFS: Unable to mount root fs",
        "[ 1.5] BUG: kernel NULL pointer dereference, address: 0000000000000008 " + "x" * 300,
        "[   68.273316] kernel BUG at lib/list_debug.c:62!")]  # BUG_ON(): no other line before it
    assert [kind for kind, _ in seen] == ["kernel-error"] * 5
    assert seen[0][1] == "list_del corruption. next->prev should be fffff9cc00470008, but was fffff9cc00468008."
    assert seen[1][1].startswith("watchdog: BUG: soft lockup") and len(seen[3][1]) <= 200
    for line in ("BUG: typed at a shell prompt", "[   1.0] virtio_net virtio0: BUGGY device? no",
                 "[   1.0] random: crng init done", "TICK 3 BUG: 1.0"):
        assert guestinfo.parse_line(line) is None, line


def test_virt_type_detection(tmp_path: Path) -> None:
    from kvtool.launcher import hostvirt

    dev_kvm = tmp_path / "kvm"
    dev_kvm.write_bytes(b"")
    modules = tmp_path / "module"

    def detect(flags: str, *loaded: str) -> str:
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: fpu {flags} sse2\n")
        shutil.rmtree(modules, ignore_errors=True)
        for module in loaded:
            (modules / module).mkdir(parents=True)
        return hostvirt.detect_virt_type(dev_kvm, tmp_path / "cpuinfo", modules)

    assert detect("vmx", "kvm", "kvm_intel") == "kvm"
    assert detect("svm", "kvm", "kvm_amd") == "kvm"
    assert detect("hypervisor", "kvm", "kvm_pvm") == "qemu"  # these machines: /dev/kvm works, guests die
    assert detect("vmx", "kvm") == "qemu"
    assert hostvirt.detect_virt_type(tmp_path / "no-kvm", tmp_path / "cpuinfo", modules) == "qemu"
    if Path("/sys/module/kvm_pvm").is_dir():
        assert hostvirt.detect_virt_type() == "qemu"


def test_volumes_become_files(launcher_env: dict[str, Path], tmp_path: Path) -> None:
    """Every volume kind resolved on real files with real qemu-img; the domain XML defines on test:///default."""
    import libvirt

    from kvtool.domain import ConversionError, DomainInputs, ResolvedInterface, domain_xml
    from kvtool.launcher import config, volumes

    source = tmp_path / "small.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(source), "16M"], check=True, timeout=30)
    image = store.ImageStore(launcher_env["images"]).import_disk("small-disk", source, force=True)
    vols = tmp_path / "volumes"
    for name in ("data", "host", "ci"):
        (vols / name).mkdir(parents=True)
    (vols / "ci" / "userData").write_text("#!/bin/sh\necho from-a-secret\n")
    uid = "6f1c1f4e-8d4b-4e43-9a51-3c1c0e6b8a10"
    cfg = config.load("default", "vm1", uid, {
        "KVTOOL_POD_UID": "pod", "KVTOOL_SOCKETS_DIR": "/run/unused", "KVTOOL_STATE_DIR": str(tmp_path / "state"),
        "KVTOOL_IMAGES": str(launcher_env["images"]), "KVTOOL_VOLUMES_DIR": str(vols)})
    spec = kernel_boot_spec()
    disks = spec["domain"]["devices"]["disks"]
    for name in ("root", "scratch", "data", "host", "ci"):
        disks.append({"name": name, "disk": {"bus": "virtio"}})
    spec["volumes"] = [
        {"name": "root", "containerDisk": {"image": "small-disk"}},
        {"name": "scratch", "emptyDisk": {"capacity": "64Mi"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "data-pvc"}},
        {"name": "host", "hostDisk": {"path": "/var/lib/images/host.img", "type": "DiskOrCreate",
                                      "capacity": "32Mi"}},
        {"name": "ci", "cloudInitNoCloud": {"secretRef": {"name": "ci-secret"}}},
    ]
    vmi = {"metadata": {"name": "vm1", "namespace": "default", "uid": uid}, "spec": spec}
    resolved = volumes.resolve(vmi, cfg)

    def info(path: Path) -> dict[str, Any]:
        out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, check=True)
        return json.loads(out.stdout)

    root = resolved.volumes["root"]
    assert root.format == "qcow2" and root.path.parent == tmp_path / "state" / "volumes"
    assert info(root.path)["full-backing-filename"] == str(image.disk)  # an overlay: the store stays untouched
    assert info(resolved.volumes["scratch"].path)["virtual-size"] == 64 << 20
    data = resolved.volumes["data"]
    assert data.path == vols / "data" / "disk.img" and data.format == "raw"
    assert data.path.stat().st_size == volumes.pvc_size(vols / "data") <= 1 << 30  # a plain dir: 1Gi at most
    assert data.path.stat().st_blocks == 0  # sparse
    host = resolved.volumes["host"]
    assert host.path == vols / "host" / "host.img" and host.path.stat().st_size == 32 << 20
    ci = resolved.volumes["ci"]
    assert ci.readonly and b"from-a-secret" in ci.path.read_bytes()
    tiny = store.ImageStore(launcher_env["images"]).get("tiny-linux")
    assert resolved.kernel == tiny.kernel  # no kernelArgs given: the image's own, plus the guest's name
    assert resolved.spec["domain"]["firmware"]["kernelBoot"]["kernelArgs"] == f"{tiny.cmdline} kvtool.hostname=vm1"

    xml = domain_xml(DomainInputs(name=cfg.domain_name, uuid=uid, spec=resolved.spec, volumes=resolved.volumes,
                                  interfaces={"default": ResolvedInterface(None, "02:00:00:00:00:01")},
                                  kernel=resolved.kernel, initrd=resolved.initrd, serial_log=cfg.console_log,
                                  console_pty=True))
    conn = libvirt.open("test:///default")
    try:
        conn.defineXML(xml).undefine()
    finally:
        conn.close()

    for volume, problem in (({"name": "host", "hostDisk": {"path": "/x/missing.img", "type": "Disk"}}, "not exist"),
                            ({"name": "other", "persistentVolumeClaim": {"claimName": "x"}}, "nothing is mounted"),
                            ({"name": "other", "dataVolume": {"name": "dv"}}, "not supported"),
                            ({"name": "other", "emptyDisk": {}}, "capacity: is required")):
        spec["volumes"] = [volume]
        with pytest.raises(ConversionError) as err:
            volumes.resolve(vmi, cfg)
        assert problem in err.value.message and "spec.volumes[0]" in err.value.message


def test_a_claims_disk_is_the_size_it_claims_less_the_filesystems_share(tmp_path: Path) -> None:
    """KubeVirt's sizing: a hostPath claim's bind mount looks like a volume of its own with the whole host's free
    space; the claim's size is what keeps the disk to what was asked."""
    from kvtool.launcher import config, volumes

    (tmp_path / "data").mkdir()
    free = (lambda st: st.f_bavail * st.f_frsize)(os.statvfs(tmp_path / "data"))
    assert volumes.pvc_size(tmp_path / "data", 1 << 30) == 967 << 20  # 1Gi less 5.5%, whole MiB
    assert volumes.pvc_size(tmp_path / "data", free * 4) <= free  # never past the free space
    base = {"KVTOOL_POD_UID": "pod", "KVTOOL_SOCKETS_DIR": "/run/unused", "KVTOOL_STATE_DIR": str(tmp_path),
            "KVTOOL_IMAGES": str(tmp_path)}
    uid = "6f1c1f4e-8d4b-4e43-9a51-3c1c0e6b8a10"
    cfg = config.load("default", "vm1", uid, {**base, "KVTOOL_CLAIM_SIZES": '{"data": 1073741824}'})
    assert cfg.claim_sizes == {"data": 1 << 30} and config.load("default", "vm1", uid, base).claim_sizes == {}
    for bad in ("[1]", '{"data": -1}', '{"data": "1Gi"}', '{"data": true}', "{", '{"../x": 1}'):
        with pytest.raises(config.ConfigError, match="KVTOOL_CLAIM_SIZES"):
            config.load("default", "vm1", uid, {**base, "KVTOOL_CLAIM_SIZES": bad})


# ---- bad input: exit 2 at once, nothing started


def test_bad_arguments_exit_2(make_launcher: Any, launcher_env: dict[str, Path]) -> None:
    cases = [({"uid": "not-a-uuid"}, "--uid"), ({"name": "Bad_Name"}, "--name"),
             ({"env": {"KVTOOL_POD_UID": ""}}, "KVTOOL_POD_UID"),
             ({"env": {"KVTOOL_GRACE_PERIOD": "soon"}}, "KVTOOL_GRACE_PERIOD"),
             ({"env": {"KVTOOL_STATE_DIR": "relative/dir"}}, "KVTOOL_STATE_DIR"),
             ({"env": {"KVTOOL_SOCKETS_DIR": "/run/" + "x" * 100}}, "too long"),
             ({"env": {"KVTOOL_CLAIM_SIZES": '{"Data": 5}'}}, "KVTOOL_CLAIM_SIZES")]
    for case, expected in cases:
        launcher = make_launcher(extra_env=case.get("env"))
        if "uid" in case:
            launcher.uid = case["uid"]
        if "name" in case:
            launcher.name = case["name"]
        code = launcher.start().wait_exit(15)
        lines = [line for line in launcher.stderr().splitlines() if line.strip()]
        assert code == 2, launcher.stderr()
        assert len(lines) == 1 and expected in lines[0], lines
        assert not launcher.leftovers()


# ---- a domain that cannot be had: Failed, the reason, exit 1


def test_missing_image_is_a_clear_error(make_launcher: Any) -> None:
    launcher = make_launcher().start()
    launcher.wait_socket()
    spec = kernel_boot_spec()
    spec["domain"]["devices"]["disks"].append({"name": "root", "disk": {"bus": "virtio"}})
    spec["volumes"].append({"name": "root", "containerDisk": {"image": "no-such-image"}})
    with launcher.client() as client, pytest.raises(LauncherError) as info:
        client.sync(launcher.vmi(spec))
    assert info.value.reason == Reason.INVALID_VMI
    assert "spec.volumes[0].containerDisk.image" in info.value.message
    assert "'no-such-image' is not in the image store" in info.value.message
    assert launcher.wait_exit(10) == 1
    assert not launcher.leftovers()
    assert not launcher.socket.exists()


def test_kernel_image_as_disk_is_refused(make_launcher: Any) -> None:
    launcher = make_launcher().start()
    launcher.wait_socket()
    spec = kernel_boot_spec()
    spec["domain"]["devices"]["disks"].append({"name": "root", "disk": {"bus": "virtio"}})
    spec["volumes"].append({"name": "root", "containerDisk": {"image": "tiny-linux"}})
    with launcher.client() as client:
        watcher = Watcher(launcher.client())
        with pytest.raises(LauncherError) as info:
            client.sync(launcher.vmi(spec))
        assert "is a kernel image" in info.value.message and "kernelBoot" in info.value.message
        status = client.status()  # the launcher stays a moment so the handler can read why
        assert status["phase"] == "Failed" and status["reason"] == Reason.INVALID_VMI
        with pytest.raises(LauncherError) as again:
            client.sync(launcher.vmi(spec))  # a repeated sync gets the same answer
        assert again.value.message == info.value.message
    assert launcher.wait_exit(10) == 1
    assert watcher.ended.wait(5) and watcher.statuses[-1]["phase"] == "Failed"


def test_libvirt_rejection_reaches_the_status(make_launcher: Any) -> None:
    launcher = make_launcher().start()
    launcher.wait_socket()
    with launcher.client() as client:
        with pytest.raises(LauncherError) as info:
            client.sync(launcher.vmi(kernel_boot_spec(cpu={"model": "no-such-cpu"})))
        assert info.value.reason == Reason.DOMAIN_START_FAILED
        assert "no-such-cpu" in info.value.message  # libvirt's own words
        status = client.status()
    assert status["phase"] == "Failed" and status["message"] == info.value.message
    assert launcher.wait_exit(10) == 1
    assert not launcher.leftovers()


def test_wrong_vmi_is_refused_without_harm(make_launcher: Any) -> None:
    launcher = make_launcher().start()
    launcher.wait_socket()
    with launcher.client() as client:
        vmi = launcher.vmi(kernel_boot_spec())
        vmi["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000"
        with pytest.raises(LauncherError) as info:
            client.sync(vmi)
        assert info.value.reason == Reason.WRONG_VMI
        assert client.status()["phase"] == "Pending"
        with pytest.raises(LauncherError) as no_domain:
            client.pause()
        assert no_domain.value.reason == Reason.NO_DOMAIN
    launcher.signal(signal.SIGTERM)  # nothing runs yet: exit at once
    assert launcher.wait_exit(10) == 0
    assert not launcher.leftovers()


# ---- one full boot: sync, watch, guest info, pause, console, SIGTERM


def test_vm_lifecycle(make_launcher: Any, tmp_path: Path) -> None:
    # A cache of its own, empty: this sync pays for QEMU's capability probe (the others find it cached).
    launcher = make_launcher(grace=30, extra_env={"KVTOOL_CACHE_DIR": str(tmp_path / "empty-cache")}).start()
    cache_state = "empty capability cache"
    MEASURED["start -> socket listening (s)"] = f"{launcher.wait_socket():.3f}"
    client = launcher.client()
    ping = client.ping()
    MEASURED["start -> first ping answered (s)"] = f"{time.monotonic() - launcher.started:.3f}"
    assert ping["pid"] == launcher.proc.pid and ping["libvirtVersion"] and ping["status"]["phase"] == "Pending"
    watcher = Watcher(launcher.client())

    began = time.monotonic()
    status = client.sync(launcher.vmi(kernel_boot_spec(ECHO_SCRIPT)))
    synced = time.monotonic()
    MEASURED[f"sync -> Running (s), {cache_state}"] = f"{synced - began:.3f}"
    assert status["phase"] == "Running" and status["domainState"] == "Running", status
    assert status["uuid"] == launcher.uid and status["name"] == "default_vm1"
    assert status["startedAt"] and status["consoleLog"] == str(launcher.state / "console.log")
    mac = status["interfaces"][0]["mac"]
    assert status["interfaces"][0]["name"] == "default" and int(mac[:2], 16) & 0b11 == 0b10  # local, unicast
    assert client.sync(launcher.vmi(kernel_boot_spec(ECHO_SCRIPT)))["startedAt"] == status["startedAt"]  # idempotent

    console = client.console()  # attached while the guest boots: its output arrives live
    seen = read_until(console, guest_scripts.MARKER_READY.encode(), BOOT_TIMEOUT)
    MEASURED["sync -> guest READY marker (s)"] = f"{time.monotonic() - began:.3f}"
    ready = lh.wait_for(lambda: (s := client.status())["guestReady"] and s["interfaces"][0]["ipAddress"] and s,
                        10, "guestReady and the IP in the status", describe=launcher.console_log)
    assert ready["interfaces"][0] == {"name": "default", "mac": mac, "ipAddress": "10.0.2.15",
                                      "ipAddresses": ["10.0.2.15"], "interfaceName": "eth0",
                                      "infoSource": "serial-console"}
    assert guest_scripts.MARKER_READY in launcher.console_log()
    lh.wait_for(lambda: watcher.seen(phase="Running", guestReady=True), 5, "watch: Running + guestReady")
    assert watcher.statuses[0]["phase"] == "Pending"

    seen += read_until(console, b"KVTOOL-TEST-ECHO-READY", BOOT_TIMEOUT)
    console.sendall(b"hello-console\r")
    seen += read_until(console, b"KVTOOL-TEST-ECHO hello-console", 10)
    console.close()
    lh.wait_for(lambda: "KVTOOL-TEST-ECHO hello-console" in launcher.console_log(), 5, "the echo in the console log")

    qemu = launcher.qemu_pid()
    assert qemu is not None, launcher.descendants()
    MEASURED["launcher RSS (MiB)"] = f"{lh.rss_kib(launcher.proc.pid) / 1024:.1f}"
    MEASURED["qemu RSS, idle guest (MiB)"] = f"{lh.rss_kib(qemu) / 1024:.1f}"
    libvirtd = [pid for pid in launcher.descendants() if "libvirtd" in lh.cmdline(pid).split(" ")[0]]
    if libvirtd:
        MEASURED["libvirtd RSS (MiB)"] = f"{lh.rss_kib(libvirtd[0]) / 1024:.1f}"

    assert client.pause()["phase"] == "Paused"
    lh.wait_for(lambda: watcher.seen(phase="Paused", domainState="Paused"), 5, "watch: Paused")
    assert client.status()["phase"] == "Paused"
    assert client.unpause()["phase"] == "Running"
    lh.wait_for(lambda: watcher.statuses[-1]["phase"] == "Running", 5, "watch: Running again")

    stopped = time.monotonic()
    launcher.signal(signal.SIGTERM)
    assert launcher.wait_exit(30) == 0, launcher.stderr()
    MEASURED["SIGTERM -> exit, ACPI shutdown (s)"] = f"{time.monotonic() - stopped:.3f}"
    assert watcher.ended.wait(5), "watch did not end with the launcher"
    final = watcher.statuses[-1]
    assert (final["phase"], final["reason"]) == ("Succeeded", "Shutdown"), final
    assert guest_scripts.MARKER_POWEROFF in launcher.console_log()
    assert not launcher.leftovers(), launcher.leftovers()
    assert not launcher.socket.exists()
    assert not (launcher.sockets / f"{launcher.pod_uid}.libvirt").exists()
    for line in launcher.stderr().splitlines():
        assert "level=ERROR" not in line and "Traceback" not in line, launcher.stderr()
    with pytest.raises(LauncherUnavailable):
        client.status()


def test_a_seeded_tcg_node_starts_without_probing_or_reading_each_cpu_property(
        make_launcher: Any, launcher_env: dict[str, Path]) -> None:
    """libvirt accepts the seeded cache, tuned for TCG (libvirtd.tune_for_tcg): it neither re-probes QEMU
    (the file stays as seeded, nothing is saved back) nor reads the CPU property by property."""
    from kvtool.launcher import hostvirt, libvirtd

    def start_one() -> lh.Launcher:
        launcher = make_launcher().start()
        launcher.wait_socket()
        with launcher.client() as client:
            assert client.sync(launcher.vmi(kernel_boot_spec()))["phase"] == "Running", launcher.stderr()
        return launcher

    if not any(launcher_env["cache"].rglob("*.xml")):
        first = start_one()  # fills the node cache, paying the probe; saved by the time it has exited
        first.signal(signal.SIGTERM)
        assert first.wait_exit(30) == 0, first.stderr()
    node_files = {p.name: p.read_bytes() for p in launcher_env["cache"].rglob("*.xml")}
    assert node_files, "the first launcher saved no capability cache"
    launcher = start_one()
    try:
        seeded = {p.name: p.read_bytes() for p in (launcher.state / "libvirt/cache/qemu/capabilities").glob("*.xml")}
        tcg = hostvirt.detect_virt_type() == "qemu"
        assert seeded == {name: libvirtd.tune_for_tcg(data) if tcg else data for name, data in node_files.items()}
        if tcg:
            assert all(b"cpu-unavailable-features" not in data for data in seeded.values())
        launcher.signal(signal.SIGTERM)  # its teardown saves the cache too, if it has anything new
        assert launcher.wait_exit(30) == 0, launcher.stderr()
    finally:
        launcher.kill()
    assert "capabilities-cache-saved" not in launcher.stderr(), launcher.stderr()
    started = [line for line in launcher.stderr().splitlines() if "event=domain-started" in line]
    MEASURED["define+start, seeded cache (s)"] = started[0].rsplit("start_seconds=", 1)[1]


def test_guest_poweroff_ends_the_launcher(make_launcher: Any, launcher_env: dict[str, Path]) -> None:
    cache_state = describe_cache(launcher_env)
    launcher = make_launcher().start()
    launcher.wait_socket()
    with launcher.client() as client:
        watcher = Watcher(launcher.client())
        began = time.monotonic()
        assert client.sync(launcher.vmi(kernel_boot_spec(POWEROFF_SCRIPT)))["phase"] == "Running"
        MEASURED[f"sync -> Running (s), {cache_state}"] = f"{time.monotonic() - began:.3f}"
        assert launcher.wait_exit(BOOT_TIMEOUT) == 0, launcher.stderr()
    assert watcher.ended.wait(5)
    final = watcher.statuses[-1]
    assert (final["phase"], final["domainState"], final["reason"]) == ("Succeeded", "Shutoff", "Shutdown"), final
    assert guest_scripts.MARKER_POWEROFF in launcher.console_log()
    assert not launcher.leftovers()


def test_a_guest_kernels_report_of_trouble_reaches_the_status(make_launcher: Any) -> None:
    """The kernel's own words on the console (put there through /dev/kmsg, as an oops is) become the status'
    guestKernelError, which the handler shows on the VMI and the VM: a hung guest says why only there."""
    launcher = make_launcher().start()
    launcher.wait_socket()
    script = "#!/bin/sh\necho '<2>BUG: kvtool-test: a report of trouble' > /dev/kmsg\n"
    with launcher.client() as client:
        client.sync(launcher.vmi(kernel_boot_spec(script)))
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not (status := client.status()).get("guestKernelError") and time.monotonic() < deadline:
            time.sleep(0.2)
    assert status.get("guestKernelError") == "BUG: kvtool-test: a report of trouble", launcher.console_log()[-2000:]
    assert status["phase"] == "Running"  # the guest is not stopped for it: the user decides


# ---- ways a domain ends badly


def test_grace_period_runs_out(make_launcher: Any) -> None:
    """`shutdown` while the guest still boots (no ACPI handler yet): destroyed when graceSeconds run out, exit 0."""
    launcher = make_launcher(grace=30).start()
    launcher.wait_socket()
    with launcher.client() as client:
        watcher = Watcher(launcher.client())
        client.sync(launcher.vmi(kernel_boot_spec()))
        stopped = time.monotonic()
        assert client.shutdown(1)["phase"] == "Running"  # graceSeconds, not KVTOOL_GRACE_PERIOD, counts
    assert launcher.wait_exit(20) == 0, launcher.stderr()
    took = time.monotonic() - stopped
    assert 0.8 < took < 8, took
    assert watcher.ended.wait(5)
    final = watcher.statuses[-1]
    assert (final["phase"], final["reason"]) == ("Succeeded", "Destroyed"), final
    assert "grace period" in final["message"]
    assert not launcher.leftovers()


def test_qemu_killed_is_a_failure(make_launcher: Any) -> None:
    launcher = make_launcher().start()
    launcher.wait_socket()
    with launcher.client() as client:
        watcher = Watcher(launcher.client())
        client.sync(launcher.vmi(kernel_boot_spec()))
        qemu = lh.wait_for(launcher.qemu_pid, 5, "the QEMU process")
    import os

    os.kill(qemu, signal.SIGKILL)
    assert launcher.wait_exit(20) == 1, launcher.stderr()
    assert watcher.ended.wait(5)
    final = watcher.statuses[-1]
    assert final["phase"] == "Failed" and final["domainState"] == "Shutoff", final
    assert not launcher.leftovers()


def test_kill_9_of_the_launcher_leaves_nothing(make_launcher: Any) -> None:
    launcher = make_launcher().start()
    launcher.wait_socket()
    with launcher.client() as client:
        client.sync(launcher.vmi(kernel_boot_spec()))
        lh.wait_for(launcher.qemu_pid, 5, "the QEMU process")
    assert any("qemu-system" in text for _, text in launcher.leftovers())
    killed = time.monotonic()
    launcher.proc.kill()
    launcher.proc.wait(5)
    lh.wait_for(lambda: not launcher.leftovers(), 10, "libvirtd and QEMU to go", describe=lambda: json.dumps(
        launcher.leftovers()))
    MEASURED["kill -9 of the launcher -> no libvirtd/qemu left (s)"] = f"{time.monotonic() - killed:.3f}"

