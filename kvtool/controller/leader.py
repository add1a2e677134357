"""Leader election for controller replicas, on a coordination.k8s.io Lease.

Built on the `kubernetes` client's own LeaseLock/LeaderElection. Only the
leader runs the reconcile loops; a replica that loses the lease exits at
once (as kube-controller-manager does) so two never act together, and its
Deployment or supervisor starts it again as a follower.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from kubernetes import client
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from kvtool.controller import metrics

log = logging.getLogger("kvtool.controller.leader")
# The library logs every lease renewal (and every follower retry) at INFO: a line a second, forever.
# Leading and losing are logged here as events; the library's warnings and errors still come through.
logging.getLogger("leaderelection").setLevel(logging.WARNING)

LOST_EXIT_CODE = 3


@dataclass(frozen=True)
class ElectionSettings:
    namespace: str
    name: str = "kvtool-controller"
    lease_duration: int = 15
    renew_deadline: int = 10
    retry_period: int = 2


def identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}"


def elect(api: client.ApiClient, settings: ElectionSettings) -> threading.Event:
    """Start campaigning in a thread; the returned event is set once this replica leads."""
    # The library's LeaseLock uses the default client: point it at ours.
    client.Configuration.set_default(api.configuration)
    leading = threading.Event()
    me = identity()

    def started() -> None:
        log.info("event=leading identity=%s lease=%s/%s", me, settings.namespace, settings.name)
        metrics.LEADER.set(1)
        leading.set()

    def stopped() -> None:
        log.error("event=leadership-lost identity=%s; exiting so that two controllers never act at once", me)
        os._exit(LOST_EXIT_CODE)

    config = electionconfig.Config(LeaseLock(settings.name, settings.namespace, me), settings.lease_duration,
                                   settings.renew_deadline, settings.retry_period, started, stopped)
    def campaign() -> None:
        """The library's loop raises when the API is unreachable (its LeaseLock lets urllib3 errors through):
        a follower campaigns again after a pause; a leader that cannot tell whether it still leads exits."""
        while True:
            try:
                leaderelection.LeaderElection(config).run()
            except Exception as exc:
                if leading.is_set():
                    log.error("event=leadership-unknown identity=%s error=%r; exiting", me, str(exc))
                    os._exit(LOST_EXIT_CODE)
                log.warning("event=campaign-retry identity=%s error=%r", me, str(exc))
            time.sleep(settings.retry_period)

    threading.Thread(target=campaign, daemon=True, name="leader-election").start()
    log.info("event=campaigning identity=%s lease=%s/%s", me, settings.namespace, settings.name)
    return leading
