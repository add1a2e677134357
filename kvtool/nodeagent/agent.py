"""The node agent's main loop: wire the watch, the worker and the heartbeats; stop cleanly.

Threads: the pod watch (daemon: it may sit in a blocking read), the heartbeats, and the worker
(this thread) that syncs one pod at a time and, every quarter second, looks for containers that
ended. On SIGTERM/SIGINT the agent stops watching and heartbeating and exits, leaving the
containers running, as kubelet does; the next agent for the node adopts them (see pods.py).
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from kvtool.errors import ConfigError
from kvtool.kube.resources import KubeError, Resources
from kvtool.nodeagent import node as node_mod
from kvtool.nodeagent import volumes
from kvtool.nodeagent.network import PodNetwork
from kvtool.nodeagent.pods import PodWorker, Settings
from kvtool.nodeagent.runner import Runner
from kvtool.nodeagent.watch import PodWatch, WorkQueue

log = logging.getLogger("kvtool.nodeagent")

POLL = 0.25
RESYNC = 60.0
# Passed from the agent's own environment to containers: `kvtool cluster down` finds leftovers by the marker.
INHERITED_ENV = ("PATH", "HOME", "KVTOOL_CLUSTER_HOME")


@dataclass(frozen=True)
class AgentConfig:
    node: str
    root: Path
    run_dir: Path
    image: str
    hostpath_maps: tuple[tuple[str, Path], ...]
    cpu: int | None
    memory: str | None
    pods: int
    labels: dict[str, str]
    pod_network: str | None = None  # the embedded cluster's id: pods get namespaces on its pod network


def whoami(api: client.ApiClient) -> str:
    """The user the API sees for these credentials (a SelfSubjectReview)."""
    res = Resources(api)
    doc = res.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                      body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
                      what="ask the API who these credentials are")
    return str(((doc.get("status") or {}).get("userInfo") or {}).get("username", ""))


def server_version(api: client.ApiClient) -> str:
    try:
        return str(Resources(api).request("GET", "/version", what="get /version").get("gitVersion", "v0.0.0"))
    except KubeError:
        return "v0.0.0"


def lock(root: Path, node: str) -> int:
    """One agent per node root: a second one would start every container twice."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "node-agent.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = os.pread(fd, 32, 0).decode().strip() or "?"
        os.close(fd)
        raise ConfigError(f"another node agent (pid {holder}) already runs node {node} from {root}",
                          hint="stop it first; containers survive an agent restart") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Agent:
    def __init__(self, config: AgentConfig, api: client.ApiClient) -> None:
        self.config = config
        self.api = api
        self.res = Resources(api)
        self.stop = threading.Event()
        self.queue = WorkQueue()
        maps = dict(config.hostpath_maps)
        maps.setdefault("/var/run/kvtool", config.run_dir)
        network = (PodNetwork(config.pod_network, config.node, config.root / "network", self.res)
                   if config.pod_network else None)
        settings = Settings(node=config.node, image=config.image, root=config.root,
                            hostpaths=volumes.HostPaths(config.root, tuple(maps.items())),
                            base_env={k: os.environ[k] for k in INHERITED_ENV if k in os.environ}, network=network)
        self.worker = PodWorker(settings, self.res, Runner())
        self.watch = PodWatch(api, config.node, self.queue.add, self._on_list, self.stop)

    def _on_list(self, uids: set[str]) -> None:
        """After a full list: local pods the API no longer has are torn down (deleted while we were away)."""
        for uid in self.worker.local_uids() - uids:
            self.queue.add(uid)

    def run(self) -> int:
        c = self.config
        user = whoami(self.api)
        if user != f"system:node:{c.node}":
            raise ConfigError(f"the kubeconfig authenticates as {user!r}, not system:node:{c.node}",
                              hint="give the node agent the node's own kubeconfig (a client certificate for "
                                   f"CN=system:node:{c.node}, O=system:nodes)")
        fd = lock(c.root, c.node)
        c.run_dir.mkdir(parents=True, exist_ok=True)
        self.worker.collect_network_garbage()  # before any pod starts: what no known pod owns goes
        spec = node_mod.default_spec(c.node, c.root, c.cpu, c.memory, c.pods, c.labels,
                                     f"{server_version(self.api)}-kvtool")
        liveness = node_mod.NodeLiveness(self.res, spec, self.stop)
        liveness.register()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self._on_signal(signum))
        threading.Thread(target=self.watch.run, name="pod-watch", daemon=True).start()
        beats = threading.Thread(target=liveness.run, name="heartbeat", daemon=True)
        beats.start()
        log.info("event=ready node=%s root=%s image=%s pid=%d", c.node, c.root, c.image, os.getpid())
        try:
            self._work()
        finally:
            self.stop.set()
            beats.join(timeout=5)
            os.close(fd)
        log.info("event=stopped node=%s containers=left-running", c.node)
        return 0

    def _on_signal(self, signum: int) -> None:
        log.info("event=signal node=%s signal=%s", self.config.node, signal.Signals(signum).name)
        self.stop.set()
        self.queue.add("")  # wake the worker

    def _work(self) -> None:
        next_resync, next_poll = time.monotonic() + RESYNC, 0.0
        while not self.stop.is_set():
            uid = self.queue.get(POLL)
            if self.stop.is_set():
                return
            if uid:
                self._sync(uid)
            if time.monotonic() >= next_poll:
                for ended in self.worker.running_uids():
                    self.queue.add(ended)
                next_poll = time.monotonic() + POLL
            if time.monotonic() >= next_resync and self.watch.synced.is_set():
                for known in self.watch.uids() | self.worker.local_uids():
                    self.queue.add(known)
                next_resync = time.monotonic() + RESYNC

    def _sync(self, uid: str) -> None:
        if not self.watch.synced.is_set():
            return  # _on_list queues everything once the first list is in
        try:
            again = self.worker.sync(uid, self.watch.get(uid), self.watch.last_known(uid))
        except Exception as exc:  # the loop's edge: log, retry this pod later
            log.warning("event=sync-failed node=%s uid=%s error=%r", self.config.node, uid, str(exc),
                        exc_info=not isinstance(exc, KubeError))
            again = 5.0
        if again is not None:
            self.queue.add(uid, again)
        elif self.watch.get(uid) is None and uid not in self.worker.local:
            self.watch.forget(uid)
