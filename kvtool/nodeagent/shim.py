"""A container's shim: the parent of one container process, so its exit status outlives the agent.

Like conmon or containerd-shim: the agent starts `python -m kvtool.nodeagent.shim DIR NAME
[--netns PATH] -- ARGV` in a new session; the shim joins the pod's network namespace (bound at
PATH) if given, so the container and all it starts live there, spawns ARGV in the same process
group, writes DIR/NAME.started.json ({pid, starttime, startedAt}) and, when the process ends,
DIR/NAME.exit.json ({exitCode, signal, reason, finishedAt}). A restarted agent reads these files
instead of having to be the parent. The shim ignores SIGTERM/SIGINT/SIGHUP sent to the group
(they are meant for the container) and dies only with SIGKILL. Imports stay minimal: it runs
once per container start.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time


def rfc3339(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot): with the pid, identifies a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])


def write_json(path: str, doc: dict[str, object]) -> None:
    """Atomically: a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


CLONE_NEWNET = 0x40000000


def join_netns(path: str) -> None:
    """setns(2) into the network namespace bound at path (os.setns is Python 3.12+)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL("libc.so.6", use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot join network namespace {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _ignore(_signum: int, _frame: object) -> None:
    """A Python-level handler, not SIG_IGN: exec resets it, so the container still gets its signals."""


def main(argv: list[str]) -> int:
    netns = None
    if len(argv) >= 4 and argv[2] == "--netns":
        netns, argv = argv[3], [*argv[:2], *argv[4:]]
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m kvtool.nodeagent.shim STATUS_DIR NAME [--netns PATH] -- ARGV...", file=sys.stderr)
        return 2
    status_dir, name, command = argv[0], argv[1], argv[3:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    started_path = os.path.join(status_dir, f"{name}.started.json")
    exit_path = os.path.join(status_dir, f"{name}.exit.json")
    try:
        if netns is not None:
            join_netns(netns)
        pid = os.posix_spawn(command[0], command, dict(os.environ),
                             setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    except OSError as exc:
        write_json(exit_path, {"exitCode": 128, "signal": None, "reason": "StartError",
                               "message": f"cannot run {command[0]}: {exc.strerror}", "finishedAt": rfc3339()})
        return 1
    write_json(started_path, {"pid": pid, "starttime": proc_starttime(pid), "startedAt": rfc3339()})
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    doc: dict[str, object] = {"exitCode": code, "signal": None, "finishedAt": rfc3339()}
    if code < 0:
        doc.update(exitCode=128 - code, signal=-code)
    doc["reason"] = "Completed" if code == 0 else "Error"
    write_json(exit_path, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
