"""Decide what to do for one pod bound to this node, and do it: admit, start, report, stop, clean up.

One `sync(uid)` per pod, KubeVirt-style: read the latest object from the watch cache and the
local state from <root>/pods/<uid>/, act, write status, and return when to look again (or None).
The worker calls it from a single thread, so no pod is ever handled twice at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvtool.kube.resources import KubeError, Resources
from kvtool.nodeagent import admission, status, volumes
from kvtool.nodeagent.network import Attachment, PodNetwork
from kvtool.nodeagent.runner import Exited, Record, Runner, describe
from kvtool.podnet import netcmd

log = logging.getLogger("kvtool.nodeagent")

# Kubelet's floor for a kill's grace period, also when a pod is force-deleted (grace 0).
MIN_GRACE = 2
DEFAULT_GRACE = 30
PENDING_RETRY = 2.0
# The launcher's variable naming the pod interface. A node without a pod network runs pods in the host's
# namespace (as hostNetwork pods), so it withholds it: a launcher must never rewire the host's interfaces.
POD_INTERFACE_ENV = "KVTOOL_POD_INTERFACE"


@dataclass
class Local:
    """What the agent knows of a pod it accepted; mirrored in <pod dir>/pod.json."""

    uid: str
    namespace: str
    name: str
    dir: Path
    accepted_at: str
    grace: int = DEFAULT_GRACE
    record: Record | None = None
    kill_at: float | None = None  # monotonic time of the SIGKILL once SIGTERM was sent
    ended: Exited | None = None
    reported: str = ""  # the last status document sent, to send each change once
    attachment: Attachment | None = None  # its place on the pod network, once it has one
    detached: bool = False  # its network was removed (the container ended)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Settings:
    node: str
    image: str
    root: Path
    hostpaths: volumes.HostPaths
    base_env: dict[str, str]
    network: PodNetwork | None = None  # None: pods share the host's network (pod IP 127.0.0.1)


def _grace(pod: dict[str, Any] | None, default: int) -> int:
    if pod is None:
        return default
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    value = meta.get("deletionGracePeriodSeconds")
    if value is None:
        value = spec.get("terminationGracePeriodSeconds", default)
    return max(int(value), MIN_GRACE)


class PodWorker:
    """Runs the pods of one node. `cache(uid)` gives the latest object, or None once it is gone."""

    def __init__(self, settings: Settings, res: Resources, runner: Runner) -> None:
        self.s = settings
        self.res = res
        self.runner = runner
        self.local: dict[str, Local] = {}
        self.pods_dir = settings.root / "pods"
        self.pods_dir.mkdir(parents=True, exist_ok=True)

    # -- local state --------------------------------------------------------------------------

    def local_uids(self) -> set[str]:
        return set(self.local) | {p.name for p in self.pods_dir.iterdir() if p.is_dir()}

    def _load(self, uid: str) -> Local | None:
        if uid in self.local:
            return self.local[uid]
        pod_dir = self.pods_dir / uid
        try:
            doc = json.loads((pod_dir / "pod.json").read_text())
        except (OSError, ValueError):
            if pod_dir.exists():  # a dir without its description: half-created, nothing of it ran
                shutil.rmtree(pod_dir, ignore_errors=True)
            return None
        local = Local(uid, doc["namespace"], doc["name"], pod_dir, doc["acceptedAt"], int(doc.get("grace", 30)))
        local.record = self.runner.load(pod_dir, "compute")
        local.attachment = Attachment.load(pod_dir)
        if local.record is not None:
            log.info("event=adopted node=%s pod=%s uid=%s pid=%d running=%s", self.s.node, local.ref, uid,
                     local.record.pid, self.runner.running(local.record))
        self.local[uid] = local
        return local

    def collect_network_garbage(self) -> None:
        """At start-up: remove pod networks of pods this node no longer has (their dirs are gone)."""
        if self.s.network is None:
            return
        live = {uid for uid in self.local_uids() if (self.pods_dir / uid / "pod.json").exists()}
        try:
            self.s.network.collect_garbage(live)
        except netcmd.NetError as exc:
            log.warning("event=network-gc-failed node=%s error=%r", self.s.node, exc.message)

    def pod_ip(self, local: Local) -> str:
        return str(local.attachment.ip) if local.attachment is not None else status.POD_IP

    def running_uids(self) -> list[str]:
        """Pods whose container the agent believes runs but whose process has ended: to sync now."""
        return [uid for uid, lo in self.local.items()
                if lo.record is not None and lo.ended is None and not self.runner.running(lo.record)]

    # -- the sync ----------------------------------------------------------------------------

    def sync(self, uid: str, pod: dict[str, Any] | None, last: dict[str, Any] | None) -> float | None:
        """Move one pod a step on; seconds until it wants another look, or None."""
        local = self._load(uid)
        if pod is None:
            return self._teardown(local, None, _grace(last, local.grace if local else DEFAULT_GRACE)) if local else None
        if (pod["metadata"]).get("deletionTimestamp"):
            return self._teardown(local, pod, _grace(pod, DEFAULT_GRACE))
        phase = (pod.get("status") or {}).get("phase")
        if local is None:
            if phase in ("Succeeded", "Failed"):
                return None
            return self._admit(pod)
        container = pod["spec"]["containers"][0]
        if local.record is None:
            return self._start(pod, local)
        exited = local.ended or self.runner.exited(local.dir, local.record)
        if exited is None:
            self._report(pod, local, status.running(pod, container, local.accepted_at, local.record,
                                                    self.pod_ip(local)))
            return None
        self._finish(pod, local, exited)
        return None

    def _admit(self, pod: dict[str, Any]) -> float | None:
        meta = pod["metadata"]
        ref = f"{meta['namespace']}/{meta['name']}"
        message = admission.refusal(pod, self.s.image, self.s.node)
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        if message is None and any(c.get("containerID") for c in statuses):
            # The API says a container ran here, yet nothing of it is on disk (its pod dir was removed):
            # with restartPolicy Never it must not start again.
            container = pod["spec"]["containers"][0]
            lost = Exited(137, None, "ContainerStatusUnknown", status.now(),
                          "the node agent has no record of this container (its pod directory is gone)")
            status.patch(self.res, pod, status.terminated(pod, container, status.now(), None, lost,
                                                          pod_ip=(pod.get("status") or {}).get("podIP")))
            log.warning("event=lost node=%s pod=%s uid=%s", self.s.node, ref, meta["uid"])
            return None
        if message is not None:
            log.warning("event=refused node=%s pod=%s uid=%s reason=%s message=%r", self.s.node, ref, meta["uid"],
                        admission.REASON, message)
            status.patch(self.res, pod, status.refused(admission.REASON, message))
            status.event(self.res, pod, self.s.node, admission.REASON, message, warning=True)
            return None
        pod_dir = self.pods_dir / meta["uid"]
        pod_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        local = Local(meta["uid"], meta["namespace"], meta["name"], pod_dir, status.now(),
                      _grace({"spec": pod.get("spec")}, DEFAULT_GRACE))
        doc = {"namespace": local.namespace, "name": local.name, "uid": local.uid, "acceptedAt": local.accepted_at,
               "grace": local.grace}
        (pod_dir / "pod.json").write_text(json.dumps(doc))
        self.local[local.uid] = local
        log.info("event=accepted node=%s pod=%s uid=%s", self.s.node, ref, local.uid)
        return self._start(pod, local)

    def _start(self, pod: dict[str, Any], local: Local) -> float | None:
        container = pod["spec"]["containers"][0]
        try:
            backing = volumes.prepare(pod, local.dir, self.s.hostpaths, self.res)
            mounts = volumes.mounts(container, backing)
            view = volumes.build_view(local.dir, mounts)
            if self.s.network is not None:
                local.attachment = self.s.network.attach(local.uid, local.dir)
            env = volumes.environment(pod, container, self.res, mounts, view, self.s.base_env,
                                      status.HOST_IP, self.pod_ip(local))
            if self.s.network is None:
                env.pop(POD_INTERFACE_ENV, None)
        except (volumes.Pending, netcmd.NetError) as exc:
            # Like kubelet's FailedCreatePodSandBox, a network that could not be set up is retried.
            message = exc.message if isinstance(exc, netcmd.NetError) else str(exc)
            log.info("event=waiting node=%s pod=%s uid=%s message=%r", self.s.node, local.ref, local.uid, message)
            self._report(pod, local, status.pending(pod, container, local.accepted_at, message))
            return PENDING_RETRY
        except volumes.Unsupported as exc:
            message = f"{exc}, but {admission.what_runs_here(self.s.node, self.s.image)}"
            log.warning("event=refused node=%s pod=%s uid=%s message=%r", self.s.node, local.ref, local.uid, message)
            self._forget(local)
            status.patch(self.res, pod, status.refused(admission.REASON, message))
            return None
        argv = admission.argv(container, env)
        cwd = volumes.translate(container.get("workingDir") or "", mounts, view) or str(local.dir)
        result = self.runner.start(local.dir, "compute", argv, env, Path(cwd) if os.path.isdir(cwd) else local.dir,
                                   netns=local.attachment.netns_path if local.attachment else None)
        if isinstance(result, Exited):
            log.warning("event=start-failed node=%s pod=%s uid=%s message=%r", self.s.node, local.ref, local.uid,
                        result.message)
            self._finish(pod, local, result, started_at=status.now())
            return None
        local.record = result
        log.info("event=started node=%s pod=%s uid=%s pid=%d ip=%s argv=%r", self.s.node, local.ref, local.uid,
                 result.pid, self.pod_ip(local), argv[3:])
        self._report(pod, local, status.running(pod, container, local.accepted_at, result, self.pod_ip(local)))
        status.event(self.res, pod, self.s.node, "Started", f"Started container {container['name']} (pid {result.pid})")
        return None

    def _finish(self, pod: dict[str, Any], local: Local, exited: Exited, started_at: str | None = None) -> None:
        """The container ended: report it; its volumes go (kubelet's cleanup), its log stays until deletion."""
        if local.ended is None:
            local.ended = exited
            log.info("event=exited node=%s pod=%s uid=%s pid=%s status=%r", self.s.node, local.ref, local.uid,
                     local.record.pid if local.record else "-", describe(exited))
        container = pod["spec"]["containers"][0]
        self._report(pod, local, status.terminated(pod, container, local.accepted_at, local.record, exited,
                                                   started_at, self.pod_ip(local)))
        for sub in ("volumes", "root"):
            shutil.rmtree(local.dir / sub, ignore_errors=True)
        self._detach(local)  # kubelet removes a finished pod's sandbox too; its status keeps the IP

    def _teardown(self, local: Local | None, pod: dict[str, Any] | None, grace: int) -> float | None:
        """Stop the container (SIGTERM, SIGKILL after grace), remove the pod dir, then the pod object."""
        if local is not None and local.record is not None and self.runner.running(local.record):
            now = time.monotonic()
            if local.kill_at is None:
                local.kill_at = now + grace
                log.info("event=stopping node=%s pod=%s uid=%s pid=%d signal=SIGTERM grace=%ds", self.s.node,
                         local.ref, local.uid, local.record.pid, grace)
                self.runner.signal(local.dir, local.record, signal.SIGTERM)
                if pod is not None:
                    status.event(self.res, pod, self.s.node, "Killing",
                                 f"Stopping container compute (grace period {grace}s)")
            elif now >= local.kill_at and not local.record.killed:
                log.warning("event=stopping node=%s pod=%s uid=%s pid=%d signal=SIGKILL", self.s.node, local.ref,
                            local.uid, local.record.pid)
                self.runner.signal(local.dir, local.record, signal.SIGKILL)
            return max(0.05, min(local.kill_at - now, 1.0)) if not local.record.killed else 0.1
        if local is not None:
            if pod is not None and local.record is not None:
                exited = local.ended or self.runner.exited(local.dir, local.record)
                if exited is not None:
                    self._finish(pod, local, exited)
            self._forget(local)
            log.info("event=cleaned node=%s pod=%s uid=%s", self.s.node, local.ref, local.uid)
        if pod is not None:
            meta = pod["metadata"]
            try:
                if self.res.delete(status.POD, meta["namespace"], meta["name"], uid=meta["uid"], grace_period=0):
                    log.info("event=deleted node=%s pod=%s/%s uid=%s", self.s.node, meta["namespace"], meta["name"],
                             meta["uid"])
            except KubeError as exc:
                if exc.status != 409:  # 409: a namesake with another uid; ours is gone already
                    raise
        return None

    def _forget(self, local: Local) -> None:
        if local.record is not None:
            self.runner.forget(local.record)
        self._detach(local)
        shutil.rmtree(local.dir, ignore_errors=True)
        self.local.pop(local.uid, None)

    def _detach(self, local: Local) -> None:
        """Remove the pod's network; a failure is retried by the next sync (the pod dir stays)."""
        if self.s.network is None or local.detached:
            return
        try:
            self.s.network.detach(local.uid)
            local.detached = True
        except netcmd.NetError as exc:
            log.warning("event=network-detach-failed node=%s pod=%s uid=%s error=%r", self.s.node, local.ref,
                        local.uid, exc.message)
            raise

    def _report(self, pod: dict[str, Any], local: Local, doc: dict[str, Any]) -> None:
        text = json.dumps(doc, sort_keys=True)
        if text == local.reported:
            return
        status.patch(self.res, pod, doc)
        local.reported = text
