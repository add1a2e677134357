"""The embedded cluster's supervisor: one detached process per $KVTOOL_HOME.

It starts the components in order (etcd, apiserver, bootstrap, scheduler and
controller-manager, then kvtool's runtime), restarts any that crash with
exponential backoff, records everything in cluster.json, and on SIGTERM
stops them all in reverse order. A flock on supervisor.lock guarantees one
supervisor per home and tells `up` whether an old one is really gone.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvtool.clusterstate import ClusterState, ComponentState, write_state
from kvtool.local import nodehost, nodenet
from kvtool.local.components import ComponentSpec
from kvtool.local.layout import Layout

log = logging.getLogger("kvtool.supervisor")

MARKER = "KVTOOL_CLUSTER_HOME"
PR_SET_PDEATHSIG = 1
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0
# A component that ran this long is considered healthy; its backoff resets.
STABLE_AFTER = 30.0
MAX_QUICK_CRASHES = 6


class StartupError(Exception):
    """A component failed during start-up; `up` shows the message to the user."""


def _die_with_parent() -> None:
    # If the supervisor is SIGKILLed, its children get SIGTERM instead of leaking.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


_ERROR_LINE = re.compile(r'(^panic:|^fatal error:|^Error:|^[EF]\d{4} |"level":"(fatal|panic|error)")')


def log_tail(path: Path, lines: int = 12) -> str:
    """The lines of a component's log a user needs: its error lines, then the last few.

    Go panics end in goroutine stacks that say nothing to a user, so error
    lines (klog E/F, zap fatal/panic, `panic:`) from the recent log come first.
    """
    try:
        with open(path, errors="replace") as f:
            recent = list(deque(f, maxlen=300))
    except OSError:
        return "    (no log)"
    errors = [ln for ln in recent if _ERROR_LINE.search(ln)][-5:]
    shown = [*errors, *(["    ...\n"] if errors else [])]
    stack = next((i for i, ln in enumerate(recent) if ln.startswith("goroutine ")), None)
    tail = recent[:stack][-lines:] if stack is not None else recent[-lines:]
    shown += [ln for ln in tail if ln not in errors]
    return "".join(f"    {_readable(ln)[:300]}\n" for ln in shown).rstrip()


def _readable(line: str) -> str:
    """Structured (zap/JSON) log lines shown as `level: msg (error: ...)`."""
    line = line.rstrip()
    if line.startswith("{"):
        try:
            entry = json.loads(line)
        except ValueError:
            return line
        text = f"{entry.get('level', 'log')}: {entry.get('msg', '')}"
        if entry.get("error"):
            text += f" (error: {entry['error']})"
        return text
    return line


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Child:
    """One supervised component process."""

    def __init__(self, spec: ComponentSpec, layout: Layout, state: ComponentState) -> None:
        self.spec = spec
        self.layout = layout
        self.state = state
        self.proc: subprocess.Popen[bytes] | None = None
        self.backoff = BACKOFF_START
        self.next_start = 0.0
        self.quick_crashes = 0
        self.wanted = True

    @property
    def log_path(self) -> Path:
        return self.layout.log(self.spec.name)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        out.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {self.spec.name}\n".encode())
        out.flush()
        env = dict(os.environ, **self.spec.env)
        env[MARKER] = str(self.layout.home)
        cgroup = self.spec.cgroup

        def preexec() -> None:
            _die_with_parent()
            if cgroup:
                nodehost.join_cgroup(cgroup)

        self.proc = subprocess.Popen(self.spec.argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.layout.home,
                                     preexec_fn=preexec)
        out.close()
        self.state.pid = self.proc.pid
        self.state.port = self.spec.port
        self.state.log = str(self.log_path)
        self.state.state = "starting"
        self.state.started_at = time.time()
        log.info("component=%s event=started pid=%d", self.spec.name, self.proc.pid)

    def poll(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        self.wanted = False
        if self.proc is None or self.proc.poll() is not None:
            self.state.state = "stopped"
            return
        self.proc.terminate()
        try:
            self.proc.wait(self.spec.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("component=%s event=kill reason=stop-timeout", self.spec.name)
            self.proc.kill()
            self.proc.wait()
        log.info("component=%s event=stopped", self.spec.name)
        self.state.state = "stopped"
        self.state.pid = None


Step = list[ComponentSpec] | Callable[[], None]


@dataclass(frozen=True)
class NodeHost:
    """What the supervisor needs to switch one embedded node off and on, or cut its network."""

    name: str
    cgroup_root: str
    netns: str
    gateway: str


class Supervisor:
    def __init__(self, layout: Layout, state: ClusterState, plan: list[tuple[str, Step]],
                 on_stopped: Callable[[], object] = lambda: None, nodes: list[NodeHost] | None = None) -> None:
        self.layout = layout
        self.nodes = {n.name: n for n in nodes or []}
        self.state = state
        self.plan = plan
        self.on_stopped = on_stopped
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.selector = selectors.DefaultSelector()
        self.sock: socket.socket | None = None

    # -- state -------------------------------------------------------------
    def save(self) -> None:
        write_state(self.layout.home, self.state)

    def progress(self, message: str) -> None:
        log.info("event=progress message=%r", message)
        self.state.progress.append(message)
        self.save()

    # -- start-up ----------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._open_control_socket()
        try:
            for label, step in self.plan:
                if self.stopping:
                    raise StartupError("interrupted")
                started = time.monotonic()
                if callable(step):
                    step()
                else:
                    self._start_and_wait(step)
                self.progress(f"{label} ready ({time.monotonic() - started:.1f}s)")
        except Exception as exc:
            log.exception("event=startup-failed error=%r", str(exc))
            self.state.error = str(exc)
            self.state.phase = "failed"
            self.save()
            self._stop_all()
            self.state.phase = "failed"
            self.save()
            return 1
        self.state.phase = "running"
        self.save()
        log.info("event=running")
        self._loop()
        return 0

    def _start_and_wait(self, specs: list[ComponentSpec]) -> None:
        for spec in specs:
            comp = self.state.components.setdefault(spec.name, ComponentState(name=spec.name))
            child = Child(spec, self.layout, comp)
            self.children[spec.name] = child
            child.start()
        self.save()
        pending = {s.name for s in specs}
        deadline = {s.name: time.monotonic() + s.ready_timeout for s in specs}
        while pending:
            if self.stopping:
                raise StartupError("interrupted")
            for name in sorted(pending):
                child = self.children[name]
                code = child.poll()
                if code is not None:
                    child.state.state = "failed"
                    child.state.last_exit = describe_exit(code)
                    raise StartupError(self._early_exit_message(child, code))
                if child.spec.ready():
                    child.state.state = "running"
                    pending.discard(name)
                    log.info("component=%s event=ready", name)
                elif time.monotonic() > deadline[name]:
                    raise StartupError(
                        f"{name} did not become ready within {child.spec.ready_timeout:.0f}s; "
                        f"last lines of {child.log_path}:\n{log_tail(child.log_path)}")
            self.save()
            if pending:
                self._serve_control(0.1)

    def _early_exit_message(self, child: Child, code: int) -> str:
        tail = log_tail(child.log_path)
        if "address already in use" in tail:
            return (f"{child.spec.name} could not listen: port {child.spec.port} is already in use "
                    f"by another process; last lines of {child.log_path}:\n{tail}")
        return (f"{child.spec.name} exited during start-up ({describe_exit(code)}); "
                f"last lines of {child.log_path}:\n{tail}")

    # -- steady state ------------------------------------------------------
    def _loop(self) -> None:
        while not self.stopping:
            changed = False
            now = time.monotonic()
            for child in self.children.values():
                code = child.poll()
                if code is not None and child.state.state in ("running", "starting"):
                    ran = time.time() - (child.state.started_at or time.time())
                    child.state.last_exit = describe_exit(code)
                    child.state.pid = None
                    if ran > STABLE_AFTER:
                        child.backoff, child.quick_crashes = BACKOFF_START, 0
                    child.quick_crashes += 1
                    if child.quick_crashes > MAX_QUICK_CRASHES:
                        child.state.state = "failed"
                        log.error("component=%s event=gave-up exits=%d", child.spec.name, child.quick_crashes)
                    else:
                        child.state.state = "backoff"
                        child.next_start = now + child.backoff
                        log.warning("component=%s event=exited how=%r restart_in=%.0fs",
                                    child.spec.name, child.state.last_exit, child.backoff)
                        child.backoff = min(child.backoff * 2, BACKOFF_MAX)
                    changed = True
                elif child.state.state == "backoff" and child.wanted and now >= child.next_start:
                    child.state.restarts += 1
                    child.start()
                    changed = True
                elif child.state.state == "starting" and child.spec.ready():
                    child.state.state = "running"
                    changed = True
            if changed:
                self.save()
            self._serve_control(0.2)
        self.state.phase = "stopping"
        self.save()
        self._stop_all()
        self.state.phase = "stopped"
        self.save()

    def _stop_all(self) -> None:
        for child in reversed(list(self.children.values())):
            child.stop()
        try:
            log.info("event=teardown removed=%r", self.on_stopped())
        except Exception as exc:  # `cluster down` tries again; say what is left
            log.exception("event=teardown-failed error=%r", str(exc))
        self.save()

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("event=signal signal=%s", signal.Signals(signum).name)
        self.stopping = True

    # -- control socket: stop/start/restart one component ------------------
    def _open_control_socket(self) -> None:
        path = self.layout.control_socket
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o600)
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.selector.register(self.sock, selectors.EVENT_READ)

    def _serve_control(self, timeout: float) -> None:
        for _key, _ in self.selector.select(timeout):
            assert self.sock is not None
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    request = json.loads(conn.makefile().readline())
                    reply = self._handle(request)
                except (ValueError, OSError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                with contextlib.suppress(OSError):
                    conn.sendall((json.dumps(reply) + "\n").encode())

    def _handle(self, request: dict[str, str]) -> dict[str, object]:
        cmd, name = request.get("cmd"), request.get("component", "")
        if cmd == "ping":
            return {"ok": True}
        if cmd and cmd.startswith("node-"):
            return self._node(cmd.removeprefix("node-"), request.get("node", ""))
        child = self.children.get(name)
        if child is None:
            return {"ok": False, "error": f"no component named {name!r}; have {sorted(self.children)}"}
        if cmd in ("stop", "restart"):
            child.stop()
        if cmd in ("start", "restart"):
            child.wanted = True
            child.quick_crashes = 0
            child.start()
        elif cmd != "stop":
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        self.save()
        log.info("component=%s event=control cmd=%s", name, cmd)
        return {"ok": True, "state": child.state.state, "pid": child.state.pid}


    # -- node power and network: the embedded cluster's fault switches ----------
    def _node_children(self, host: NodeHost) -> list[Child]:
        """The node's daemons in start order (containerd before its kubelet)."""
        return [c for c in self.children.values() if c.spec.cgroup == host.cgroup_root]

    def _node(self, action: str, node: str) -> dict[str, object]:
        host = self.nodes.get(node)
        if host is None:
            return {"ok": False, "error": f"no node named {node!r}; have {sorted(self.nodes)}"}
        faults = self.state.node_faults
        if action == "stop":
            # Power off: nothing of the node may outlive the switch, so no graceful stop of anything.
            children = self._node_children(host)
            for child in children:
                child.wanted = False
                child.state.state = "stopped"
            killed = nodehost.kill_cgroup(host.cgroup_root)
            for child in children:
                if child.proc is not None:
                    child.proc.wait()
                child.state.pid = None
                child.state.last_exit = "powered off"
            faults[node] = "off"
            log.warning("node=%s event=powered-off processes=%d", node, killed)
            result: dict[str, object] = {"ok": True, "node": node, "power": "off", "killed": killed}
        elif action == "start":
            if faults.get(node) == "off":
                for child in self._node_children(host):
                    child.wanted, child.quick_crashes = True, 0
                    child.start()
                    deadline = time.monotonic() + child.spec.ready_timeout
                    while not child.spec.ready() and child.poll() is None and time.monotonic() < deadline:
                        time.sleep(0.05)
                    child.state.state = "running" if child.spec.ready() else "starting"
                faults.pop(node, None)
                log.info("node=%s event=powered-on", node)
            result = {"ok": True, "node": node, "power": "on"}
        elif action == "partition":
            nodenet.partition(host.netns, host.gateway)
            if faults.get(node) != "off":
                faults[node] = "partitioned"
            log.warning("node=%s event=partitioned from=%s", node, host.gateway)
            result = {"ok": True, "node": node, "network": "partitioned"}
        elif action == "heal":
            nodenet.heal(host.netns)
            if faults.get(node) == "partitioned":
                faults.pop(node)
            log.info("node=%s event=healed", node)
            result = {"ok": True, "node": node, "network": "connected"}
        elif action == "status":
            return {"ok": True, "node": node, "power": "off" if faults.get(node) == "off" else "on",
                    "network": "partitioned" if nodenet.partitioned(host.netns) else "connected"}
        else:
            return {"ok": False, "error": f"unknown node action {action!r}"}
        self.save()
        return result


def acquire_lock(layout: Layout) -> int | None:
    """Hold the home's lock for the process lifetime; None if another supervisor holds it."""
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def main(argv: list[str] | None = None) -> int:
    from kvtool.local import startup  # the start-up plan needs the kube client; import late

    parser = argparse.ArgumentParser(prog="kvtool-supervisor")
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--config", required=True, type=Path, help="JSON written by `kvtool cluster up`")
    args = parser.parse_args(argv)
    layout = Layout(args.home)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    fd = acquire_lock(layout)
    if fd is None:
        log.error("event=refused reason=another supervisor holds %s", layout.lock)
        return 1
    config = json.loads(args.config.read_text())
    state = ClusterState(home=str(layout.home), supervisor_pid=os.getpid(), nodes=config["nodes"])
    try:
        steps = startup.startup_plan(layout, state, config)
    except Exception as exc:
        state.phase, state.error = "failed", str(exc)
        write_state(layout.home, state)
        return 1
    write_state(layout.home, state)
    return Supervisor(layout, state, steps, on_stopped=lambda: startup.teardown(layout),
                      nodes=startup.node_hosts(layout, config)).run()


if __name__ == "__main__":
    sys.exit(main())
