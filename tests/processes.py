"""Host processes of the embedded cluster, read from /proc: QEMUs of a domain, a pod's processes, when a
process started and when it exited. No cluster fixture here, so the benches use it too."""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from pathlib import Path


def _pids_where(file: str, match: Callable[[bytes], bool]) -> list[int]:
    """PIDs whose /proc/<pid>/<file> matches (processes that exit meanwhile are skipped)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if match((entry / file).read_bytes()):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains text (QEMU, libvirtd and launchers carry their pod's paths)."""
    return _pids_where("cmdline", lambda cmdline: text.encode() in cmdline.replace(b"\0", b" "))


def pod_processes(pod_uid: str) -> list[int]:
    """PIDs in a pod's cgroup (the kubelet names it pod<uid>): its containers' processes, QEMU included."""
    return _pids_where("cgroup", lambda cgroup: f"/pod{pod_uid}/".encode() in cgroup)


def qemu_for(domain: str) -> list[int]:
    """The QEMUs of one libvirt domain (`-name guest=<domain>,...`: the comma keeps vm-1 from matching vm-10)."""
    return [p for p in processes_mentioning(f"guest={domain},") if comm(p).startswith("qemu")]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> float:
    """When a process started, in epoch seconds (from /proc: boot time + start ticks)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    btime = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime"))
    return btime + ticks / os.sysconf("SC_CLK_TCK")


class ExitWatch:
    """Records the moment a process exits (a pidfd becomes readable then), from a thread."""

    def __init__(self, pid: int) -> None:
        self.fd = os.pidfd_open(pid)
        self.exited_at: float | None = None
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        select.select([self.fd], [], [])
        self.exited_at = time.time()
        os.close(self.fd)
