"""What the benchmarks share: reaching the embedded cluster, and running a command against a clock."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from kvtool import paths
from kvtool.images import store, tiny_linux
from kvtool.kube import clients
from kvtool.kube.resources import Resources
from kvtool.local import cluster
from kvtool.local.layout import Layout


def kubeconfig(given: str | None = None) -> str:
    """The kubeconfig to measure against: the one given, else the embedded cluster's (started if needed)."""
    if given:
        return given
    home = paths.kvtool_home()
    cluster.up(home, quiet=True)
    return str(home / "kubeconfig")


def runtime() -> tuple[Layout, Resources]:
    """The embedded cluster with its runtime, and the tiny-linux image the benchmarks boot."""
    home = paths.kvtool_home()
    cluster.up(home, quiet=True)
    tiny_linux.build(store.ImageStore())
    layout = Layout(home)
    return layout, Resources(clients.api_client(layout.kubeconfig))


def wait(predicate: Any, timeout: float, what: str, period: float = 0.1) -> Any:
    """The predicate's first true value, polled every `period`; stops the benchmark after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(period)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def run_timed(cmd: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)) -> float:
    """Seconds the command took; stops the benchmark with its stderr if it failed."""
    start = time.monotonic()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if result.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd[:4])}... exited {result.returncode}:\n{result.stderr[-2000:]}")
    return elapsed


def wait_settled(kubeconfig: str, stack: str, timeout: float = 600) -> float:
    """Seconds until the controller has caught up with the stack's VMs (each has a printableStatus).

    A step timed right after another one's creates would share the CPU with the controller's backlog
    of status writes for them; each step starts from a quiet cluster instead.
    """
    from kvtool.api.types import STACK_LABEL, VIRTUAL_MACHINE

    res = Resources(clients.api_client(kubeconfig))
    start = time.monotonic()
    while True:
        vms, _ = res.list(VIRTUAL_MACHINE, label_selector=f"{STACK_LABEL}={stack}")
        if all((vm.get("status") or {}).get("printableStatus") for vm in vms):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise SystemExit(f"the controller did not catch up with stack {stack} within {timeout:.0f}s")
        time.sleep(0.5)
