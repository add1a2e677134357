"""The node agent against the real embedded cluster: a Node, the scheduler, real processes.

One agent (`kvtool node-agent`, a subprocess authenticated as system:node:<name>) serves this
module. Its pods use command ["kvtool", ...] with the test's launcher image: `kvtool --version`
(exits 0), `kvtool cluster nonexistent-action` (exits 2) and `kvtool node-agent pause` (the node's
pause process: runs until SIGTERM, then exits 0 after --term-delay seconds).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.conftest import Cluster
from tests.waiting import wait_for

IMAGE = "test.kvtool.io/launcher:under-test"
MARK = "KVTOOL_TEST_NODE"  # every test pod carries it, so leftovers can be found in /proc


def proc_env(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def alive(pid: int) -> bool:
    """The process runs (a zombie has ended; its parent just has not collected it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids_with_env(key: str, value: str) -> list[int]:
    """Live (non-zombie) processes whose environment has key=value."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and proc_env(int(entry.name)).get(key) == value and alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


def uptime() -> float:
    """Seconds since boot: the clock /proc/<pid>/stat's start times count on."""
    return float(Path("/proc/uptime").read_text().split()[0])


def start_time(pid: int) -> float:
    """When a process started, in seconds since boot (10 ms resolution)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Agent:
    cluster: Cluster
    node: str
    root: Path
    run_dir: Path
    images: Path
    kubeconfig: Path
    log: Path
    core: client.CoreV1Api
    proc: subprocess.Popen[bytes] | None = None
    pods: list[str] = field(default_factory=list)

    def start(self) -> None:
        env = {**os.environ, "KVTOOL_CLUSTER_HOME": str(self.cluster.home)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvtool.cli.main", "node-agent", "--node", self.node,
                 "--kubeconfig", str(self.kubeconfig), "--root", str(self.root), "--run-dir", str(self.run_dir),
                 "--launcher-image", IMAGE, "--cpu", "4", "--memory", "8Gi", "--label", "kvtool.io/test=yes",
                 "--hostpath-map", f"/var/run/kvtool={self.run_dir}",
                 "--hostpath-map", f"/var/lib/kvtool/images={self.images}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=20) == 0, self.log.read_text()[-3000:]
        self.proc = None

    def ready(self) -> str | None:
        try:
            node = self.core.read_node(self.node)
        except ApiException:
            return None
        cond = next((c for c in node.status.conditions or [] if c.type == "Ready"), None)
        return cond.status if cond else None

    def pod(self, name: str, command: list[str], *, image: str = IMAGE, grace: int = 30,
            env: list[dict[str, Any]] | None = None, mounts: list[dict[str, Any]] | None = None,
            volumes: list[dict[str, Any]] | None = None, labels: dict[str, str] | None = None,
            bind: bool = False) -> client.V1Pod:
        """Create a pod the scheduler must place on this agent's node (by nodeSelector), or bound already."""
        manifest = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": grace,
                     "nodeSelector": {"kubernetes.io/hostname": self.node},
                     **({"nodeName": self.node} if bind else {}),
                     "containers": [{"name": "compute", "image": image, "command": command,
                                     "env": [{"name": MARK, "value": self.node},
                                             {"name": "KVTOOL_POD_UID",
                                              "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                                             *(env or [])],
                                     "volumeMounts": mounts or []}],
                     "volumes": volumes or []}}
        self.pods.append(name)
        return self.core.create_namespaced_pod("default", manifest)

    def read(self, name: str) -> client.V1Pod | None:
        try:
            return self.core.read_namespaced_pod(name, "default")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def wait_phase(self, name: str, *phases: str, timeout: float = 30) -> client.V1Pod:
        def check() -> client.V1Pod | None:
            pod = self.read(name)
            return pod if pod is not None and pod.status.phase in phases else None
        try:
            return wait_for(check, timeout, what=f"pod {name} to be {'/'.join(phases)}")
        except AssertionError as exc:
            pod = self.read(name)
            raise AssertionError(f"{exc}\nstatus: {pod.status if pod else 'gone'}\n"
                                 f"agent log:\n{self.log.read_text()[-4000:]}") from None

    def wait_pause(self, pod: client.V1Pod) -> int:
        """The pause process's pid, once it waits for SIGTERM (earlier, SIGTERM would just kill it)."""
        pid = self.pid(self.wait_phase(pod.metadata.name, "Running"))
        log = self.root / "pods" / pod.metadata.uid / "compute.log"
        wait_for(lambda: log.exists() and "pause: waiting" in log.read_text(), 10, interval=0.02,
                 what=f"pod {pod.metadata.name}'s pause process to wait for SIGTERM")
        return pid

    def pid(self, pod: client.V1Pod) -> int:
        container_id = pod.status.container_statuses[0].container_id
        assert container_id.startswith("kvtool-process://"), container_id
        return int(container_id.removeprefix("kvtool-process://"))

    def leftovers(self) -> list[int]:
        return pids_with_env(MARK, self.node)


@pytest.fixture(scope="module")
def agent(cluster: Cluster) -> Iterator[Agent]:
    from kvtool.local import pki

    node = f"na-{uuid.uuid4().hex[:6]}"
    home = cluster.home
    p = pki.PKI(home / "pki")
    ident = pki.node_identity(node)
    cert, key = p.ensure_client(ident)
    server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    kubeconfig = pki.write_kubeconfig(home / "kubeconfigs" / f"{node}.kubeconfig", server, p, ident.common_name,
                                      cert=cert, key=key)
    root = home / "nodes" / node
    images = home / f"{node}-images"
    images.mkdir(parents=True)
    a = Agent(cluster, node, root, Path(f"/tmp/kvt-{node}"), images, kubeconfig, home / "logs" / f"{node}.log",
              client.CoreV1Api(cluster.api()))
    a.start()
    try:
        wait_for(lambda: a.ready() == "True", 30, what=f"node {node} to be Ready")
        yield a
    finally:
        for name in a.pods:
            with contextlib.suppress(ApiException):
                a.core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        if a.proc is not None:
            # The agent cleans up after force-deleted pods; give it the minimum grace it uses.
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not a.leftovers(), 15, what="the agent to stop its containers")
        a.stop()
        left = a.leftovers()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ApiException):
            a.core.delete_node(node)
        subprocess.run(["rm", "-rf", str(a.run_dir), str(images)], check=False)
        assert not left, f"containers of node {node} left running: {left}"


def test_node_registers_ready_with_its_facts(agent: Agent) -> None:
    node = agent.core.read_node(agent.node)
    labels = node.metadata.labels
    assert labels["kubernetes.io/hostname"] == agent.node and labels["kvtool.io/node-agent"] == "true"
    assert labels["kubernetes.io/os"] == "linux" and labels["kvtool.io/test"] == "yes"
    assert node.status.capacity["cpu"] == "4" and node.status.capacity["memory"] == "8Gi"
    assert node.status.allocatable["pods"] == "110" and "ephemeral-storage" in node.status.capacity
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True" and ready.reason == "KvtoolAgentReady"
    for kind in ("MemoryPressure", "DiskPressure", "PIDPressure"):
        assert next(c for c in node.status.conditions if c.type == kind).status == "False"
    info = node.status.node_info
    assert info.kubelet_version.startswith("v1.34.") and info.kubelet_version.endswith("-kvtool")
    assert info.container_runtime_version.startswith("kvtool-process://")
    assert info.operating_system == "linux" and info.os_image and info.kernel_version
    assert {(a.type, a.address) for a in node.status.addresses} == {("InternalIP", "127.0.0.1"),
                                                                    ("Hostname", agent.node)}
    lease = client.CoordinationV1Api(agent.core.api_client).read_namespaced_lease(agent.node, "kube-node-lease")
    assert lease.spec.holder_identity == agent.node
    assert lease.metadata.owner_references[0].name == agent.node
    # The node lifecycle controller lifts its not-ready taints once the node is Ready.
    wait_for(lambda: not (agent.core.read_node(agent.node).spec.taints or []), 20, what="no taints on the node")
    assert "event=registered node=" in agent.log.read_text()


def test_pod_is_scheduled_runs_and_reports_exit_codes(agent: Agent) -> None:
    pod = agent.pod("na-pause", ["kvtool", "node-agent", "pause"])
    bound_at = wait_for(lambda: (agent.read("na-pause").spec.node_name and uptime()), 30, interval=0.01,
                        what="the scheduler to bind the pod")
    assert agent.read("na-pause").spec.node_name == agent.node
    running = agent.wait_phase("na-pause", "Running")
    pid = agent.pid(running)
    print(f"\nbound (as the test saw it) → process started: {(start_time(pid) - bound_at) * 1000:.0f} ms "
          "(/proc clocks, 10 ms resolution)")
    cs = running.status.container_statuses[0]
    assert cs.ready and cs.started and cs.restart_count == 0 and cs.image == IMAGE
    assert cs.state.running.started_at is not None and cs.image_id.startswith("kvtool-process://")
    conds = {c.type: c.status for c in running.status.conditions}
    assert conds == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "True", "Ready": "True",
                     "PodReadyToStartContainers": "True"}
    assert running.status.pod_ip == "127.0.0.1" and running.status.host_ip == "127.0.0.1"
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-3:-1] == [b"node-agent", b"pause"]
    assert proc_env(pid)["KVTOOL_CLUSTER_HOME"] == str(agent.cluster.home)
    assert (agent.root / "pods" / pod.metadata.uid / "compute.log").exists()

    # The process ends on its own (SIGTERM from outside, exit 0): the pod Succeeded.
    assert agent.wait_pause(pod) == pid
    os.kill(pid, signal.SIGTERM)
    done = agent.wait_phase("na-pause", "Succeeded")
    term = done.status.container_statuses[0].state.terminated
    assert term.exit_code == 0 and term.reason == "Completed" and term.container_id == f"kvtool-process://{pid}"
    assert term.finished_at >= term.started_at
    assert {c.type: c.status for c in done.status.conditions}["Ready"] == "False"

    agent.pod("na-exit2", ["kvtool", "cluster", "nonexistent-action"])
    failed = agent.wait_phase("na-exit2", "Failed")
    term = failed.status.container_statuses[0].state.terminated
    assert term.exit_code == 2 and term.reason == "Error" and term.signal is None
    log = (agent.root / "pods" / failed.metadata.uid / "compute.log").read_text()
    assert "invalid choice: 'nonexistent-action'" in log

    agent.pod("na-version", ["kvtool", "--version"])
    assert agent.wait_phase("na-version", "Succeeded").status.container_statuses[0].state.terminated.exit_code == 0
    assert "event=started node=" in agent.log.read_text()


def test_foreign_pod_is_refused_and_never_run(agent: Agent) -> None:
    pod = agent.pod("na-nginx", ["nginx"], image="nginx:1.27")
    failed = agent.wait_phase("na-nginx", "Failed")
    assert failed.status.reason == "UnsupportedPod"
    assert "uses image 'nginx:1.27'" in failed.status.message
    assert f"runs only kvtool launcher pods: one container with image {IMAGE}" in failed.status.message
    assert not failed.status.container_statuses
    assert not (agent.root / "pods" / pod.metadata.uid).exists()
    agent.pod("na-shell", ["sh", "-c", "true"])
    assert "has command ['sh', '-c', 'true']" in agent.wait_phase("na-shell", "Failed").status.message
    events = agent.core.list_namespaced_event("default", field_selector="involvedObject.name=na-nginx")
    assert any(e.reason == "UnsupportedPod" and e.source.host == agent.node for e in events.items)


def field_ref(path: str) -> dict[str, Any]:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def test_env_field_refs_and_path_translation(agent: Agent) -> None:
    core = agent.core
    core.create_namespaced_secret("default", {"metadata": {"name": "na-cloudinit"},
                                              "stringData": {"userdata": "#cloud-config\n", "networkdata": "v: 2\n"}})
    core.create_namespaced_persistent_volume_claim("default", {
        "metadata": {"name": "na-disk"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    try:
        agent.pod("na-env", ["kvtool", "node-agent", "pause"], labels={"app": "na"}, env=[
            {"name": "KVTOOL_POD_NAME", **field_ref("metadata.name")},
            {"name": "KVTOOL_POD_NAMESPACE", **field_ref("metadata.namespace")},
            {"name": "KVTOOL_NODE_NAME", **field_ref("spec.nodeName")},
            {"name": "POD_IP", **field_ref("status.podIP")},
            {"name": "APP", **field_ref("metadata.labels['app']")},
            {"name": "KVTOOL_SOCKETS_DIR", "value": "/var/run/kvtool/sockets"},
            {"name": "KVTOOL_STATE_DIR", "value": "/var/lib/kvtool/private"},
            {"name": "KVTOOL_IMAGES", "value": "/var/lib/kvtool/images"},
            {"name": "KVTOOL_VOLUMES_DIR", "value": "/var/run/kvtool/volumes"},
            {"name": "OVERLAY", "value": "$(KVTOOL_STATE_DIR)/overlays"},
            {"name": "PLAIN", "value": "/etc/hostname"},
        ], mounts=[
            {"name": "sockets", "mountPath": "/var/run/kvtool/sockets"},
            {"name": "private", "mountPath": "/var/lib/kvtool/private"},
            {"name": "images", "mountPath": "/var/lib/kvtool/images", "readOnly": True},
            {"name": "cloudinit", "mountPath": "/var/run/kvtool/volumes/cloudinit"},
            {"name": "disk", "mountPath": "/var/run/kvtool/volumes/disk"},
            {"name": "hostdisk", "mountPath": "/var/run/kvtool/volumes/hostdisk"},
        ], volumes=[
            {"name": "sockets", "hostPath": {"path": "/var/run/kvtool/sockets", "type": "DirectoryOrCreate"}},
            {"name": "private", "emptyDir": {}},
            {"name": "images", "hostPath": {"path": "/var/lib/kvtool/images", "type": "Directory"}},
            {"name": "cloudinit", "secret": {"secretName": "na-cloudinit"}},
            {"name": "disk", "persistentVolumeClaim": {"claimName": "na-disk"}},
            {"name": "hostdisk", "hostPath": {"path": "/data/disks", "type": "DirectoryOrCreate"}},
        ])
        pod = agent.wait_phase("na-env", "Running")
        uid, pod_dir = pod.metadata.uid, agent.root / "pods" / pod.metadata.uid
        env = proc_env(agent.pid(pod))
        assert (env["KVTOOL_POD_UID"], env["KVTOOL_POD_NAME"], env["KVTOOL_POD_NAMESPACE"]) == (uid, "na-env",
                                                                                                 "default")
        assert (env["KVTOOL_NODE_NAME"], env["POD_IP"], env["APP"]) == (agent.node, "127.0.0.1", "na")
        assert env["KVTOOL_SOCKETS_DIR"] == str(agent.run_dir / "sockets")
        assert (agent.run_dir / "sockets").is_dir()
        assert env["KVTOOL_STATE_DIR"] == str(pod_dir / "volumes" / "private")
        assert env["OVERLAY"] == str(pod_dir / "volumes" / "private" / "overlays")
        assert env["KVTOOL_IMAGES"] == str(agent.images)
        assert env["PLAIN"] == "/etc/hostname"
        # A directory above mountPaths: a tree of symlinks, so $KVTOOL_VOLUMES_DIR/<volume> works.
        volumes_dir = Path(env["KVTOOL_VOLUMES_DIR"])
        secret_dir = volumes_dir / "cloudinit"
        assert secret_dir.resolve() == pod_dir / "volumes" / "cloudinit"
        assert (secret_dir / "userdata").read_text() == "#cloud-config\n"
        for name in ("userdata", "networkdata"):
            assert stat.S_IMODE((secret_dir / name).stat().st_mode) == 0o600
        claim = core.read_namespaced_persistent_volume_claim("na-disk", "default")
        pv = core.read_persistent_volume(claim.spec.volume_name)
        assert (volumes_dir / "disk").resolve() == Path(pv.spec.host_path.path).resolve()
        assert (volumes_dir / "hostdisk").resolve() == agent.root / "hostpath" / "data" / "disks"
    finally:
        core.delete_namespaced_secret("na-cloudinit", "default")
        core.delete_namespaced_persistent_volume_claim("na-disk", "default")


def test_pod_waits_for_an_unbound_claim(agent: Agent) -> None:
    core = agent.core
    core.create_namespaced_persistent_volume_claim("default", {
        "metadata": {"name": "na-unbound"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "na-no-such-class",
                 "resources": {"requests": {"storage": "1Gi"}}}})
    try:
        # The scheduler places no pod with an unbound claim; a pod created bound meets the agent's wait.
        pod = agent.pod("na-waiting", ["kvtool", "--version"], mounts=[{"name": "d", "mountPath": "/d"}],
                        volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "na-unbound"}}], bind=True)

        def waiting() -> Any:
            p = agent.read("na-waiting")
            statuses = p.status.container_statuses or []
            return statuses and statuses[0].state.waiting
        state = wait_for(waiting, 20, what="the pod to wait for its claim")
        assert state.reason == "ContainerCreating"
        assert state.message == "waiting for PersistentVolumeClaim default/na-unbound to be bound (phase Pending)"
        waiting_pod = agent.read("na-waiting")
        assert waiting_pod.status.phase == "Pending"
        # Never met the scheduler, so the agent says it is scheduled, as kubelet does.
        assert {c.type: c.status for c in waiting_pod.status.conditions}["PodScheduled"] == "True"
        # Never started, so deleting it needs no grace: the agent removes the object at once.
        agent.core.delete_namespaced_pod("na-waiting", "default")
        wait_for(lambda: agent.read("na-waiting") is None, 10, what="the pod to be deleted")
        assert not (agent.root / "pods" / pod.metadata.uid).exists()
    finally:
        core.delete_namespaced_persistent_volume_claim("na-unbound", "default")


def _watch_terminated(agent: Agent, name: str, seen: dict[str, Any], timeout: int = 30) -> None:
    """Record the pod's last terminated state before it disappears (the agent reports it, then deletes)."""
    w = watch.Watch()
    for event in w.stream(agent.core.list_namespaced_pod, "default", field_selector=f"metadata.name={name}",
                          timeout_seconds=timeout):
        statuses = event["object"].status.container_statuses or []
        if statuses and statuses[0].state.terminated:
            seen["terminated"] = statuses[0].state.terminated
        if event["type"] == "DELETED":
            seen["deleted_at"] = time.monotonic()
            w.stop()


def test_delete_sigterms_waits_then_removes_pod(agent: Agent) -> None:
    polite = agent.pod("na-polite", ["kvtool", "node-agent", "pause", "--term-delay", "1"], grace=10)
    stubborn = agent.pod("na-stubborn", ["kvtool", "node-agent", "pause", "--term-delay", "60"], grace=2)
    pids = {p.metadata.name: agent.wait_pause(p) for p in (polite, stubborn)}
    seen: dict[str, dict[str, Any]] = {"na-polite": {}, "na-stubborn": {}}
    watchers = [threading.Thread(target=_watch_terminated, args=(agent, n, seen[n])) for n in seen]
    for t in watchers:
        t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    agent.core.delete_namespaced_pod("na-polite", "default")
    agent.core.delete_namespaced_pod("na-stubborn", "default")
    for t in watchers:
        t.join(40)
    polite_term, stubborn_term = seen["na-polite"]["terminated"], seen["na-stubborn"]["terminated"]
    # SIGTERM honoured: the pause process lingered 1 s and exited 0; the pod went only after that.
    assert polite_term.exit_code == 0 and polite_term.signal is None
    assert 1.0 <= seen["na-polite"]["deleted_at"] - t0 < 5
    # Grace period (2 s) over before the process was done: SIGKILL, reported as such.
    assert stubborn_term.exit_code == 137 and stubborn_term.signal == 9 and stubborn_term.reason == "Error"
    assert 2.0 <= seen["na-stubborn"]["deleted_at"] - t0 < 6
    for pod in (polite, stubborn):
        assert not (agent.root / "pods" / pod.metadata.uid).exists()
    assert not any(alive(pid) for pid in pids.values())
    log = agent.log.read_text()
    assert "signal=SIGTERM grace=10s" in log and "signal=SIGKILL" in log and "event=deleted" in log


def test_force_deleted_pod_is_killed_and_cleaned(agent: Agent) -> None:
    pod = agent.pod("na-forced", ["kvtool", "node-agent", "pause", "--term-delay", "60"])
    pid = agent.wait_pause(pod)
    agent.core.delete_namespaced_pod("na-forced", "default", grace_period_seconds=0)
    wait_for(lambda: not alive(pid), 10, what="the force-deleted pod's process to end")
    wait_for(lambda: not (agent.root / "pods" / pod.metadata.uid).exists(), 5, what="the pod dir to go")


def test_agent_restart_adopts_containers_and_node_liveness(agent: Agent) -> None:
    keep = agent.pod("na-keep", ["kvtool", "node-agent", "pause"])
    orphan = agent.pod("na-orphan", ["kvtool", "node-agent", "pause"])
    ended = agent.pod("na-ended", ["kvtool", "node-agent", "pause"])
    keep_pid, orphan_pid, ended_pid = agent.wait_pause(keep), agent.wait_pause(orphan), agent.wait_pause(ended)

    agent.stop()  # SIGTERM: the agent exits, its containers stay
    assert alive(keep_pid) and alive(orphan_pid) and alive(ended_pid)
    assert "containers=left-running" in agent.log.read_text()
    agent.core.delete_namespaced_pod("na-orphan", "default", grace_period_seconds=0)
    os.kill(ended_pid, signal.SIGINT)  # ends while no agent watches: its shim keeps the exit status
    t0 = time.monotonic()
    wait_for(lambda: agent.ready() == "Unknown", 60, interval=0.5, what="the node to turn NotReady")
    print(f"\nagent stopped → node NotReady after {time.monotonic() - t0:.1f} s")
    assert alive(keep_pid)

    agent.start()
    wait_for(lambda: agent.ready() == "True", 30, what="the node to be Ready again")
    # The running container is adopted: same pid, still Running, and no second process.
    wait_for(lambda: "event=adopted" in agent.log.read_text(), 10, what="the agent to adopt its pods")
    time.sleep(1)
    pod = agent.read("na-keep")
    assert pod.status.phase == "Running" and agent.pid(pod) == keep_pid
    containers = [p for p in pids_with_env("KVTOOL_POD_UID", keep.metadata.uid)
                  if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[2] == b"kvtool.cli.main"]  # not shims
    assert containers == [keep_pid], containers
    # The container that ended while the agent was away: reported with its real exit code.
    term = agent.wait_phase("na-ended", "Succeeded").status.container_statuses[0].state.terminated
    assert term.exit_code == 0 and term.container_id == f"kvtool-process://{ended_pid}"
    # The pod deleted while the agent was away: process killed, dir removed.
    wait_for(lambda: not alive(orphan_pid), 10, what="the orphan's process to end")
    wait_for(lambda: not (agent.root / "pods" / orphan.metadata.uid).exists(), 5, what="the orphan's dir to go")


def test_node_credentials_cannot_touch_other_nodes_pods(agent: Agent) -> None:
    from kvtool.kube import clients

    other = f"na-other-{uuid.uuid4().hex[:4]}"
    agent.core.create_namespaced_pod("default", {
        "metadata": {"name": other}, "spec": {"nodeName": other, "containers": [{"name": "c", "image": IMAGE}]}})
    agent.pods.append(other)
    as_node = client.CoreV1Api(clients.api_client(agent.kubeconfig))
    with pytest.raises(ApiException) as exc:
        as_node.patch_namespaced_pod_status(other, "default", {"status": {"phase": "Failed"}})
    assert exc.value.status == 403
    with pytest.raises(ApiException) as exc:
        as_node.delete_namespaced_pod(other, "default")
    assert exc.value.status == 403
    with pytest.raises(ApiException) as exc:  # listing pods needs the spec.nodeName=<self> field selector
        as_node.list_pod_for_all_namespaces()
    assert exc.value.status == 403
    assert as_node.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={agent.node}") is not None
