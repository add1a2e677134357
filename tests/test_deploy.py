"""Real-cluster deployment: manifests, install/uninstall, least-privilege RBAC, the handler's node
restriction, leader election, and the image's parts (no Docker engine here: its pieces are tested)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest
import yaml

from kvtool import paths
from kvtool.deploy import install, manifests
from kvtool.images import container
from kvtool.local import cluster as local_cluster
from tests.conftest import Cluster, kvtool
from tests.runtime_helpers import get, wait_for, wait_running
from tests.vmfactory import vm

ROOT = paths.source_root()
CONTROLLER = manifests.sa_user(manifests.CONTROLLER)
HANDLER = manifests.sa_user(manifests.HANDLER)


def test_every_manifest_passes_server_side_dry_run(cluster: Cluster, tmp_path: Path) -> None:
    printed = kvtool("install", "--print", "--image", "registry.example/kvtool:test", check=True).stdout
    docs = list(yaml.safe_load_all(printed))
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
            "RoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "Deployment",
            "DaemonSet", "PodDisruptionBudget"} <= kinds
    f = tmp_path / "kvtool.yaml"
    f.write_text(printed)
    result = cluster.kubectl("apply", "--dry-run=server", "--server-side", "--force-conflicts", "-f", str(f))
    assert result.stdout.count("(server dry run)") == len(docs), result.stdout
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] == 2 and "--leader-elect" in container["command"]
    assert container["securityContext"]["runAsNonRoot"] and container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    daemonset = next(d for d in docs if d["kind"] == "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert not pod.get("hostPID") and not pod["containers"][0]["securityContext"].get("privileged")


def test_install_and_uninstall_round_trip(tmp_path: Path) -> None:
    home = tmp_path / "bare"
    env = {"KVTOOL_HOME": str(home)}
    try:
        kvtool("cluster", "up", "--bare", env=env, check=True, timeout=1800)
        kubeconfig = str(home / "kubeconfig")
        kvtool("--kubeconfig", kubeconfig, "install", "--image", "registry.example/kvtool:test", check=True)
        kvtool("--kubeconfig", kubeconfig, "validate", str(ROOT / "examples" / "lab.yaml"), check=True)
        kvtool("--kubeconfig", kubeconfig, "apply", "-f", str(ROOT / "examples" / "lab.yaml"), "--stack", "lab",
               "--auto-approve", check=True)
        refused = kvtool("--kubeconfig", kubeconfig, "uninstall", env=env)
        assert refused.returncode == 1 and "VirtualMachine(s) still exist" in refused.stderr
        kvtool("--kubeconfig", kubeconfig, "uninstall", "--force", env=env, check=True, timeout=300)
        left = kvtool("--kubeconfig", kubeconfig, "status", env=env)
        assert left.returncode == 1 and "virtualmachines" in left.stderr.lower()
    finally:
        local_cluster.down(home, purge=True, quiet=True)


CAN = [
    (CONTROLLER, "create", "pods", "default", True),
    (CONTROLLER, "delete", "virtualmachineinstances.kvtool.io", "default", True),
    (CONTROLLER, "patch", "virtualmachines.kvtool.io/status", "default", True),
    (CONTROLLER, "update", "virtualmachines.kvtool.io", "default", False),
    (CONTROLLER, "delete", "virtualmachines.kvtool.io", "default", True),  # a lab VM with on-expiry Delete
    (CONTROLLER, "create", "virtualmachines.kvtool.io", "default", True),  # a VirtualMachinePool's VMs
    (CONTROLLER, "patch", "virtualmachinepools.kvtool.io/status", "default", True),
    (CONTROLLER, "patch", "virtualmachinepools.kvtool.io", "default", False),  # its spec is the user's
    (CONTROLLER, "create", "jobs.batch", "default", True),  # a snapshot's or restore's copy Job
    (CONTROLLER, "create", "persistentvolumeclaims", "default", True),  # a snapshot's backup claims
    (CONTROLLER, "patch", "virtualmachinesnapshots.kvtool.io/status", "default", True),
    (CONTROLLER, "patch", "virtualmachinesnapshots.kvtool.io", "default", False),  # its spec is the user's
    (CONTROLLER, "patch", "virtualmachinerestores.kvtool.io/status", "default", True),
    (CONTROLLER, "get", "secrets", "default", False),
    (CONTROLLER, "delete", "nodes", "", False),
    (CONTROLLER, "update", "leases.coordination.k8s.io", "kvtool-system", True),
    (CONTROLLER, "update", "leases.coordination.k8s.io", "kube-system", False),
    (HANDLER, "patch", "virtualmachineinstances.kvtool.io/status", "default", True),
    (HANDLER, "create", "virtualmachineinstances.kvtool.io", "default", False),
    (HANDLER, "create", "pods", "default", False),
    (HANDLER, "get", "secrets", "default", False),
    (HANDLER, "patch", "virtualmachines.kvtool.io", "default", False),
    (manifests.sa_user("default", "default"), "get", "virtualmachines.kvtool.io", "default", False),
]


@pytest.mark.parametrize(("user", "verb", "resource", "namespace", "allowed"), CAN)
def test_service_accounts_have_least_privilege(cluster: Cluster, user: str, verb: str, resource: str,
                                               namespace: str, allowed: bool) -> None:
    scope = ["-n", namespace] if namespace else []
    resource, _, sub = resource.partition("/")
    if sub:
        scope.append(f"--subresource={sub}")
    result = cluster.kubectl("auth", "can-i", verb, resource, *scope, f"--as={user}", check=False)
    assert result.stdout.strip() == ("yes" if allowed else "no"), (user, verb, resource, result.stdout)


def _handler_pod(cluster: Cluster, node: str) -> str:
    return cluster.kubectl("-n", manifests.NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=kvtool-handler",
                           f"--field-selector=spec.nodeName={node}", "-o", "jsonpath={.items[0].metadata.name}").stdout


def _token_kubeconfig(cluster: Cluster, path: Path, token: str) -> str:
    """A kubeconfig with only this token: what a handler pod itself authenticates with."""
    from kvtool.clusterstate import read_state
    from kvtool.local import pki

    state = read_state(cluster.home)
    assert state is not None
    pki.write_kubeconfig(path, state.server, pki.PKI(cluster.home / "pki"), "handler", token=token)
    return str(path)


def test_a_handler_may_update_only_its_own_nodes_vmis(cluster: Cluster, tmp_path: Path) -> None:
    names = {node: f"own-{node[-1]}-{uuid.uuid4().hex[:4]}" for node in ("kvtool-node-1", "kvtool-node-2")}
    docs = []
    for node, name in names.items():
        doc = vm(name, run_strategy="Always")
        doc["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
        docs.append(doc)
    f = tmp_path / "pinned.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    kvtool("image", "build", "tiny-linux", check=True, timeout=600)
    kvtool("apply", "-f", str(f), "--stack", "rbac", "--auto-approve", check=True)
    try:
        for name in names.values():
            wait_running(cluster, name)
        # The real handler's own credentials: its pod's projected, pod-bound service-account token.
        token = cluster.kubectl("-n", manifests.NAMESPACE, "exec", _handler_pod(cluster, "kvtool-node-1"), "--",
                                "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token").stdout.strip()
        handler1 = _token_kubeconfig(cluster, tmp_path / "handler-1.kubeconfig", token)
        patch = '{"status":{"launcherContainerImageVersion":"touched-by-test"}}'
        own = subprocess.run([str(cluster.kubectl_path), "--kubeconfig", handler1, "patch", "vmi",
                              names["kvtool-node-1"], "--subresource=status", "--type=merge", "-p", patch],
                             capture_output=True, text=True)
        assert own.returncode == 0, own.stderr
        other = subprocess.run([str(cluster.kubectl_path), "--kubeconfig", handler1, "patch", "vmi",
                                names["kvtool-node-2"], "--subresource=status", "--type=merge", "-p", patch],
                               capture_output=True, text=True)
        assert other.returncode != 0
        assert "may only update VirtualMachineInstances on that node" in other.stderr
    finally:
        kvtool("destroy", "--stack", "rbac", "--auto-approve", check=True)


def _leader(cluster: Cluster) -> str:
    lease = get(cluster, "lease", manifests.LEASE, namespace=manifests.NAMESPACE) or {}
    return (lease.get("spec") or {}).get("holderIdentity") or ""


def _controller_pods(cluster: Cluster) -> list[str]:
    return cluster.kubectl("-n", manifests.NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/name=kvtool-controller",
                           "--field-selector=status.phase=Running", "-o", "name").stdout.split()


def test_leader_election_fails_over_without_duplicates(cluster: Cluster, tmp_path: Path) -> None:
    """The controller Deployment's two replicas: one leads; killing it hands over to the other."""
    wait_for(lambda: len(_controller_pods(cluster)) == 2 and _leader(cluster), timeout=60,
             what="two controller replicas and a leader")
    leader = _leader(cluster)
    assert f"pod/{leader}" in _controller_pods(cluster), (leader, _controller_pods(cluster))
    # The leader goes away at once (no graceful release of the Lease): the follower must wait it out.
    cluster.kubectl("-n", manifests.NAMESPACE, "delete", "pod", leader, "--grace-period=0", "--force")
    wait_for(lambda: _leader(cluster) not in ("", leader), timeout=60, what="the other replica to take over")
    name = f"le-{uuid.uuid4().hex[:5]}"
    f = tmp_path / "vm.yaml"
    f.write_text(yaml.safe_dump(vm(name, run_strategy="Always")))
    kvtool("apply", "-f", str(f), "--stack", "le", "--auto-approve", check=True)
    try:
        wait_for(lambda: get(cluster, "vmi", name) is not None, timeout=30, what="the new leader to create a VMI")
        # The Deployment's replacement replica comes up as a follower: still exactly one launcher pod.
        wait_for(lambda: len(_controller_pods(cluster)) == 2, timeout=90, what="the replacement replica")
        wait_for(lambda: cluster.kubectl("get", "pods", "-l", f"kvtool.io/vmi={name}", "-o", "name").stdout.split(),
                 timeout=30, what="the launcher pod")
        pods = cluster.kubectl("get", "pods", "-l", f"kvtool.io/vmi={name}", "-o", "name").stdout.split()
        assert len(pods) == 1, pods
    finally:
        kvtool("destroy", "--stack", "le", "--auto-approve", check=True)


def test_entrypoints_exist_and_print_help() -> None:
    for component in ("launcher", "handler", "controller", "install", "uninstall"):
        result = kvtool(component, "--help")
        assert result.returncode == 0 and "usage: kvtool" in result.stdout, component


def test_the_image_uses_the_one_package_list() -> None:
    dockerfile = (ROOT / "launcher_image" / "Dockerfile").read_text()
    assert dockerfile.count("COPY setup/apt-packages.txt") == 2
    assert "apt-get install" in dockerfile and "$2 == \"image\"" in dockerfile
    listed = {}
    for line in (ROOT / "setup" / "apt-packages.txt").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            package, where = line.split()
            listed[package] = where
    assert set(listed.values()) <= {"image", "build", "dev", "node"}
    # No package is named in the Dockerfile itself: they all come from the list.
    for package in listed:
        assert not re.search(rf"\binstall\b[^\n]*\b{re.escape(package)}\b", dockerfile), package
    setup = (ROOT / "setup" / "setup.sh").read_text()
    assert "setup/apt-packages.txt" in setup
    for needed in ("qemu-system-x86", "libvirt-daemon", "nftables", "util-linux"):
        assert listed[needed] == "image"
    ignore = (ROOT / ".dockerignore").read_text()
    assert "!kvtool/" in ignore and "!schemas/" in ignore
    # The apt source and pin that take QEMU and libvirt from bookworm-backports: the same files, at the same
    # paths, on the host (setup.sh), in the Dockerfile's two stages and in kvtool's own image build.
    for name, path in (("kvtool-backports.sources", container.APT_SOURCES_PATH),
                       ("kvtool-backports.pref", container.APT_PREFERENCES_PATH)):
        assert (ROOT / "setup" / name).is_file()
        assert dockerfile.count(f"COPY setup/{name} /{path}\n") == 2, name
        assert f"!setup/{name}\n" in ignore, name
        assert f"{name}:{path.removeprefix('etc/apt/')}" in setup, name


def test_a_wheel_carries_the_schemas(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("kvtool-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"kvtool/api/schemas/virtualmachine.json", "kvtool/api/schemas/common.json"} <= set(names)


def test_health_and_metrics_endpoints() -> None:
    from kvtool import observe
    from kvtool.controller import metrics

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = {"ok": True}
    server = observe.serve(port, healthy=lambda: state["ok"], host="127.0.0.1")
    try:
        metrics.SYNCS.labels(kind="vm", result="ok").inc()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as resp:
            body = resp.read().decode()
        assert 'kvtool_controller_syncs_total{kind="vm",result="ok"}' in body
        state["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz")
        assert exc.value.code == 503
    finally:
        server.shutdown()


def test_manifests_in_the_repository_are_current() -> None:
    committed = ROOT / "launcher_image" / "manifests" / "kvtool.yaml"
    generated = yaml.safe_dump_all(manifests.all_manifests(), sort_keys=False, width=120)
    assert committed.read_text() == generated, \
        "regenerate with: kvtool install --print > launcher_image/manifests/kvtool.yaml"


def test_install_refuses_a_cluster_too_old_for_the_handlers_watch() -> None:
    too_old = install.unsupported({"major": "1", "minor": "30", "gitVersion": "v1.30.4"})
    assert too_old is not None and "1.31 or later" in too_old and "v1.30.4" in too_old and "status.nodeName" in too_old
    assert install.unsupported({"major": "1", "minor": "31+", "gitVersion": "v1.31.2-eks-1"}) is None, "a cloud's minor"
    assert install.unsupported({"major": "1", "minor": "34"}) is None
    assert install.unsupported({}) is None, "a version it cannot read is let through"
