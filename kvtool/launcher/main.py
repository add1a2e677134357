"""The launcher process: one per VM pod. Starts libvirtd and the command socket, waits, cleans up, exits.

Order matters for start-up time: libvirtd is started first (it takes ~0.1 s to
listen), the socket right after, and the heavy imports and QEMU's capability
probe happen in the background while the handler has not synced yet.
Exit codes (docs/runtime.md): 0 the guest shut down or a stop was asked for,
1 the domain failed to start, crashed or was destroyed, 2 bad arguments/environment.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from kvtool.launcher import config as config_mod
from kvtool.launcher.libvirtd import Libvirtd

if TYPE_CHECKING:
    from kvtool.launcher.runner import Runner
    from kvtool.launcher.server import Server

log = logging.getLogger("kvtool.launcher")

PR_SET_CHILD_SUBREAPER = 36
POLL_INTERVAL = 0.1  # how soon a SIGTERM or a dead libvirtd is noticed


def run(namespace: str, name: str, uid: str) -> int:
    """The `kvtool launcher` command. Raises ConfigError (exit 2) before anything is started."""
    began = time.monotonic()
    config = config_mod.load(namespace, name, uid)
    _setup_logging(config)
    os.umask(0o077)
    _become_subreaper()
    for directory in (config.sockets_dir, config.state_dir):
        directory.mkdir(parents=True, exist_ok=True)
    log.info("event=starting pid=%d pod=%s/%s pod_uid=%s node=%s grace_seconds=%d", os.getpid(),
             config.pod_namespace or "-", config.pod_name or "-", config.pod_uid, config.node_name or "-",
             config.grace_period)

    stop_signals: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_signals.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    daemon = Libvirtd(config)
    daemon.start()  # first: its ~0.1 s until it listens overlaps the imports below and the handler's ping
    try:
        # Imported only now (~80 ms, libvirt's bindings among them), while libvirtd starts up.
        from kvtool.launcher.runner import Runner
        from kvtool.launcher.server import Server

        runner = Runner(config, daemon)
        server = Server(config.socket_path, runner, config.grace_period)
    except BaseException:
        daemon.stop()
        raise
    code = 1
    try:
        server.start()
        log.info("event=ready listen_seconds=%.3f", time.monotonic() - began)
        runner.start_warm_up()
        code = _wait(runner, daemon, config, stop_signals)
    finally:
        _teardown(runner, server, daemon)
    log.info("event=exit code=%d timings=%s", code, _timings(runner, began))
    return code


def _wait(runner: Runner, daemon: Libvirtd, config: config_mod.Config, stop_signals: list[int]) -> int:
    handled = 0
    while not runner.finished.wait(POLL_INTERVAL):
        if len(stop_signals) > handled:
            handled = len(stop_signals)
            runner.request_stop(config.grace_period, f"signal {signal.Signals(stop_signals[-1]).name}")
        if not daemon.running():
            runner.daemon_died()
    return runner.exit_code


def _teardown(runner: Runner, server: Server, daemon: Libvirtd) -> None:
    """Leave nothing behind: domain, daemon, sockets, and any process that still descends from us."""
    for step in (server.stop_accepting, runner.close, server.close_connections, daemon.save_cache, daemon.stop):
        try:
            step()
        except Exception:
            log.exception("event=teardown-step-failed step=%s", getattr(step, "__qualname__", step))
    leftovers = kill_descendants()
    if leftovers:
        log.warning("event=killed-leftovers pids=%s", ",".join(map(str, leftovers)))


def _become_subreaper() -> None:
    """Orphans among our descendants (a daemonized QEMU, in the worst case) re-parent to us, not to init."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)  # find_library("c") would run ldconfig
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("event=subreaper-failed errno=%d", ctypes.get_errno())


def descendants(pid: int | None = None) -> list[int]:
    """Every live descendant of pid (default: this process), parents before children."""
    found: list[int] = []
    todo = [os.getpid() if pid is None else pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                for child in task.read_text().split():
                    found.append(int(child))
                    todo.append(int(child))
    return found


def kill_descendants(timeout: float = 5.0) -> list[int]:
    """SIGKILL whatever still descends from us and reap it; the pids that had to be killed."""
    killed = descendants()
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.01)
    return killed


def _setup_logging(config: config_mod.Config) -> None:
    """key=value lines on stderr, each naming the VMI, so `grep vmi=ns/name` finds a launcher's story."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        f"%(asctime)s level=%(levelname)s component=launcher vmi={config.namespace}/{config.name} "
        "logger=%(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _timings(runner: Runner, began: float) -> str:
    parts = [f"{key}:{value - began if key in ('guest_ready', 'guest_ip') else value:.3f}"
             for key, value in runner.timings.items()]
    return ",".join(parts) or "-"
