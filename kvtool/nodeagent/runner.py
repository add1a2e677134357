"""Run, watch and stop container processes, and adopt them again after an agent restart.

Each container runs under a shim (kvtool.nodeagent.shim) in its own session, so the agent can
exit and come back without killing or orphaning it. What identifies a process across restarts
is its pid plus its start time from /proc/<pid>/stat (pids are reused; the pair is not); both,
for the shim and the container, are kept in <pod dir>/containers/<name>.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kvtool.nodeagent import shim

START_TIMEOUT = 10.0


@dataclass
class Record:
    """A started container, as stored on disk."""

    name: str
    shim_pid: int
    shim_start: int | None
    pid: int
    start: int | None
    started_at: str
    restart_count: int = 0
    killed: bool = False  # the agent sent SIGKILL: a missing exit file means "killed", not "unknown"


@dataclass(frozen=True)
class Exited:
    """How a container ended: what the pod's terminated state reports."""

    exit_code: int
    signal: int | None
    reason: str
    finished_at: str
    message: str = ""


def alive(pid: int, start: int | None) -> bool:
    """The process pid, started at `start`, still runs (a zombie has finished)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != b"Z" and (start is None or int(fields[19]) == start)


def containers_dir(pod_dir: Path) -> Path:
    return pod_dir / "containers"


class Runner:
    """Starts containers and answers whether they still run; keeps the shims it started reaped."""

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, pod_dir: Path, name: str, argv: list[str], env: dict[str, str], cwd: Path,
              restart_count: int = 0, netns: Path | None = None) -> Record | Exited:
        """Start argv under a shim (in the network namespace at netns, if given); the Record once it
        runs, or Exited if it could not start."""
        cdir = containers_dir(pod_dir)
        cdir.mkdir(parents=True, exist_ok=True)
        for suffix in ("started", "exit"):
            (cdir / f"{name}.{suffix}.json").unlink(missing_ok=True)
        with open(pod_dir / f"{name}.log", "ab") as out:
            join = ["--netns", str(netns)] if netns is not None else []
            proc = subprocess.Popen([sys.executable, "-m", "kvtool.nodeagent.shim", str(cdir), name, *join, "--",
                                     *argv],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=cwd, start_new_session=True)
        self._children[proc.pid] = proc
        shim_start = shim.proc_starttime(proc.pid)
        deadline = time.monotonic() + START_TIMEOUT
        started = cdir / f"{name}.started.json"
        while not started.exists():
            if (cdir / f"{name}.exit.json").exists() or proc.poll() is not None or time.monotonic() > deadline:
                self.reap()
                return self._exit_status(cdir, name) or Exited(
                    128, None, "StartError", shim.rfc3339(), f"the container's shim ended with {proc.poll()}")
            time.sleep(0.002)
        info = json.loads(started.read_text())
        record = Record(name, proc.pid, shim_start, int(info["pid"]), info.get("starttime"), info["startedAt"],
                        restart_count)
        self.save(pod_dir, record)
        return record

    def save(self, pod_dir: Path, record: Record) -> None:
        shim.write_json(str(containers_dir(pod_dir) / f"{record.name}.json"), asdict(record))

    def load(self, pod_dir: Path, name: str) -> Record | None:
        try:
            return Record(**json.loads((containers_dir(pod_dir) / f"{name}.json").read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def running(self, record: Record) -> bool:
        self.reap()
        return alive(record.pid, record.start) or alive(record.shim_pid, record.shim_start)

    def exited(self, pod_dir: Path, record: Record) -> Exited | None:
        """None while the container runs; else how it ended.

        Liveness is checked before the exit file: the shim writes the file before it exits, so a
        dead shim without one really was killed (or its status is lost), never "about to write".
        """
        if self.running(record):
            return None
        status = self._exit_status(containers_dir(pod_dir), record.name)
        if status is not None:
            return status
        if record.killed:
            status = Exited(128 + signal.SIGKILL, int(signal.SIGKILL), "Error", shim.rfc3339(),
                            "killed with SIGKILL when the grace period ran out")
        else:
            status = Exited(128 + signal.SIGKILL, None, "ContainerStatusUnknown", shim.rfc3339(),
                            "the container's process and its shim ended without recording an exit status")
        # Recorded, so the finish time stays the same for every later look (and after a restart).
        shim.write_json(str(containers_dir(pod_dir) / f"{record.name}.exit.json"),
                        {"exitCode": status.exit_code, "signal": status.signal, "reason": status.reason,
                         "finishedAt": status.finished_at, "message": status.message})
        return status

    @staticmethod
    def _exit_status(cdir: Path, name: str) -> Exited | None:
        try:
            doc = json.loads((cdir / f"{name}.exit.json").read_text())
        except (OSError, ValueError):
            return None
        return Exited(int(doc["exitCode"]), doc.get("signal"), doc.get("reason", "Error"), doc["finishedAt"],
                      doc.get("message", ""))

    def signal(self, pod_dir: Path, record: Record, sig: signal.Signals) -> bool:
        """Send sig to the container's whole process group; False if nothing of it runs any more."""
        if not self.running(record):
            return False
        if sig == signal.SIGKILL and not record.killed:
            record.killed = True
            self.save(pod_dir, record)
        # The shim leads the group; its pid stays the group id while any member lives, so it
        # cannot have been reused for an unrelated group.
        try:
            os.killpg(record.shim_pid, sig)
        except ProcessLookupError:
            return False
        return True

    def reap(self) -> None:
        """Collect shims this agent started that have ended (adopted ones are init's to reap)."""
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    def forget(self, record: Record) -> None:
        with contextlib.suppress(KeyError):
            proc = self._children.pop(record.shim_pid)
            proc.poll()


def describe(exited: Exited) -> str:
    if exited.signal:
        try:
            return f"killed by {signal.Signals(exited.signal).name} (exit code {exited.exit_code})"
        except ValueError:
            return f"killed by signal {exited.signal} (exit code {exited.exit_code})"
    return f"exit code {exited.exit_code}"

