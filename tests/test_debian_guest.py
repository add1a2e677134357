"""The debian-12 cloud image on the cluster: it boots by itself as a containerDisk (SeaBIOS → GRUB → systemd),
shows a login prompt on the serial console, runs cloud-init's user data, takes the SSH key of KubeVirt's
accessCredentials, and `kvtool ssh` runs a command in it with that key."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Cluster, kvtool
from tests.runtime_helpers import wait_for, wait_running

STACK = "debian"
# TCG on two cores: the kernel, systemd and cloud-init's four stages (Python) take a minute or two.
BOOT_TIMEOUT = 420


def debian_vm(name: str, image: str, user_data: str, key_secret: str) -> dict[str, Any]:
    """A KubeVirt-shaped VM booting `image` as its root disk, with NoCloud user data and an SSH key secret."""
    return {
        "apiVersion": "kvtool.io/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "domain": {"cpu": {"cores": 1}, "memory": {"guest": "1Gi"},
                       "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}},
                                             {"name": "cloudinit", "disk": {"bus": "virtio"}}],
                                   "interfaces": [{"name": "default", "masquerade": {}}]}},
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [{"name": "root", "containerDisk": {"image": image}},
                        {"name": "cloudinit", "cloudInitNoCloud": {"userData": user_data}}],
            "accessCredentials": [{"sshPublicKey": {"source": {"secret": {"secretName": key_secret}},
                                                    "propagationMethod": {"noCloud": {}}}}],
        }}},
    }


def console(name: str) -> str:
    return kvtool("console", name, "--tail").stdout


def test_debian_12_boots_runs_cloud_init_and_answers_ssh(cluster: Cluster, debian_image: str,
                                                        tmp_path: Path) -> None:
    name = f"deb-{uuid.uuid4().hex[:5]}"
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "student", "-f", str(key)], check=True)
    marker = f"cloud-init-ran-{uuid.uuid4().hex[:8]}"
    user_data = "#cloud-config\nruncmd:\n  - [sh, -c, 'echo " + marker + " > /dev/ttyS0']\n"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-keys"},
              "stringData": {"student": key.with_suffix(".pub").read_text().strip()}}
    stack = tmp_path / "stack.yaml"
    stack.write_text(yaml.safe_dump_all([debian_vm(name, debian_image, user_data, f"{name}-keys"), secret]))
    started = time.monotonic()
    kvtool("apply", "-f", str(stack), "--stack", STACK, "--auto-approve", check=True)
    timeline: dict[str, float] = {}
    try:
        wait_running(cluster, name, timeout=180)
        timeline["Running"] = time.monotonic() - started
        wait_for(lambda: "GNU GRUB" in console(name) or "Booting" in console(name), timeout=120,
                 what=f"{name}: GRUB on the serial console", describe=lambda: console(name)[-3000:])
        timeline["GRUB"] = time.monotonic() - started
        wait_for(lambda: marker in console(name), timeout=BOOT_TIMEOUT, what=f"{name}: cloud-init's runcmd marker",
                 describe=lambda: console(name)[-3000:])
        timeline["cloud-init runcmd"] = time.monotonic() - started
        wait_for(lambda: f"{name} login:" in console(name), timeout=BOOT_TIMEOUT,
                 what=f"{name}: a login prompt (named by cloud-init's hostname)",
                 describe=lambda: console(name)[-3000:])
        timeline["login prompt"] = time.monotonic() - started

        def ssh(*command: str) -> subprocess.CompletedProcess[str]:
            return kvtool("ssh", f"debian@{name}", "-i", str(key), "--known-hosts", str(tmp_path / "known_hosts"),
                          "-o", "ConnectTimeout=20", "-o", "BatchMode=yes", "--", *command, timeout=120)

        result = wait_for(lambda: (r := ssh("uname", "-a")).returncode == 0 and r, timeout=120,
                          what=f"ssh to {name} with the accessCredentials key",
                          describe=lambda: ssh("true").stderr)
        timeline["ssh uname"] = time.monotonic() - started
        print("\ndebian-12 from apply, s: " + ", ".join(f"{k} {v:.1f}" for k, v in timeline.items()))
        assert result.stdout.startswith(f"Linux {name} ") and "x86_64" in result.stdout, result.stdout
        # The remote command's exit status is kvtool ssh's; the host key is now on file under the VM's name.
        assert ssh("exit", "3").returncode == 3
        found = subprocess.run(["ssh-keygen", "-F", f"vm/{name}.default", "-f", str(tmp_path / "known_hosts")],
                               capture_output=True, text=True)  # (Debian's ssh hashes the names it files)
        assert found.returncode == 0 and "ssh-ed25519" in found.stdout, found
        # A key the guest does not know is refused by the guest, not by kvtool.
        other = tmp_path / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        denied = kvtool("ssh", f"debian@{name}", "-i", str(other), "--known-hosts", str(tmp_path / "known_hosts"),
                        "-o", "BatchMode=yes", "--", "true", timeout=120)
        assert denied.returncode == 255 and "Permission denied" in denied.stderr, denied.stderr
    finally:
        kvtool("destroy", "--stack", STACK, "--auto-approve", check=True)
