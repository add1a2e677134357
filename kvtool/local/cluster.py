"""`kvtool cluster up | down | status`: the client side of the embedded cluster.

`up` builds the control-plane binary if needed, starts a detached supervisor
(kvtool.local.supervisor) and follows its progress through cluster.json;
`down` asks the supervisor to stop everything and then makes sure nothing
it started is left; `status` reads the state and asks the API if it is ready.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvtool.clusterstate import ClusterState, cluster_running, lock_held, pid_alive, read_state
from kvtool.errors import ClusterError, ConfigError
from kvtool.local import build, components, nodehost, supervisor
from kvtool.local import pki as pki_mod
from kvtool.local.layout import Layout

UP_TIMEOUT = 300.0
DOWN_TIMEOUT = 60.0


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def is_up(home: Path) -> bool:
    return cluster_running(home)


def leftover_processes(home: Path) -> list[int]:
    """PIDs of processes this home's cluster started that are still around.

    A process is ours if it carries the home marker in its environment, or if
    its command line points into the home (QEMU, whose environment libvirt
    scrubs). The caller and its ancestors are never included.
    """
    marker = f"{supervisor.MARKER}={home}".encode()
    needle = (str(home) + "/").encode()
    exclude = _ancestors()
    found = [p for p in nodehost.cgroup_pids(Layout(home).cgroup_root) if p not in exclude]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if (marker in env or needle in cmdline) and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(set(found))


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _kill_all(pids: list[int], timeout: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def up(home: Path, nodes: int = 2, apiserver_port: int | None = None, quiet: bool = False,
       timeout: float = UP_TIMEOUT, bare: bool = False) -> ClusterState:
    layout = Layout(home)
    home.mkdir(parents=True, exist_ok=True)
    if lock_held(layout):
        state = read_state(home)
        if state is not None and state.phase == "running":
            _say(quiet, f"The embedded cluster in {home} is already running at {state.server}.")
            return state
        _say(quiet, f"A cluster in {home} is starting; waiting for it.")
        return _follow(layout, quiet, timeout, shown=0)

    state = read_state(home)  # raises ConfigError if the state dir is corrupt
    leftovers = leftover_processes(home)
    if (state is not None and state.phase not in ("stopped",)) or leftovers:
        _say(quiet, f"Cleaning up a stale cluster in {home} (its supervisor is gone; "
                    f"{len(leftovers)} leftover process(es)).")
        _kill_all(leftovers)
    _check_state_dir(layout)
    if apiserver_port:
        from kvtool.local.startup import port_in_use

        if port_in_use(apiserver_port):
            raise ClusterError(f"port {apiserver_port} (asked for with --port) is already in use",
                               hint="pick another port, or omit --port to let kvtool choose a free one")

    binary = build.ensure_binary(progress=not quiet)
    layout.logs.mkdir(parents=True, exist_ok=True)
    config: dict[str, object] = {
        "binary": str(binary), "nodes": [] if bare else [f"kvtool-node-{i}" for i in range(1, nodes + 1)],
        "apiserver_port": apiserver_port, "bare": bare}
    if not bare and nodes:
        config.update(node_artifacts(quiet))
    config_path = home / "supervisor-config.json"
    config_path.write_text(json.dumps(config))
    (home / "cluster.json").unlink(missing_ok=True)
    env = dict(os.environ, **{supervisor.MARKER: str(home)})
    with open(layout.log("supervisor"), "ab") as out:
        subprocess.Popen([sys.executable, "-m", "kvtool.local.supervisor", "--home", str(home),
                          "--config", str(config_path)],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True, env=env, cwd=home)
    _say(quiet, f"Starting the embedded cluster in {home} ...")
    return _follow(layout, quiet, timeout, shown=0)


def node_artifacts(quiet: bool) -> dict[str, object]:
    """What real nodes run, built (or found cached) here so the user sees the progress: containerd and
    the images every node imports (the pod sandbox and kvtool's own image)."""
    from kvtool.images import container

    say = (lambda _m: None) if quiet else (lambda m: _say(False, m))
    runtime = build.ensure_containerd(progress=not quiet)
    pause = container.build_pause(build.ensure_pause(progress=not quiet), progress=say)
    launcher = container.build_launcher(progress=say)
    return {"containerd": str(runtime.parent / "containerd"), "coredns": str(build.ensure_coredns(progress=not quiet)),
            "images": {"pause": {"ref": pause.reference, "archive": str(pause.archive)},
                       "launcher": {"ref": launcher.reference, "archive": str(launcher.archive)}}}


def _check_state_dir(layout: Layout) -> None:
    """Refuse to start on a state dir another tool (or a disk error) mangled."""
    if layout.pki.exists():
        try:
            pki_mod.PKI(layout.pki).ensure()
        except ConfigError:
            raise
        except (ValueError, OSError) as exc:
            raise ConfigError(f"the state dir {layout.home} is corrupt: {layout.pki} ({exc})",
                              hint="run `kvtool cluster down --purge` to start afresh") from exc
    if layout.etcd_data.exists() and not (layout.etcd_data / "member").is_dir() and any(layout.etcd_data.iterdir()):
        raise ConfigError(f"the state dir {layout.home} is corrupt: {layout.etcd_data} holds no etcd member",
                          hint="run `kvtool cluster down --purge` to start afresh")


def _follow(layout: Layout, quiet: bool, timeout: float, shown: int) -> ClusterState:
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    state: ClusterState | None = None
    while time.monotonic() < deadline:
        state = read_state(layout.home)
        if state is not None:
            for line in state.progress[shown:]:
                _say(quiet, f"  {line}")
            shown = len(state.progress)
            if state.phase == "running":
                _say(quiet, f"Cluster ready at {state.server} in {time.monotonic() - started:.1f}s; "
                            f"kubeconfig: {layout.kubeconfig}")
                return state
            if state.phase in ("failed", "stopped"):
                # Let the supervisor finish stopping what it started before we return.
                wait_until = time.monotonic() + 30
                while lock_held(layout) and time.monotonic() < wait_until:
                    time.sleep(0.1)
                raise ClusterError(f"the embedded cluster failed to start: {state.error}",
                                   hint=f"logs are in {layout.logs}")
        if state is not None and state.supervisor_pid and not pid_alive(state.supervisor_pid):
            raise ClusterError("the cluster supervisor died during start-up; last lines of its log:\n"
                               + supervisor.log_tail(layout.log("supervisor")))
        if state is None and time.monotonic() - started > 15 and not lock_held(layout):
            raise ClusterError("the cluster supervisor did not start; last lines of its log:\n"
                               + supervisor.log_tail(layout.log("supervisor")))
        time.sleep(0.1)
    raise ClusterError(f"the embedded cluster did not become ready within {timeout:.0f}s",
                       hint=f"see the logs in {layout.logs}; `kvtool cluster down` stops what started")


def down(home: Path, purge: bool = False, quiet: bool = False, timeout: float = DOWN_TIMEOUT) -> int:
    """Stop every process of the cluster; return how many were found running."""
    layout = Layout(home)
    if not home.exists():
        _say(quiet, f"No embedded cluster in {home}.")
        return 0
    try:
        state = read_state(home)
    except ConfigError:
        if not purge:
            raise
        state = None
    stopped = 0
    if lock_held(layout) and state is not None and state.supervisor_pid:
        _say(quiet, f"Stopping the embedded cluster in {home} ...")
        try:
            os.kill(state.supervisor_pid, signal.SIGTERM)
            stopped += 1
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while lock_held(layout) and time.monotonic() < deadline:
            time.sleep(0.1)
    leftovers = leftover_processes(home)
    if leftovers:
        _say(quiet, f"Stopping {len(leftovers)} leftover process(es): {leftovers}")
        _kill_all(leftovers)
        stopped += len(leftovers)
    _remove_network(layout, quiet)
    if purge:
        shutil.rmtree(home, ignore_errors=True)
        _say(quiet, f"Removed {home}.")
    elif state is not None:
        _say(quiet, "Cluster stopped." if stopped else "The embedded cluster was not running.")
    return stopped


def _remove_network(layout: Layout, quiet: bool) -> None:
    """The nodes' processes, cgroups, mount and network namespaces and the cluster bridge."""
    from kvtool.local import startup
    from kvtool.podnet import netcmd

    try:
        removed = startup.teardown(layout)
    except (netcmd.NetError, ClusterError) as exc:
        _say(quiet, f"Could not remove all of the nodes' namespaces: {exc.message}")
        return
    if removed:
        _say(quiet, f"Removed the nodes: {', '.join(removed)}.")


@dataclass
class ComponentStatus:
    name: str
    state: str
    pid: int | None
    port: int | None
    restarts: int
    last_exit: str | None


@dataclass
class ClusterStatus:
    home: Path
    phase: str
    server: str
    api_ready: bool
    components: list[ComponentStatus]
    supervisor_alive: bool
    error: str | None = None
    node_faults: dict[str, str] = field(default_factory=dict)  # node -> off | partitioned (kvtool cluster node)


def status(home: Path) -> ClusterStatus:
    layout = Layout(home)
    state = read_state(home)
    if state is None:
        return ClusterStatus(home, "absent", "", False, [], False)
    alive = lock_held(layout)
    comps = []
    for c in state.components.values():
        st = c.state
        if st in ("running", "starting") and not pid_alive(c.pid):
            st = "dead"
        comps.append(ComponentStatus(c.name, st, c.pid if pid_alive(c.pid) else None, c.port, c.restarts,
                                     c.last_exit))
    phase = state.phase if alive else ("stopped" if state.phase == "stopped" else "stale")
    ready = False
    if state.server and layout.pki.exists():
        try:
            ready = components.apiserver_ready(state.server, pki_mod.PKI(layout.pki))
        except OSError:
            ready = False
    return ClusterStatus(home, phase, state.server, ready, comps, alive, state.error,
                         dict(state.node_faults) if alive else {})


@dataclass
class NodeStatus:
    name: str
    status: str  # Ready | NotReady | Unknown
    internal_ip: str
    kubelet: str
    runtime: str
    pods: int


def nodes(home: Path) -> list[NodeStatus]:
    """The cluster's Nodes as `kubectl get nodes -o wide` shows them, with their pod counts."""
    from kubernetes import client

    from kvtool.kube import clients

    core = client.CoreV1Api(clients.api_client(Layout(home).kubeconfig))
    pods: dict[str, int] = {}
    for pod in core.list_pod_for_all_namespaces().items:
        node_name = pod.spec.node_name if pod.spec else None
        phase = pod.status.phase if pod.status else None
        if node_name and phase in ("Pending", "Running"):
            pods[node_name] = pods.get(node_name, 0) + 1
    out = []
    for node in core.list_node().items:
        # The client's models leave every field optional; a registered Node has a name, status and node info.
        name = (node.metadata.name if node.metadata else None) or ""
        status = node.status or client.V1NodeStatus()
        ready = next((c.status for c in status.conditions or [] if c.type == "Ready"), "Unknown")
        ip = next((a.address for a in status.addresses or [] if a.type == "InternalIP"), "")
        info = status.node_info
        out.append(NodeStatus(name, {"True": "Ready", "False": "NotReady"}.get(ready, "Unknown"), ip,
                              info.kubelet_version if info else "", info.container_runtime_version if info else "",
                              pods.get(name, 0)))
    return sorted(out, key=lambda n: n.name)


def control(home: Path, cmd: str, component: str = "", **fields: str) -> dict[str, object]:
    """Ask the running supervisor to stop/start/restart one component, or switch a node (node-*)."""
    import socket

    layout = Layout(home)
    if not lock_held(layout):
        raise ClusterError(f"no embedded cluster is running in {home}", hint="run `kvtool cluster up`")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(layout.control_socket))
        s.sendall((json.dumps({"cmd": cmd, "component": component, **fields}) + "\n").encode())
        reply = json.loads(s.makefile().readline())
    if not reply.get("ok"):
        raise ClusterError(str(reply.get("error")))
    return reply
